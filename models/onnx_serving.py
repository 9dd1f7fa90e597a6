"""Serve the LSTM and the Transformer through onnxruntime, in a process that never imports torch.

A saved sequence model is a folder with `model.onnx` (the network: standardised windows → logit) and
`model.json` (name, window, feature count, the input standardisation and the calibrator). `OnnxSequenceModel`
applies the standardisation and the calibration in numpy around one onnxruntime call.

Scoring many symbols in one batch must give every row the same bits as scoring it alone (the live worker
batches, the backtest does not). Numpy's element-wise steps are exact per element; the networks use only
onnxruntime kernels whose per-row result does not depend on the batch size (no reduction over a layout that
changes with it), and loading refuses a model for which that does not hold on probe windows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

from models.base import ProbabilityModel
from models.features import FEATURE_NAMES
from models.neural_calibration import Calibrator, calibrator_from_dict

MODEL_FILE = "model.onnx"
META_FILE = "model.json"
FORMAT_VERSION = 1
INPUT_NAME = "windows"
OUTPUT_NAME = "logit"
_STANDARDISE_CHUNK_WINDOWS = 4096


@dataclass(frozen=True, slots=True, eq=False)
class WindowStandardiser:
    """Per-feature (x - mean) / std fitted on training windows; missing or non-finite values then become 0.

    With `clip`, standardised values are limited to ±clip: a raw return or volatility far outside anything the
    network was trained on moves its input no further than the edge of the training range.
    """

    mean: np.ndarray  # (n_features,) float32
    std: np.ndarray  # (n_features,) float32, never 0
    clip: float | None = None

    @classmethod
    def fit(cls, windows: np.ndarray, clip: float | None = None) -> WindowStandardiser:
        """Mean and standard deviation of every feature over all rows of the windows, NaN ignored."""
        if clip is not None and not clip > 0:
            raise ValueError("clip must be positive")
        _check_windows(windows)
        n_features = windows.shape[2]
        count = np.zeros(n_features)
        total = np.zeros(n_features)
        for chunk in _row_chunks(windows):
            finite = np.isfinite(chunk)
            count += finite.sum(axis=0)
            total += np.where(finite, chunk, 0.0).sum(axis=0)
        mean = np.divide(total, count, out=np.zeros(n_features), where=count > 0)
        squares = np.zeros(n_features)
        for chunk in _row_chunks(windows):
            centred = np.where(np.isfinite(chunk), chunk - mean, 0.0)
            squares += (centred * centred).sum(axis=0)
        std = np.sqrt(np.divide(squares, count, out=np.zeros(n_features), where=count > 0))
        # a constant (or never seen) feature carries no information: leave it centred, unscaled
        std = np.where(std > 1e-12, std, 1.0)
        return cls(mean.astype(np.float32), std.astype(np.float32), clip)

    def transform(self, windows: np.ndarray) -> np.ndarray:
        """Standardised float32 copy of `windows`, C-contiguous, with every non-finite value set to 0."""
        out = np.subtract(windows, self.mean, dtype=np.float32)
        out /= self.std
        out[~np.isfinite(out)] = 0.0
        if self.clip is not None:
            np.clip(out, -self.clip, self.clip, out=out)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "clip": self.clip}

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> WindowStandardiser:
        clip = params.get("clip")  # absent in models saved before clipping existed
        return cls(
            np.asarray(params["mean"], dtype=np.float32),
            np.asarray(params["std"], dtype=np.float32),
            None if clip is None else float(clip),
        )


@dataclass(frozen=True, slots=True, eq=False)
class InputSelection:
    """Which columns of a full feature row (`FEATURE_NAMES`) a network reads; `names=None` reads all of them.

    The live engine keeps one window of full feature rows per symbol and hands it to every member; a member
    that reads fewer columns picks them here, the same way in torch training and in onnxruntime serving.
    """

    names: tuple[str, ...] | None = None
    columns: np.ndarray | None = field(init=False, default=None)  # indices into FEATURE_NAMES

    def __post_init__(self) -> None:
        if self.names is None:
            return
        if not self.names:
            raise ValueError("a sequence model's inputs must name at least one feature")
        unknown = [name for name in self.names if name not in FEATURE_NAMES]
        if unknown:
            raise ValueError(f"unknown sequence-model inputs {unknown} (features are {list(FEATURE_NAMES)})")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"sequence-model inputs repeat a feature: {list(self.names)}")
        columns = np.array([FEATURE_NAMES.index(name) for name in self.names], dtype=np.intp)
        object.__setattr__(self, "columns", columns)

    def row_width(self, n_inputs: int) -> int:
        """How many features a caller's rows carry, for a network that reads `n_inputs` of them."""
        return n_inputs if self.names is None else len(FEATURE_NAMES)

    def apply(self, windows: np.ndarray) -> np.ndarray:
        """The selected columns of full-row windows (the windows themselves when all are read)."""
        columns = self.columns
        if columns is None:
            return windows
        _check_windows(windows, n_features=len(FEATURE_NAMES))
        return windows[:, :, columns]

    def to_list(self) -> list[str] | None:
        return None if self.names is None else list(self.names)

    @classmethod
    def from_list(cls, names: list[str] | None) -> InputSelection:
        return cls(None if names is None else tuple(names))


