"""Walk-forward training of the three models and the ensemble, and the versioned artifacts of the final set.

Folds are (train, validation, test) periods in time order, each separated by a purge gap of the horizon, so no
training label (which reads the bar `horizon` minutes ahead) reaches into validation or test. Every member
sees the same rows; the neural members a capped, evenly spaced subset (windows overlap in all but one row, so
neighbours add little), and fewer columns (`BAR_SEQUENCE_INPUTS`, `CONTEXT_INPUTS`). Early stopping and
calibration use validation rows only; input standardisation is fitted on training windows inside each sequence
model. The final set is trained on the most recent data and promoted in the registry.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.bars import DAY_MS, MINUTE_MS, iso_utc, parse_iso_ms
from models.base import ProbabilityModel
from models.data import BarFrame, load_bars
from models.ensemble import EnsembleConfig, combine, replay_weights
from models.evaluate import log_loss, score_metrics
from models.features import FEATURE_NAMES, batch_features, feature_hash, segments
from models.lightgbm_model import LightGBMModel, LightGBMParams
from models.registry import code_version, save_version
from models.target import DEFAULT_HORIZON_MINUTES, direction_label, forward_log_return

REFERENCE_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)

# The sequence members read fewer columns than LightGBM, so that their errors are less like its errors: the
# Transformer only the bar-by-bar sequence (return, activity, order flow, range, time of day), the LSTM that
# sequence plus slow context it cannot see within its window (long return, volatility regime, trend, range).
BAR_SEQUENCE_INPUTS: tuple[str, ...] = (
    "ret_1",
    "volume_z",
    "trades_z",
    "imbalance_z",
    "hl_range_15",
    "tod_sin",
    "tod_cos",
)
CONTEXT_INPUTS: tuple[str, ...] = (
    "rv_60",
    "vol_percentile",
    "ret_240",
    "adx_14",
    "dist_high_240",
    "dist_low_240",
)

Report = Callable[[str, float, float], None]
"""progress callback: (stage description, completed, total)."""


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """What to train and on how much; `quick` trims everything for tests and demos."""

    horizon_minutes: int = DEFAULT_HORIZON_MINUTES
    days: int | None = None  # most recent days of data to use; None: all
    test_folds: int = 3
    fold_days: int = 30
    val_days: int = 21
    train_days: int | None = 365  # rolling training span; None: expanding from the first bar
    lightgbm: LightGBMParams = field(default_factory=LightGBMParams)
    neural: bool = True
    lstm_window: int = 60
    transformer_window: int = 30
    lstm_hidden_size: int = 24
    transformer_d_model: int = 32  # its feed-forward layer is twice as wide
    neural_epochs: int = 8
    neural_seconds: float = 80.0
    neural_max_train_windows: int = 120_000
    neural_max_val_windows: int = 20_000
    neural_weight_average: float = 0.995  # decay of the weight average the sequence models keep (0: off)
    neural_input_clip: float | None = 5.0  # standardised inputs of the sequence models limited to ± this
    lstm_inputs: tuple[str, ...] | None = BAR_SEQUENCE_INPUTS + CONTEXT_INPUTS  # None: every feature
    transformer_inputs: tuple[str, ...] | None = BAR_SEQUENCE_INPUTS
    retrain_final: bool = True  # False: the last fold's models are the final set (quick mode)
    seed: int = 7

    @classmethod
    def quick_config(cls, horizon_minutes: int = DEFAULT_HORIZON_MINUTES, days: int = 60) -> TrainConfig:
        return cls(
            horizon_minutes=horizon_minutes,
            days=days,
            test_folds=1,
            fold_days=max(2, days // 6),
            val_days=max(2, days // 6),
            train_days=None,
            lightgbm=LightGBMParams(max_rounds=150, early_stopping_rounds=20, min_data_in_leaf=500),
            lstm_window=20,
            transformer_window=10,
            lstm_hidden_size=16,
            transformer_d_model=16,
            neural_epochs=1,
            neural_seconds=12.0,
            neural_max_train_windows=12_000,
            neural_max_val_windows=4_000,
            # one epoch on 12,000 windows is too little for a network to build its own features from the bar
            # sequence (on 20 days before 2024-06-01 the Transformer ranked the next week backwards): every feature
            lstm_inputs=None,
            transformer_inputs=None,
            retrain_final=False,
        )


@dataclass(slots=True)
class Dataset:
    """Features, forward returns and labels of one symbol's frame, plus the bookkeeping for windows."""

    frame: BarFrame
    features: np.ndarray  # (n, F) float32; NaN rows where not ready
    forward_return: np.ndarray  # (n,)
    label: np.ndarray  # (n,) 1/0/NaN
    ready_rows: np.ndarray  # indices of ready rows, in time order
    ready_rank: np.ndarray  # (n,) position of each row among ready rows, −1 if not ready
    ready_segment: np.ndarray  # segment id of each ready row

    @property
    def open_time(self) -> np.ndarray:
        return self.frame.open_time

    def window_ok(self, rows: np.ndarray, window: int) -> np.ndarray:
        """Whether each row ends a full window of `window` ready rows inside one segment."""
        k = self.ready_rank[rows]
        first = k - window + 1
        ok = (k >= 0) & (first >= 0)
        first_c = np.clip(first, 0, None)
        return ok & (self.ready_segment[first_c] == self.ready_segment[np.clip(k, 0, None)])

    def windows(self, rows: np.ndarray, window: int) -> np.ndarray:
        """(len(rows), window, F) float32 windows of ready rows ending at each row (rows window_ok)."""
        compact = self.features[self.ready_rows]
        k = self.ready_rank[rows]
        index = k[:, None] + np.arange(-window + 1, 1)[None, :]
        return np.ascontiguousarray(compact[index])


