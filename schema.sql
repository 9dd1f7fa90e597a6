-- mlrisk schema: the audit trail of signals, executions, risk-adjusted positions and service metrics.
-- Runs on plain PostgreSQL 14+. Where the timescaledb extension is available and preloaded (and the setting
-- mlrisk.timescaledb is not 'off'), each table also becomes a hypertable, chunks whose data is older than
-- mlrisk.compress_after_days (default 7; 0: never) are compressed, chunks created more than
-- mlrisk.retention_days ago (default 365; 0: kept forever) are dropped, and continuous aggregates keep the
-- hourly and daily figures the API and Grafana read over long windows. Without TimescaleDB the same aggregates
-- are plain views over the raw rows, so every query runs on both. Safe to run twice.

CREATE TABLE IF NOT EXISTS actionable_trade_signals (
    timestamp             TIMESTAMPTZ NOT NULL,
    id                    BIGINT GENERATED ALWAYS AS IDENTITY,
    signal_id             UUID NOT NULL,
    symbol                VARCHAR(20) NOT NULL,
    signal_type           VARCHAR(10) NOT NULL CHECK (signal_type IN ('long', 'short', 'close', 'hold')),
    signal_strength       VARCHAR(20) NOT NULL,
    confidence_score      DECIMAL(5,4) NOT NULL,
    risk_level            VARCHAR(20) NOT NULL,
    market_regime         VARCHAR(30) NOT NULL,
    recommended_leverage  INTEGER,
    position_size_usdt    DECIMAL(15,2),
    stop_loss_price       DECIMAL(15,6),
    take_profit_price     DECIMAL(15,6),
    risk_reward_ratio     DECIMAL(8,4),
    ml_confidence         DECIMAL(5,4),
    ml_prediction         VARCHAR(20),
    model_contributions   JSONB,
    risk_score            DECIMAL(5,2),
    liquidation_risk      DECIMAL(5,2),
    portfolio_impact      DECIMAL(8,6),
    volatility_score      DECIMAL(5,4),
    liquidity_score       DECIMAL(5,4),
    market_depth_analysis JSONB,
    metadata              JSONB,
    PRIMARY KEY (timestamp, id),
    UNIQUE (signal_id, timestamp)
);
CREATE INDEX IF NOT EXISTS actionable_trade_signals_symbol_time ON actionable_trade_signals (symbol, timestamp DESC);
CREATE INDEX IF NOT EXISTS actionable_trade_signals_type ON actionable_trade_signals (signal_type);
CREATE INDEX IF NOT EXISTS actionable_trade_signals_risk_level ON actionable_trade_signals (risk_level);
CREATE INDEX IF NOT EXISTS actionable_trade_signals_confidence ON actionable_trade_signals (confidence_score);

CREATE TABLE IF NOT EXISTS ml_risk_integration_metrics (
    timestamp           TIMESTAMPTZ NOT NULL,
    id                  BIGINT GENERATED ALWAYS AS IDENTITY,
    service_name        VARCHAR(50) NOT NULL,
    signals_generated   INTEGER,
    signals_executed    INTEGER,
    average_confidence  DECIMAL(5,4),
    average_risk_score  DECIMAL(5,2),
    success_rate        DECIMAL(5,4),
    total_pnl           DECIMAL(15,2),
    processing_time_ms  INTEGER,
    error_count         INTEGER,
    metadata            JSONB,
    PRIMARY KEY (timestamp, id),
    UNIQUE (service_name, timestamp)  -- one row per service and minute: a rewrite is a no-op
);
CREATE INDEX IF NOT EXISTS ml_risk_integration_metrics_service_time
    ON ml_risk_integration_metrics (service_name, timestamp DESC);

