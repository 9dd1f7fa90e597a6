"""Walk-forward table for 2024: per quarter, every model trained only on the year before it, measured on it.

Usage: .venv/bin/python bench/walk_forward_report.py [--data DIR] [--horizon 15] [--json out.json]
[--no-neural] Prints IC (Spearman), daily IC mean, accuracy, hit rate on non-zero returns, log-loss and ECE
per model and for the online-weighted ensemble. Nothing is tuned on these folds.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from models.bars import DAY_MS, MINUTE_MS, parse_iso_ms
from models.data import load_bars
from models.training.train import TrainConfig, build_dataset, make_fold, train_fold

REPO = Path(__file__).resolve().parents[1]
QUARTERS = [
    ("2024Q1", "2024-01-01", "2024-04-01"),
    ("2024Q2", "2024-04-01", "2024-07-01"),
    ("2024Q3", "2024-07-01", "2024-10-01"),
    ("2024Q4", "2024-10-01", "2025-01-01"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "binance-spot-klines-1m"))
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-neural", action="store_true")
    args = parser.parse_args()
    config = TrainConfig(horizon_minutes=args.horizon)
    if args.no_neural:
        config = replace(config, neural=False)
    console = Console(width=140)
    frame = load_bars(args.data, "BTCUSDT", None, parse_iso_ms("2025-01-01") + DAY_MS)
    ds = build_dataset(frame, args.horizon)
    data_start = int(frame.open_time[0])
    purge = args.horizon * MINUTE_MS
    results = []
    for name, start, end in QUARTERS:
        fold = make_fold(
            name, parse_iso_ms(start), parse_iso_ms(end), config.val_days, config.train_days, data_start, purge
        )
        began = time.monotonic()
        result = train_fold(ds, fold, config)
        console.print(f"{name}: trained on {fold.to_dict()['train']} in {time.monotonic() - began:.0f} s")
        results.append(result)
    table = Table(title=f"Walk-forward 2024, horizon {args.horizon} min (out of sample)")
    for column in ("fold", "model", "IC", "daily IC", "acc", "hit (≠0)", "majority", "log-loss", "ECE"):
        table.add_column(column, justify="right")
    for result in results:
        for model, m in result.metrics.items():
            table.add_row(
                result.fold.name,
                model,
                f"{m['ic']:.4f}",
                f"{m['ic_daily_mean']:.4f}",
                f"{m['accuracy']:.4f}",
                f"{m['hit_rate']:.4f}",
                f"{m['majority_rate']:.4f}",
                f"{m['log_loss']:.5f}",
                f"{m['ece']:.4f}",
            )
    models = list(results[0].metrics)
    for model in models:
        mean_ic = sum(r.metrics[model]["ic"] for r in results) / len(results)
        table.add_row("mean", model, f"{mean_ic:.4f}", "", "", "", "", "", "")
    console.print(table)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps([r.to_dict() for r in results], option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