def build_dataset(frame: BarFrame, horizon_minutes: int) -> Dataset:
    """Features (float32, as the models read them), forward returns and labels for every bar of the frame."""
    features = batch_features(frame).astype(np.float32)
    fwd = forward_log_return(frame, horizon_minutes)
    ready = ~np.isnan(features).all(axis=1)
    ready_rows = np.flatnonzero(ready)
    rank = np.full(len(frame), -1, dtype=np.int64)
    rank[ready_rows] = np.arange(ready_rows.size)
    seg_of_row = np.full(len(frame), -1, dtype=np.int64)
    for sid, seg in enumerate(segments(frame)):
        seg_of_row[seg] = sid
    return Dataset(frame, features, fwd, direction_label(fwd), ready_rows, rank, seg_of_row[ready_rows])


@dataclass(frozen=True, slots=True)
class Fold:
    """Time periods [start, end) in epoch ms; rows of a period end `purge_ms` before its end."""

    name: str
    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int] | None
    purge_ms: int

    def to_dict(self) -> dict[str, Any]:
        iso = iso_utc
        out = {
            "name": self.name,
            "train": [iso(t) for t in self.train],
            "val": [iso(t) for t in self.val],
            "purge_minutes": self.purge_ms // MINUTE_MS,
        }
        if self.test is not None:
            out["test"] = [iso(t) for t in self.test]
        return out


def make_fold(
    name: str,
    test_start: int,
    test_end: int | None,
    val_days: float,
    train_days: float | None,
    data_start: int,
    purge_ms: int,
) -> Fold:
    """Validation ends a purge gap before `test_start`; training ends a purge gap before validation."""
    val_end = test_start - (purge_ms if test_end is not None else 0)
    val_start = val_end - int(val_days * DAY_MS)
    train_end = val_start - purge_ms
    train_start = data_start if train_days is None else max(data_start, train_end - int(train_days * DAY_MS))
    return Fold(
        name,
        (train_start, train_end),
        (val_start, val_end),
        None if test_end is None else (test_start, test_end),
        purge_ms,
    )


def period_rows(ds: Dataset, rows: np.ndarray, period: tuple[int, int], purge_ms: int) -> np.ndarray:
    """Rows whose label bar also falls inside the period (open_time < end − purge)."""
    t = ds.open_time[rows]
    return rows[(t >= period[0]) & (t < period[1] - purge_ms)]