CREATE TABLE IF NOT EXISTS signal_execution_logs (
    timestamp           TIMESTAMPTZ NOT NULL,
    id                  BIGINT GENERATED ALWAYS AS IDENTITY,
    signal_id           UUID NOT NULL,
    symbol              VARCHAR(20) NOT NULL,
    execution_status    VARCHAR(20) NOT NULL
        CHECK (execution_status IN ('executed', 'rejected', 'expired', 'closed', 'liquidated')),
    execution_price     DECIMAL(15,6),
    execution_size      DECIMAL(15,2),
    execution_leverage  INTEGER,
    actual_stop_loss    DECIMAL(15,6),
    actual_take_profit  DECIMAL(15,6),
    execution_time_ms   INTEGER,
    error_message       TEXT,
    metadata            JSONB,
    PRIMARY KEY (timestamp, id),
    UNIQUE (signal_id, execution_status, timestamp)  -- each status happens once per signal
);
CREATE INDEX IF NOT EXISTS signal_execution_logs_symbol_time ON signal_execution_logs (symbol, timestamp DESC);
CREATE INDEX IF NOT EXISTS signal_execution_logs_signal ON signal_execution_logs (signal_id);

CREATE TABLE IF NOT EXISTS risk_adjusted_positions (
    timestamp               TIMESTAMPTZ NOT NULL,
    id                      BIGINT GENERATED ALWAYS AS IDENTITY,
    signal_id               UUID NOT NULL,  -- the signal this sizing belongs to: makes the sink idempotent
    symbol                  VARCHAR(20) NOT NULL,
    signal_type             VARCHAR(10) NOT NULL,
    base_position_size      DECIMAL(15,2),
    risk_adjusted_size      DECIMAL(15,2),
    leverage_multiplier     DECIMAL(8,4),
    stop_loss_adjustment    DECIMAL(8,4),
    take_profit_adjustment  DECIMAL(8,4),
    risk_factors            JSONB,
    confidence_boost        DECIMAL(5,4),
    market_regime           VARCHAR(30),
    volatility_score        DECIMAL(5,4),
    liquidity_score         DECIMAL(5,4),
    metadata                JSONB,
    PRIMARY KEY (timestamp, id),
    UNIQUE (signal_id, timestamp)
);
CREATE INDEX IF NOT EXISTS risk_adjusted_positions_symbol_time ON risk_adjusted_positions (symbol, timestamp DESC);

-- The model lifecycle: drift and decay seen by the workers, and every retraining decision (promotion,
-- rejection) or rollback, with its figures.
CREATE TABLE IF NOT EXISTS ml_model_events (
    timestamp      TIMESTAMPTZ NOT NULL,
    event_type     VARCHAR(20) NOT NULL
        CONSTRAINT ml_model_events_event_type_check
        CHECK (event_type IN ('drift', 'decay', 'promotion', 'rejection', 'rollback', 'swap', 'load_failure')),
    model_version  VARCHAR(100) NOT NULL,
    source         VARCHAR(50) NOT NULL,  -- the worker or command that recorded it
    details        JSONB,
    PRIMARY KEY (timestamp, event_type, model_version, source)
);
CREATE INDEX IF NOT EXISTS ml_model_events_type_time ON ml_model_events (event_type, timestamp DESC);
-- a table made before 'load_failure' existed gets the wider check (safe to run twice)
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'ml_model_events_event_type_check'
                   AND pg_get_constraintdef(oid) LIKE '%load_failure%') THEN
        ALTER TABLE ml_model_events DROP CONSTRAINT IF EXISTS ml_model_events_event_type_check;
        ALTER TABLE ml_model_events ADD CONSTRAINT ml_model_events_event_type_check
            CHECK (event_type IN ('drift', 'decay', 'promotion', 'rejection', 'rollback', 'swap', 'load_failure'));
    END IF;
END $$;

-- Rows the database refused as data errors (a price beyond DECIMAL(15,6), an id that is not a UUID): the sink
-- writes the rest of their batch and keeps each refused row here as text, with the error, instead of retrying the
-- batch for ever.
CREATE TABLE IF NOT EXISTS sink_quarantine (
    quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    id             BIGINT GENERATED ALWAYS AS IDENTITY,
    table_name     VARCHAR(50) NOT NULL,
    error          TEXT NOT NULL,
    row_data       TEXT NOT NULL,  -- the row as a JSON array in the table's column order
    PRIMARY KEY (quarantined_at, id)
);

