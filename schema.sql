-- mlrisk schema: the audit trail of signals, executions, risk-adjusted positions and service metrics.
-- Runs on plain PostgreSQL 14+; where the timescaledb extension is available, each table also becomes a
-- hypertable with a retention policy (days from the setting mlrisk.retention_days, default 365).
-- Safe to run twice.

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
        CHECK (event_type IN ('drift', 'decay', 'promotion', 'rejection', 'rollback', 'swap')),
    model_version  VARCHAR(100) NOT NULL,
    source         VARCHAR(50) NOT NULL,  -- the worker or command that recorded it
    details        JSONB,
    PRIMARY KEY (timestamp, event_type, model_version, source)
);
CREATE INDEX IF NOT EXISTS ml_model_events_type_time ON ml_model_events (event_type, timestamp DESC);

DO $$
DECLARE
    retention INTERVAL := make_interval(days => COALESCE(NULLIF(current_setting('mlrisk.retention_days', true), ''), '365')::INT);
    t TEXT;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        FOREACH t IN ARRAY ARRAY['actionable_trade_signals', 'ml_risk_integration_metrics',
                                 'signal_execution_logs', 'risk_adjusted_positions'] LOOP
            PERFORM create_hypertable(t, 'timestamp', if_not_exists => TRUE, migrate_data => TRUE);
            PERFORM remove_retention_policy(t, if_exists => TRUE);
            PERFORM add_retention_policy(t, retention);
        END LOOP;
    END IF;
END
$$;