def make_members(config: TrainConfig) -> list[ProbabilityModel]:
    """Fresh, unfitted members: LightGBM always, the LSTM and the Transformer when torch is installed."""
    members: list[ProbabilityModel] = [LightGBMModel(config.lightgbm)]
    if not config.neural:
        return members
    try:
        from models.training.lstm import LSTMModel
        from models.training.torch_training import TrainingConfig
        from models.training.transformer import TransformerModel
    except ImportError:
        return members
    training = TrainingConfig(
        seed=config.seed,
        max_epochs=config.neural_epochs,
        patience=2,
        max_seconds=config.neural_seconds,
        num_threads=2,
        ema_decay=config.neural_weight_average,
        input_clip=config.neural_input_clip,
    )
    members.append(
        LSTMModel(
            window=config.lstm_window,
            hidden_size=config.lstm_hidden_size,
            training=training,
            inputs=config.lstm_inputs,
        )
    )
    members.append(
        TransformerModel(
            window=config.transformer_window,
            d_model=config.transformer_d_model,
            feedforward=2 * config.transformer_d_model,
            training=training,
            inputs=config.transformer_inputs,
        )
    )
    return members


def _spaced(rows: np.ndarray, cap: int) -> np.ndarray:
    """At most `cap` rows, evenly spaced, always including the newest (a deterministic subsample)."""
    if rows.size <= cap:
        return rows
    pick = np.round(np.linspace(0, rows.size - 1, cap)).astype(np.int64)
    return rows[pick]


@dataclass(slots=True)
class FoldResult:
    fold: Fold
    members: list[ProbabilityModel]
    validation_logloss: dict[str, float]
    metrics: dict[str, dict[str, float]]  # per member and "ensemble"; empty without a test period
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.fold.to_dict(),
            "validation_logloss": self.validation_logloss,
            "metrics": self.metrics,
            "seconds": round(self.seconds, 1),
        }


def train_fold(ds: Dataset, fold: Fold, config: TrainConfig, report: Report | None = None) -> FoldResult:
    """Fit fresh members on the fold's training rows, calibrate on validation, measure on test (if any)."""
    started = time.monotonic()
    members = make_members(config)
    window = max(m.window for m in members)
    labelled = ds.ready_rows[np.isfinite(ds.label[ds.ready_rows])]
    usable = labelled[ds.window_ok(labelled, window)]
    train_rows = period_rows(ds, usable, fold.train, fold.purge_ms)
    val_rows = period_rows(ds, usable, fold.val, 0 if fold.test is None else fold.purge_ms)
    if train_rows.size < 1000 or val_rows.size < 200:
        raise ValueError(f"fold {fold.name}: too few rows (train {train_rows.size}, validation {val_rows.size})")
    val_loss: dict[str, float] = {}
    for i, member in enumerate(members):
        if report is not None:
            report(f"{fold.name}: {member.name}", i, len(members))
        if member.window == 1:
            tr, va = train_rows, val_rows
        else:
            tr = _spaced(train_rows, config.neural_max_train_windows)
            va = _spaced(val_rows, config.neural_max_val_windows)
        member.fit(ds.windows(tr, member.window), ds.label[tr], ds.windows(va, member.window), ds.label[va])
        val_p = member.predict_proba(ds.windows(val_rows, member.window))
        val_loss[member.name] = log_loss(val_p, ds.label[val_rows])
    metrics: dict[str, dict[str, float]] = {}
    if fold.test is not None:
        test_rows = ready_test_rows(ds, fold.test, window)
        metrics = evaluate_members(ds, test_rows, members, ensemble_config(members, val_loss, config))
    if report is not None:
        report(f"{fold.name}: done", len(members), len(members))
    return FoldResult(fold, members, val_loss, metrics, time.monotonic() - started)


def ready_test_rows(ds: Dataset, period: tuple[int, int], window: int) -> np.ndarray:
    """Every row the live engine would score in the period (ready, full window), labelled or not."""
    rows = ds.ready_rows[(ds.open_time[ds.ready_rows] >= period[0]) & (ds.open_time[ds.ready_rows] < period[1])]
    return rows[ds.window_ok(rows, window)]


def ensemble_config(members: list[ProbabilityModel], val_loss: dict[str, float], config: TrainConfig) -> EnsembleConfig:
    names = tuple(m.name for m in members)
    return EnsembleConfig(names, tuple(val_loss[n] for n in names), config.horizon_minutes)