class OnnxSequenceModel:
    """A saved LSTM or Transformer served by onnxruntime: standardise → network → calibrate, without torch."""

    def __init__(self, onnx_bytes: bytes, meta: dict[str, Any]) -> None:
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported sequence-model format {meta.get('format')!r}")
        self.name: str = str(meta["name"])
        self.window: int = int(meta["window"])
        self.n_features: int = int(meta["n_features"])  # the network's input width
        self.inputs = InputSelection.from_list(meta.get("inputs"))  # absent in models that read every feature
        self.standardiser = WindowStandardiser.from_dict(meta["standardiser"])
        self.calibrator: Calibrator = calibrator_from_dict(meta["calibrator"])
        self._onnx_bytes = onnx_bytes
        self._meta = meta
        self._session = ort.InferenceSession(onnx_bytes, _session_options(), providers=["CPUExecutionProvider"])
        check_batch_invariance(self, probe_windows(16, self.window, self.row_width))

    @property
    def row_width(self) -> int:
        """How many features each row of the windows passed in must carry."""
        return self.inputs.row_width(self.n_features)

    @classmethod
    def load(cls, directory: Path | str) -> OnnxSequenceModel:
        """Load `model.onnx` and `model.json` from `directory`."""
        folder = Path(directory)
        meta = orjson.loads((folder / META_FILE).read_bytes())
        return cls((folder / MODEL_FILE).read_bytes(), meta)

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> None:
        """Not available: the serving copy is trained as `LSTMModel` or `TransformerModel` and saved."""
        raise TypeError(f"{self.name}: a served model cannot be trained; train and save the torch model")

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw network output, float32, shape (n,)."""
        _check_windows(x, self.window, self.row_width)
        x = self.inputs.apply(x)
        if x.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        (logit,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: self.standardiser.transform(x)})
        return np.asarray(logit, dtype=np.float32).reshape(-1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Calibrated P(up), float64, shape (n,), clipped to the calibrator's bounds."""
        return self.calibrator.apply(self.logits(x))

    def save(self, directory: Path) -> None:
        """Write the same two files it was loaded from."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MODEL_FILE).write_bytes(self._onnx_bytes)
        (folder / META_FILE).write_bytes(orjson.dumps(self._meta, option=orjson.OPT_INDENT_2))


def check_batch_invariance(model: ProbabilityModel, windows: np.ndarray) -> None:
    """Raise RuntimeError unless scoring `windows` in batches of 1, 7 and all at once gives identical bits."""
    single = np.concatenate([model.predict_proba(windows[i : i + 1]) for i in range(windows.shape[0])])
    for batch_size in (7, windows.shape[0]):
        batched = np.concatenate(
            [model.predict_proba(windows[i : i + batch_size]) for i in range(0, windows.shape[0], batch_size)]
        )
        if not np.array_equal(batched, single):
            raise RuntimeError(
                f"{model.name}: batch-of-{batch_size} scores differ from row-by-row scores; "
                "this onnxruntime build would make live and backtest signals disagree"
            )


def bench_sequence_model(model: ProbabilityModel, window: int, n_features: int) -> dict[str, float]:
    """Median microseconds per row of `predict_proba` at batch 1 and at batch 64 (on probe windows).

    Batching pays when `batch_64` is well under `batch_1`: 64 rows in one call cost 64 × `batch_64`.
    """
    probe = probe_windows(64, window, n_features)
    return {
        "batch_1": _median_call_us(model, probe[:1], repeats=400),
        "batch_64": _median_call_us(model, probe, repeats=60) / 64,
    }


def _median_call_us(model: ProbabilityModel, windows: np.ndarray, repeats: int) -> float:
    for _ in range(5):
        model.predict_proba(windows)
    durations = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter_ns()
        model.predict_proba(windows)
        durations[i] = time.perf_counter_ns() - start
    return float(np.median(durations) / 1e3)


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    # one thread each: the worker batches across symbols on two shared cores, where a second thread hurts
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def probe_windows(count: int, window: int, n_features: int) -> np.ndarray:
    """Fixed standard-normal windows for kernel checks and timings, where only the shape matters."""
    return np.random.default_rng(12345).standard_normal((count, window, n_features)).astype(np.float32)


def _row_chunks(windows: np.ndarray) -> Iterator[np.ndarray]:
    """Float64 (rows, n_features) blocks covering every row of every window, a bounded number at a time."""
    n_features = windows.shape[2]
    for start in range(0, windows.shape[0], _STANDARDISE_CHUNK_WINDOWS):
        yield np.asarray(windows[start : start + _STANDARDISE_CHUNK_WINDOWS], dtype=np.float64).reshape(-1, n_features)


def _check_windows(x: np.ndarray, window: int | None = None, n_features: int | None = None) -> None:
    if x.ndim != 3:
        raise ValueError(f"expected windows of shape (n, window, n_features), got {x.shape}")
    if window is not None and x.shape[1] != window:
        raise ValueError(f"expected windows of {window} rows, got {x.shape[1]}")
    if n_features is not None and x.shape[2] != n_features:
        raise ValueError(f"expected {n_features} features, got {x.shape[2]}")