-- Chunk intervals, sized for a few hundred symbols: one signal per symbol and closed 1-minute bar is about
-- 430,000 rows a day for 300 symbols (about 0.6 GB with its JSONB and indexes), so a day per chunk keeps the chunk
-- being written and its indexes in memory, and lets compression and retention work a day at a time. Positions follow
-- the signals; executions are a few per cent of the signals (a week per chunk); the service metrics are one row per
-- worker and minute (30 days per chunk); model events are a handful a day (90 days per chunk).
DO $$
DECLARE
    retention_days INT := COALESCE(NULLIF(current_setting('mlrisk.retention_days', true), ''), '365')::INT;
    compress_days INT := COALESCE(NULLIF(current_setting('mlrisk.compress_after_days', true), ''), '7')::INT;
    wanted BOOL := COALESCE(NULLIF(current_setting('mlrisk.timescaledb', true), ''), 'on')::BOOL;
    chunk_days CONSTANT JSONB := '{"actionable_trade_signals": 1, "risk_adjusted_positions": 1,
        "signal_execution_logs": 7, "ml_risk_integration_metrics": 30, "ml_model_events": 90}';
    segment_by CONSTANT JSONB := '{"actionable_trade_signals": "symbol", "risk_adjusted_positions": "symbol",
        "signal_execution_logs": "symbol", "ml_risk_integration_metrics": "service_name"}';
    -- name, source table, bucket width, refresh every, body with %1$s for the bucket expression on "timestamp"
    aggregates CONSTANT TEXT[][] := ARRAY[
        ['signals_hourly', 'actionable_trade_signals', '1 hour', '10 minutes',
         'SELECT %1$s AS bucket, symbol, signal_type, count(*) AS signals,
                 sum(confidence_score) AS confidence_sum, avg(confidence_score) AS mean_confidence,
                 count(risk_score) AS risk_scored, sum(risk_score) AS risk_score_sum,
                 avg(risk_score) AS mean_risk_score
          FROM actionable_trade_signals GROUP BY 1, symbol, signal_type'],
        ['executions_daily', 'signal_execution_logs', '1 day', '1 hour',
         'SELECT %1$s AS bucket, symbol, execution_status, count(*) AS executions,
                 sum(CASE WHEN jsonb_typeof(metadata->''pnl_usdt'') = ''number''
                          THEN (metadata->>''pnl_usdt'')::NUMERIC END) AS pnl_usdt,
                 sum(CASE WHEN jsonb_typeof(metadata->''fees_usdt'') = ''number''
                          THEN (metadata->>''fees_usdt'')::NUMERIC
                          WHEN jsonb_typeof(metadata->''fee_usdt'') = ''number''
                          THEN (metadata->>''fee_usdt'')::NUMERIC END) AS fees_usdt
          FROM signal_execution_logs GROUP BY 1, symbol, execution_status'],
        ['service_metrics_hourly', 'ml_risk_integration_metrics', '1 hour', '10 minutes',
         'SELECT %1$s AS bucket, service_name, count(*) AS samples,
                 sum(signals_generated) AS signals_generated, sum(signals_executed) AS signals_executed,
                 avg(average_confidence) AS mean_confidence, avg(average_risk_score) AS mean_risk_score,
                 avg(processing_time_ms) AS mean_processing_time_ms, sum(error_count) AS errors,
                 min(total_pnl) AS min_total_pnl, max(total_pnl) AS max_total_pnl
          FROM ml_risk_integration_metrics GROUP BY 1, service_name']
    ];
    t TEXT;
    i INT;
    timescale BOOL;
BEGIN
    IF retention_days < 0 OR compress_days < 0 THEN
        RAISE EXCEPTION 'mlrisk.retention_days and mlrisk.compress_after_days must be >= 0';
    END IF;
    -- a database that has the extension keeps it; otherwise it is created where it is installed and the server
    -- preloaded its library (CREATE EXTENSION fails otherwise), unless the setting says no. The preloaded library
    -- shows as its integer setting in pg_settings, which every user may read (shared_preload_libraries is for
    -- superusers only, as a managed server's users are not).
    IF wanted AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND EXISTS (SELECT 1 FROM pg_settings WHERE name = 'timescaledb.max_background_workers'
                   AND vartype = 'integer') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    END IF;
    timescale := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb');
    IF NOT timescale THEN
        FOR i IN 1 .. array_length(aggregates, 1) LOOP
            IF to_regclass(aggregates[i][1]) IS NULL THEN
                EXECUTE format('CREATE VIEW %I AS ', aggregates[i][1])
                    || format(aggregates[i][5], format('date_trunc(%L, "timestamp", ''UTC'')',
                              CASE aggregates[i][3] WHEN '1 day' THEN 'day' ELSE 'hour' END));
            END IF;
        END LOOP;
        RETURN;
    END IF;

    FOR t IN SELECT jsonb_object_keys(chunk_days) LOOP
        PERFORM create_hypertable(t, by_range('timestamp', make_interval(days => (chunk_days->>t)::INT)),
                                  if_not_exists => TRUE, migrate_data => TRUE);
        PERFORM set_chunk_time_interval(t, make_interval(days => (chunk_days->>t)::INT));
    END LOOP;
    FOR t IN SELECT jsonb_object_keys(segment_by) LOOP
        IF NOT (SELECT compression_enabled FROM timescaledb_information.hypertables WHERE hypertable_name = t) THEN
            EXECUTE format('ALTER TABLE %I SET (timescaledb.compress, timescaledb.compress_segmentby = %L, '
                           'timescaledb.compress_orderby = %L)', t, segment_by->>t, '"timestamp" DESC');
        END IF;
        -- a policy is replaced only when its setting changed: a second run leaves the jobs (and their history) alone
        IF (SELECT (config->>'compress_after')::INTERVAL FROM timescaledb_information.jobs
            WHERE proc_name = 'policy_compression' AND hypertable_name = t)
           IS DISTINCT FROM (CASE WHEN compress_days > 0 THEN make_interval(days => compress_days) END) THEN
            PERFORM remove_compression_policy(t, if_exists => TRUE);
            IF compress_days > 0 THEN
                PERFORM add_compression_policy(t, compress_after => make_interval(days => compress_days));
            END IF;
        END IF;
        -- by creation time: a replay of last year's data is kept as long as live data, not dropped on arrival
        IF (SELECT (config->>'drop_created_before')::INTERVAL FROM timescaledb_information.jobs
            WHERE proc_name = 'policy_retention' AND hypertable_name = t)
           IS DISTINCT FROM (CASE WHEN retention_days > 0 THEN make_interval(days => retention_days) END) THEN
            PERFORM remove_retention_policy(t, if_exists => TRUE);
            IF retention_days > 0 THEN
                PERFORM add_retention_policy(t, drop_created_before => make_interval(days => retention_days));
            END IF;
        END IF;
    END LOOP;

    -- continuous aggregates answer with the materialised buckets plus the raw rows after them (real time)
    FOR i IN 1 .. array_length(aggregates, 1) LOOP
        IF EXISTS (SELECT 1 FROM pg_views WHERE viewname = aggregates[i][1] AND schemaname = current_schema())
           AND NOT EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates
                           WHERE view_name = aggregates[i][1]) THEN
            EXECUTE format('DROP VIEW %I', aggregates[i][1]);  -- the plain view of a database upgraded to TimescaleDB
        END IF;
        IF to_regclass(aggregates[i][1]) IS NULL THEN
            EXECUTE format('CREATE MATERIALIZED VIEW %I WITH (timescaledb.continuous, '
                           'timescaledb.materialized_only = false) AS ', aggregates[i][1])
                || format(aggregates[i][5], format('time_bucket(%L, "timestamp")', aggregates[i][3]))
                || ' WITH NO DATA';
        END IF;
        -- everything invalidated, however old (a replay writes the past), up to the bucket still filling
        PERFORM add_continuous_aggregate_policy(aggregates[i][1], start_offset => NULL,
                                                end_offset => aggregates[i][3]::INTERVAL,
                                                schedule_interval => aggregates[i][4]::INTERVAL,
                                                if_not_exists => TRUE);
    END LOOP;
END
$$;