def member_probabilities(ds: Dataset, rows: np.ndarray, members: list[ProbabilityModel]) -> np.ndarray:
    """(len(rows), members) P(up), scored in chunks to bound memory."""
    out = np.empty((rows.size, len(members)))
    for j, member in enumerate(members):
        for start in range(0, rows.size, 8192):
            chunk = rows[start : start + 8192]
            out[start : start + chunk.size, j] = member.predict_proba(ds.windows(chunk, member.window))
    return out


def evaluate_members(
    ds: Dataset, rows: np.ndarray, members: list[ProbabilityModel], config: EnsembleConfig
) -> dict[str, dict[str, float]]:
    """Per member and for the online-weighted ensemble, the figures of models.evaluate.score_metrics."""
    probs = member_probabilities(ds, rows, members)
    weights = replay_weights(config, ds.open_time[rows], probs, ds.forward_return[rows])
    ensemble = np.array([p.p_up for p in combine(config, probs, weights)])
    fwd = ds.forward_return[rows]
    t = ds.open_time[rows]
    metrics = {m.name: score_metrics(probs[:, j], fwd, t) for j, m in enumerate(members)}
    metrics["ensemble"] = score_metrics(ensemble, fwd, t)
    metrics["ensemble"]["mean_weights"] = {  # type: ignore[assignment]
        m.name: float(weights[:, j].mean()) for j, m in enumerate(members)
    }
    return metrics


def training_reference(features: np.ndarray) -> dict[str, Any]:
    """Per-feature quantiles and NaN share of the training rows, the reference for drift detection."""
    ref: dict[str, Any] = {"quantiles": list(REFERENCE_QUANTILES), "features": {}}
    for j, name in enumerate(FEATURE_NAMES):
        col = features[:, j].astype(np.float64)
        finite = col[np.isfinite(col)]
        ref["features"][name] = {
            "values": [float(v) for v in np.quantile(finite, REFERENCE_QUANTILES)] if finite.size else None,
            "nan_share": float(1 - finite.size / max(col.size, 1)),
        }
    return ref


def prediction_reference(ds: Dataset, result: FoldResult, config: TrainConfig) -> dict[str, Any]:
    """Quantiles of the ensemble's P(up) on the validation rows of `result`: the reference for prediction drift."""
    members = result.members
    window = max(m.window for m in members)
    rows = ds.ready_rows[
        (ds.open_time[ds.ready_rows] >= result.fold.val[0]) & (ds.open_time[ds.ready_rows] < result.fold.val[1])
    ]
    rows = rows[ds.window_ok(rows, window)]
    probs = member_probabilities(ds, rows, members)
    ens = ensemble_config(members, result.validation_logloss, config)
    weights = replay_weights(ens, ds.open_time[rows], probs, ds.forward_return[rows])
    p_up = np.sum(probs * weights, axis=1)
    return {
        "quantiles": list(REFERENCE_QUANTILES),
        "values": [float(v) for v in np.quantile(p_up, REFERENCE_QUANTILES)] if p_up.size else None,
    }


@dataclass(slots=True)
class TrainResult:
    version: str
    path: Path
    folds: list[FoldResult]
    seconds: float


