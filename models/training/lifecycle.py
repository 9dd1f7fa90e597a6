"""Champion and challenger: retrain on the most recent bars, compare out of sample, promote only the better.

A challenger is trained (walk-forward, as `mlrisk train`) on bars that end a purge gap before the holdout: the
most recent `holdout_days` of data. Champion (the version CURRENT names) and challenger are then loaded the way
the worker loads them and scored on the same holdout rows through the same ensemble. The challenger is promoted
only when its ensemble log-loss beats the champion's by `margin` and its IC is positive; every decision, with
its figures, is appended to `<model_dir>/decisions.jsonl` (and recorded in the database by the caller).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.bars import DAY_MS, MINUTE_MS
from models.data import load_bars
from models.features import WARMUP_BARS
from models.registry import ModelBundle, current_version, load_bundle, promote
from models.training.train import build_dataset, evaluate_members, ready_test_rows, train_cli

DECISIONS_FILE = "decisions.jsonl"
DEFAULT_MARGIN = 0.0003  # nats of log-loss per prediction: about one standard error on a week of minutes


@dataclass(frozen=True, slots=True)
class Decision:
    """What the comparison found and what was done."""

    promoted: bool
    reason: str
    challenger: str
    champion: str | None
    holdout: tuple[int, int]
    margin: float
    figures: dict[str, Any] = field(default_factory=dict)  # "challenger"/"champion" → per model and ensemble

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(challenger: dict[str, Any], champion: dict[str, Any] | None, margin: float) -> tuple[bool, str]:
    """Promote when the challenger's ensemble has a positive IC and beats the champion's log-loss by `margin`."""
    ours = challenger["ensemble"]
    if not np.isfinite(ours["ic"]) or ours["ic"] <= 0:
        return False, f"challenger IC {ours['ic']:.4f} is not positive"
    if champion is None:
        return True, "no champion"
    theirs = champion["ensemble"]
    gain = theirs["log_loss"] - ours["log_loss"]
    if gain < margin:
        return False, f"log-loss gain {gain:.5f} below the margin {margin:.5f}"
    return True, f"log-loss gain {gain:.5f} ≥ margin {margin:.5f}; IC {ours['ic']:.4f} vs {theirs['ic']:.4f}"


def holdout_figures(bundles: list[ModelBundle], frame: Any, holdout: tuple[int, int]) -> list[dict[str, Any]]:
    """Per bundle, the figures of each member and of the online-weighted ensemble on the same holdout rows."""
    horizons = {b.horizon_minutes for b in bundles}
    if len(horizons) != 1:
        raise ValueError(f"versions predict different horizons {sorted(horizons)}: not comparable")
    ds = build_dataset(frame, horizons.pop())
    rows = ready_test_rows(ds, holdout, max(b.window for b in bundles))
    rows = rows[np.isfinite(ds.forward_return[rows])]
    if rows.size < 500:
        raise ValueError(f"only {rows.size} scorable rows in the holdout: too few to compare versions")
    return [evaluate_members(ds, rows, list(b.members), b.ensemble) for b in bundles]


def retrain(
    data_dir: Path | str,
    symbol: str,
    model_dir: Path | str,
    *,
    end_ms: int | None = None,
    holdout_days: float = 7.0,
    quick: bool = False,
    days: int | None = None,
    margin: float = DEFAULT_MARGIN,
    progress: bool = False,
) -> Decision:
    """Train a challenger on the bars before the holdout, compare it with the champion, promote if better."""
    model_dir = Path(model_dir)
    if end_ms is None:
        latest = load_bars(data_dir, symbol)
        if len(latest) == 0:
            raise ValueError(f"no {symbol} bars in {data_dir}")
        end_ms = int(latest.open_time[-1]) + MINUTE_MS
    holdout = (end_ms - int(holdout_days * DAY_MS), end_ms)
    champion_version = _current_or_none(model_dir)
    champion = load_bundle(model_dir, champion_version) if champion_version else None
    horizon = champion.horizon_minutes if champion else 15
    cut = holdout[0] - horizon * MINUTE_MS  # purge: no challenger label reads into the holdout
    trained = train_cli(
        data_dir, symbol, model_dir, quick=quick, horizon=horizon, progress=progress, end=cut, days=days, promote=False
    )
    challenger = load_bundle(model_dir, trained.version)
    warmup_ms = (WARMUP_BARS + challenger.window + 60) * MINUTE_MS
    frame = load_bars(data_dir, symbol, holdout[0] - warmup_ms, holdout[1] + horizon * MINUTE_MS)
    bundles = [challenger] + ([champion] if champion else [])
    figures = holdout_figures(bundles, frame, holdout)
    promoted, reason = decide(figures[0], figures[1] if champion else None, margin)
    if champion is not None and champion.version == challenger.version:
        promoted, reason = False, "the challenger is the champion (same data and code)"
    decision = Decision(
        promoted=promoted,
        reason=reason,
        challenger=challenger.version,
        champion=champion_version,
        holdout=holdout,
        margin=margin,
        figures={"challenger": figures[0], **({"champion": figures[1]} if champion else {})},
    )
    if promoted:
        promote(model_dir, challenger.version)
    record_decision(model_dir, decision.to_dict())
    return decision


def record_decision(model_dir: Path, entry: dict[str, Any]) -> None:
    with (Path(model_dir) / DECISIONS_FILE).open("ab") as log:
        log.write(orjson.dumps(entry, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def _current_or_none(model_dir: Path) -> str | None:
    try:
        return current_version(model_dir)
    except FileNotFoundError:
        return None
