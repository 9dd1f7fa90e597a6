"""The `mlrisk` command: worker, replay, feed, db, train, retrain, rollback, backtest, state, bench."""

from __future__ import annotations

import argparse
import asyncio
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.bars import iso_utc, parse_iso_ms
from streams.config import REPO_ROOT, Settings, SettingsError

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as error:
        print(f"mlrisk: configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    from aiokafka.errors import KafkaError

    from streams.app import build_app
    from streams.kafka_security import connection_failure
    from streams.shutdown import EXIT_CONFIGURATION, EXIT_CRASH, EXIT_OK, BoundedStopWorker
    from streams.topics import TopicCreationError, ensure_topics

    try:
        asyncio.run(ensure_topics(settings))
        runtime = build_app(settings)
    except SettingsError as error:
        print(f"mlrisk: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIGURATION
    except TopicCreationError as error:
        print(
            f"mlrisk: {error} (check MLRISK_KAFKA_REPLICATION_FACTOR, MLRISK_PARTITIONS and the user's ACLs, "
            "or provision the topics and set MLRISK_CREATE_TOPICS=false)",
            file=sys.stderr,
        )
        return EXIT_CONFIGURATION
    except KafkaError as error:
        print(f"mlrisk: {asyncio.run(connection_failure(settings, error))}", file=sys.stderr)
        return EXIT_CRASH
    worker = BoundedStopWorker(
        runtime.app, stop_timeout_s=settings.stop_timeout_s, loglevel=settings.log_level, quiet=args.quiet
    )
    worker.execute_from_commandline()
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    settings = _settings()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streams.kafka_security import client_options
    from streams.ops.replay import collect, merged, publish
    from streams.topics import ensure_topics

    symbols = [s.strip() for s in args.symbols.split(",")] if args.symbols else None
    streams = collect(Path(args.data), symbols, parse_iso_ms(args.start), parse_iso_ms(args.end), args.source)
    messages = list(merged(streams))
    if not messages:
        print("mlrisk replay: no data matches the folder, symbols and time range", file=sys.stderr)
        return 1
    asyncio.run(ensure_topics(settings))
    with Progress(
        TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=args.quiet
    ) as bar:
        task = bar.add_task("replay", total=len(messages))
        sent = asyncio.run(
            publish(
                messages,
                client_options(settings),
                settings.market_data_topic,
                args.speed or None,
                lambda n: bar.update(task, completed=n),
            )
        )
    first, last = iso_utc(messages[0].time_ms), iso_utc(messages[-1].time_ms)
    print(
        f"replayed {sent} messages of {len({m.symbol for m in messages})} symbol(s), {first} .. {last}, "
        f"to {settings.market_data_topic}"
    )
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    settings = _settings()
    from streams.sink import pgserver
    from streams.sink.db import database_url, init_schema

    if args.action == "start":
        print(pgserver.start(settings.home))
    elif args.action == "stop":
        pgserver.stop(settings.home)
    elif args.action == "url":
        print(database_url(settings, start_embedded=False))
    elif args.action == "init":
        url = database_url(settings)
        version = init_schema(url, args.retention_days, args.compress_after_days, timescaledb=not args.plain)
        compression = (
            f"compression after {args.compress_after_days} days" if args.compress_after_days else "no compression"
        )
        engine = (
            f"TimescaleDB {version}: hypertables, {compression}, continuous aggregates"
            if version
            else "plain PostgreSQL (no TimescaleDB)"
        )
        print(
            f"schema applied to {url.split('@')[-1].split('?')[0]} on {engine} (TimescaleDB hypertables: "
            f"{'yes' if version else 'no'})"
        )
        if version is None and not args.plain and not settings.database_url and pgserver.timescaledb_installed():
            print(
                "TimescaleDB is installed, but the running embedded server was started without it: "
                "`mlrisk db stop`, then `mlrisk db init`"
            )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from models.training.train import train_cli

    train_cli(Path(args.data), args.symbol.upper(), Path(args.out), quick=args.quick, horizon=args.horizon)
    return 0


def _lifecycle_settings(args: argparse.Namespace) -> Settings:
    from dataclasses import replace

    settings = _settings()
    return replace(settings, model_dir=Path(args.models)) if args.models else settings


def cmd_retrain(args: argparse.Namespace) -> int:
    from models.training.lifecycle import DEFAULT_MARGIN
    from streams.ops.retrainer import retrain_once, watch

    settings = _lifecycle_settings(args)
    margin = DEFAULT_MARGIN if args.margin is None else args.margin
    if args.watch:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        watch(
            settings,
            Path(args.data),
            args.symbol.upper(),
            quick=args.quick,
            holdout_days=args.holdout_days,
            margin=margin,
            schedule_s=args.schedule_hours * 3600,
            poll_s=args.poll_seconds,
            end_ms=parse_iso_ms(args.end),
            max_runs=1 if args.once else None,
        )
        return 0
    decision = retrain_once(
        settings,
        Path(args.data),
        args.symbol.upper(),
        quick=args.quick,
        end_ms=parse_iso_ms(args.end),
        holdout_days=args.holdout_days,
        margin=margin,
        trigger="command",
        progress=not args.quiet,
    )
    figures = decision.figures
    for role in ("champion", "challenger"):
        if role in figures:
            e = figures[role]["ensemble"]
            name = decision.champion if role == "champion" else decision.challenger
            print(
                f"{role:10} {name}: holdout log-loss {e['log_loss']:.5f}, IC {e['ic']:+.4f}, "
                f"hit rate {e['hit_rate']:.4f}"
            )
    print(f"{'promoted' if decision.promoted else 'not promoted'}: {decision.reason}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from streams.ops.retrainer import rollback_once

    try:
        current, previous = rollback_once(_lifecycle_settings(args))
    except (ValueError, FileNotFoundError) as error:
        print(f"mlrisk rollback: {error}", file=sys.stderr)
        return 1
    print(f"rolled back from {current} to {previous}; workers switch at their next check")
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from models.backtest import backtest_cli

    try:
        risk_config = Settings.from_env().risk  # the same costs and limits as the worker
    except SettingsError as error:
        print(f"mlrisk: configuration error: {error}", file=sys.stderr)
        return 2
    report = backtest_cli(
        Path(args.data),
        args.symbol.upper(),
        Path(args.models),
        Path(args.out),
        signals_out=Path(args.signals_out) if args.signals_out else None,
        start=args.start,
        end=args.end,
        risk_config=risk_config,
    )
    print(
        f"{report['symbol']}: {report['bars']} bars, signals {report['signals']}, trades {report['trades']}, "
        f"net return {report['net_return']:+.4%} (buy and hold "
        f"{report['baselines']['buy_and_hold']['net_return']:+.4%}), max drawdown {report['max_drawdown']:.2%}, "
        f"liquidations {report['liquidations']}, invariant violations {report['invariant_violations']} "
        f"→ {args.out}"
    )
    return 0


def cmd_feed(args: argparse.Namespace) -> int:
    import logging

    from streams.feed.service import check_request, run_feed
    from streams.feed.venues import VENUES

    settings = _settings()
    venue = VENUES[args.venue]
    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    kinds = tuple(k.strip() for k in args.streams.split(",") if k.strip())
    try:
        check_request(venue, symbols, kinds)
    except ValueError as error:
        print(f"mlrisk feed: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run_feed(settings, venue, symbols, kinds))
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    import orjson

    from streams.config import parse_symbol
    from streams.ops import state_admin

    settings = _settings()
    symbol = parse_symbol(args.symbol)
    if symbol is None:
        print(f"mlrisk state: not a symbol: {args.symbol!r}", file=sys.stderr)
        return 2
    records = asyncio.run(state_admin.find(settings, symbol))
    print(orjson.dumps({"symbol": symbol, "state": state_admin.describe(records)}, option=orjson.OPT_INDENT_2).decode())
    if args.action == "reset" and records:
        asyncio.run(state_admin.reset(settings, records))
        print(
            f"mlrisk state: {symbol} reset in {len(records)} topic(s); the next worker to own it starts it afresh",
            file=sys.stderr,
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.run import main as bench_main

    return bench_main(args)


def _days(most: int) -> Callable[[str], int]:
    """An argparse type: a whole number of days in 0..most."""

    def parse(raw: str) -> int:
        if not raw.isdigit() or int(raw) > most:
            raise argparse.ArgumentTypeError(f"must be a whole number of days in 0..{most}, got {raw!r}")
        return int(raw)

    return parse


def _worker_command(sub: Any) -> None:
    worker = sub.add_parser("worker", help="run the Faust worker (ingest, signals, sink, API, metrics)")
    worker.add_argument("--quiet", action="store_true", help="no start-up banner")
    worker.set_defaults(func=cmd_worker)


def _replay_command(sub: Any) -> None:
    replay = sub.add_parser("replay", help="publish real data to market-data in exchange-time order")
    replay.add_argument("--data", default=str(DEFAULT_DATA), help="folder of bar files and/or websocket captures")
    replay.add_argument("--symbols", help="comma-separated symbols (default: all found)")
    replay.add_argument("--start", help="ISO date/time, inclusive (UTC)")
    replay.add_argument("--end", help="ISO date/time, exclusive (UTC)")
    replay.add_argument("--speed", type=float, default=0.0, help="x real time; 0 = as fast as possible")
    replay.add_argument("--source", choices=("auto", "bars", "captures"), default="auto")
    replay.add_argument("--quiet", action="store_true")
    replay.set_defaults(func=cmd_replay)


def _db_command(sub: Any) -> None:
    db = sub.add_parser("db", help="the database: init applies schema.sql; start/stop the embedded server")
    db.add_argument("action", choices=("init", "start", "stop", "url"))
    db.add_argument(
        "--retention-days",
        type=_days(36_500),
        default=365,
        help="drop chunks created longer ago (TimescaleDB; 0: keep forever)",
    )
    db.add_argument(
        "--compress-after-days",
        type=_days(3_650),
        default=7,
        help="compress chunks whose data is older (TimescaleDB; 0: never)",
    )
    db.add_argument(
        "--plain",
        action="store_true",
        help="keep a database without TimescaleDB plain even where the extension is installed",
    )
    db.set_defaults(func=cmd_db)


def _train_command(sub: Any) -> None:
    train = sub.add_parser("train", help="walk-forward training of the three models")
    train.add_argument("--data", default=str(DEFAULT_DATA))
    train.add_argument("--symbol", default="BTCUSDT")
    train.add_argument("--out", default=str(REPO_ROOT / "artifacts" / "models"))
    train.add_argument("--quick", action="store_true", help="small and fast: for tests and the demo")
    train.add_argument("--horizon", type=int, default=15, help="minutes ahead")
    train.set_defaults(func=cmd_train)


def _retrain_command(sub: Any) -> None:
    retrain = sub.add_parser("retrain", help="train a challenger on recent bars; promote it only if it is better")
    retrain.add_argument("--data", default=str(DEFAULT_DATA))
    retrain.add_argument("--symbol", default="BTCUSDT")
    retrain.add_argument("--models", help="registry folder (default: MLRISK_MODEL_DIR)")
    retrain.add_argument("--quick", action="store_true", help="small and fast: for tests and the demo")
    retrain.add_argument("--end", help="ISO date/time: use bars before it (default: all)")
    retrain.add_argument("--holdout-days", type=float, default=7.0, help="most recent days, out of sample for both")
    retrain.add_argument(
        "--margin",
        type=float,
        default=None,
        help="log-loss gain (nats per prediction) the challenger needs over the champion (default 0.0003)",
    )
    retrain.add_argument(
        "--watch", action="store_true", help="run as a service: retrain on drift/decay events or on the schedule"
    )
    retrain.add_argument("--once", action="store_true", help="with --watch: stop after the first retraining")
    retrain.add_argument("--schedule-hours", type=float, default=24.0)
    retrain.add_argument("--poll-seconds", type=float, default=60.0)
    retrain.add_argument("--quiet", action="store_true")
    retrain.set_defaults(func=cmd_retrain)


def _rollback_command(sub: Any) -> None:
    rollback = sub.add_parser("rollback", help="point the registry back at the previously promoted version")
    rollback.add_argument("--models", help="registry folder (default: MLRISK_MODEL_DIR)")
    rollback.set_defaults(func=cmd_rollback)


def _backtest_command(sub: Any) -> None:
    backtest = sub.add_parser("backtest", help="bar-by-bar backtest through the live code path")
    backtest.add_argument("--data", default=str(DEFAULT_DATA))
    backtest.add_argument("--symbol", default="BTCUSDT")
    backtest.add_argument("--models", default=str(REPO_ROOT / "artifacts" / "models"))
    backtest.add_argument("--out", default="report.json")
    backtest.add_argument("--signals-out")
    backtest.add_argument("--start")
    backtest.add_argument("--end")
    backtest.set_defaults(func=cmd_backtest)


def _feed_command(sub: Any) -> None:
    feed = sub.add_parser("feed", help="live Binance market data to market-data: connected, in sequence, complete")
    feed.add_argument("--venue", choices=("binance-usdm", "binance-spot"), default="binance-usdm")
    feed.add_argument("--symbols", required=True, help="comma-separated, e.g. BTCUSDT,ETHUSDT")
    feed.add_argument(
        "--streams",
        default="trade,bookTicker,depth",
        help="comma-separated: trade, aggTrade, bookTicker, depth, markPrice (USD-M), kline_1m",
    )
    feed.set_defaults(func=cmd_feed)


def _state_command(sub: Any) -> None:
    state = sub.add_parser("state", help="show or reset one symbol's stream state (stop the workers to reset)")
    state.add_argument("action", choices=("show", "reset"))
    state.add_argument("symbol", help="e.g. BTCUSDT or BTC/USDT")
    state.set_defaults(func=cmd_state)


def _bench_command(sub: Any) -> None:
    bench = sub.add_parser("bench", help="throughput, latency, sink and inference benchmarks")
    bench.add_argument("--out", default="bench.json")
    bench.add_argument("--events", type=int, default=100_000)
    bench.add_argument(
        "--only",
        default="",
        help="comma-separated parts: throughput, latency, sink, inference, burst, steady, scale (default: all)",
    )
    bench.set_defaults(func=cmd_bench)


COMMANDS = (
    _worker_command,
    _replay_command,
    _db_command,
    _train_command,
    _retrain_command,
    _rollback_command,
    _backtest_command,
    _feed_command,
    _state_command,
    _bench_command,
)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mlrisk", description="Real-time trading signals for crypto perpetuals.")
    sub = top.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