def train(
    frame: BarFrame, out_dir: Path, config: TrainConfig, report: Report | None = None, promote: bool = True
) -> TrainResult:
    """Walk-forward folds over the most recent data, then the final set, saved (and promoted) in `out_dir`."""
    started = time.monotonic()
    np.random.seed(config.seed)
    if config.days is not None and len(frame):
        frame = frame.between(int(frame.open_time[-1]) + MINUTE_MS - config.days * DAY_MS, None)
    if report is not None:
        report("features", 0, 1)
    ds = build_dataset(frame, config.horizon_minutes)
    data_start, data_end = int(frame.open_time[0]), int(frame.open_time[-1]) + MINUTE_MS
    purge_ms = config.horizon_minutes * MINUTE_MS
    folds = []
    for k in range(config.test_folds, 0, -1):
        test_start = data_end - k * config.fold_days * DAY_MS
        fold = make_fold(
            f"fold{config.test_folds - k + 1}",
            test_start,
            test_start + config.fold_days * DAY_MS,
            config.val_days,
            config.train_days,
            data_start,
            purge_ms,
        )
        folds.append(train_fold(ds, fold, config, report))
    if config.retrain_final or not folds:
        final_fold = make_fold("final", data_end, None, config.val_days, config.train_days, data_start, purge_ms)
        final = train_fold(ds, final_fold, config, report)
    else:
        final = folds[-1]
    members = final.members
    train_rows = period_rows(ds, ds.ready_rows, final.fold.train, purge_ms)
    metadata = {
        "symbol": frame.symbol,
        "horizon_minutes": config.horizon_minutes,
        "data_span": {
            "first_bar": iso_utc(data_start),
            "last_bar": iso_utc(data_end - MINUTE_MS),
            "bars": len(frame),
        },
        "final_fold": final.fold.to_dict(),
        "features": list(FEATURE_NAMES),
        "feature_hash": feature_hash(),
        "members": [m.name for m in members],
        "windows": {m.name: m.window for m in members},
        "parameters": _parameters(config),
        "ensemble": ensemble_config(members, final.validation_logloss, config).to_dict(),
        "folds": [f.to_dict() for f in folds],
        "training_reference": training_reference(ds.features[train_rows]),
        "prediction_reference": prediction_reference(ds, final, config),
        "code_version": code_version(),
        "label": "1 if the log return over the horizon > 0, 0 if < 0; zero returns and gaps are unlabelled",
    }
    version = _version_name(frame.symbol, data_end, metadata)
    path = save_version(out_dir, version, members, metadata, promote_now=promote)
    return TrainResult(version, path, folds, time.monotonic() - started)


def _parameters(config: TrainConfig) -> dict[str, Any]:
    params = asdict(config)
    params["lightgbm"] = asdict(config.lightgbm)
    return params


def _version_name(symbol: str, data_end_ms: int, metadata: dict[str, Any]) -> str:
    """Deterministic: the data's end and a hash of what was trained (no wall clock)."""
    stamp = datetime.fromtimestamp(data_end_ms / 1000, UTC).strftime("%Y%m%dT%H%M")
    digest = hashlib.sha256(
        orjson.dumps(
            {k: metadata[k] for k in ("parameters", "feature_hash", "ensemble", "code_version")},
            option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY,
        )
    ).hexdigest()[:8]
    return f"{symbol.lower()}-h{metadata['horizon_minutes']}-{stamp}-{digest}"


@contextmanager
def rich_report(enabled: bool) -> Iterator[Report | None]:
    """A rich progress bar fed by the training stages (or nothing when disabled)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("training", total=1)

        def report(stage: str, done: float, total: float) -> None:
            bar.update(task, description=stage, completed=done, total=max(total, 1))

        yield report


def train_cli(
    data_dir: Path | str,
    symbol: str,
    out_dir: Path | str,
    quick: bool = False,
    horizon: int = DEFAULT_HORIZON_MINUTES,
    progress: bool = True,
    *,
    end: str | int | None = None,
    days: int | None = None,
    promote: bool = True,
) -> TrainResult:
    """`mlrisk train`: load the symbol's bars (before `end`: ISO8601 or epoch ms), train, save and promote a
    version (`promote=False`: save it only, as a challenger)."""
    end_ms = end if isinstance(end, int) or end is None else parse_iso_ms(end)
    config = TrainConfig.quick_config(horizon, days or 60) if quick else TrainConfig(horizon_minutes=horizon)
    if days is not None and not quick:
        config = replace(config, days=days)
    start_ms = None if (end_ms is None or config.days is None) else end_ms - (config.days + 1) * DAY_MS
    frame = load_bars(data_dir, symbol, start_ms, end_ms)
    if len(frame) == 0:
        raise ValueError(f"no {symbol} bars in {data_dir} for that span")
    with rich_report(progress) as report:
        result = train(frame, Path(out_dir), config, report, promote=promote)
    if progress:
        from rich.console import Console

        Console().print(f"trained {result.version} in {result.seconds:.0f} s → {result.path}")
    return result
