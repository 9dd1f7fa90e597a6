"""The one training loop of the neural sequence models, and the model class the LSTM and Transformer share.

Training is seeded, CPU-sized and bounded: binary cross-entropy on the up/down label, AdamW on mini-batches,
early stopping on validation log-loss with the best weights restored, a cap on epochs and on wall time.
With `ema_decay` set, an exponential moving average of the weights is what is validated, kept and served:
one network, as cheap to serve as the raw one, with much less of the mini-batch noise that otherwise makes a
network's out-of-sample IC swing with its seed.
Inputs are standardised with statistics of the training windows only; the calibrator is fitted on validation
windows only. `save` writes the ONNX export that `models.onnx_serving.OnnxSequenceModel` serves without torch.
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self, TypedDict

import numpy as np
import orjson
import torch
from torch import nn

from models.neural_calibration import DEFAULT_CLIP, Calibrator, calibrator_from_dict, fit_calibrator
from models.onnx_serving import (
    FORMAT_VERSION,
    INPUT_NAME,
    META_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    InputSelection,
    OnnxSequenceModel,
    WindowStandardiser,
)

WEIGHTS_FILE = "weights.pt"
ONNX_OPSET = 17
_EVAL_CHUNK_WINDOWS = 4096

EpochCallback = Callable[[int, float, float], None]
"""Called after every epoch with (epoch, mean training loss, validation log-loss)."""


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """How to train: the same config and data give the same weights (on the same thread count)."""

    seed: int = 7
    max_epochs: int = 20
    patience: int = 3  # epochs without a validation improvement before stopping
    min_improvement: float = 1e-5  # a smaller drop in validation log-loss does not count as one
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    grad_clip_norm: float = 1.0
    max_seconds: float = 240.0  # wall-time cap; checked after every mini-batch
    train_stride: int = 1  # keep every k-th training window: neighbours overlap in all but one row
    num_threads: int = 2
    ema_decay: float = 0.0  # > 0: validate, keep and serve an exponential moving average of the weights
    input_clip: float | None = None  # limit standardised inputs to ±input_clip (None: no limit)

    def __post_init__(self) -> None:
        positive = ("max_epochs", "batch_size", "train_stride", "num_threads", "learning_rate", "max_seconds")
        for field_name in positive:
            if getattr(self, field_name) <= 0:
                raise ValueError(f"TrainingConfig.{field_name} must be positive")
        if self.patience < 1:
            raise ValueError("TrainingConfig.patience must be at least 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("TrainingConfig.ema_decay must be in [0, 1)")
        if self.input_clip is not None and not self.input_clip > 0:
            raise ValueError("TrainingConfig.input_clip must be positive")


@dataclass(frozen=True, slots=True)
class TrainingReport:
    """What one training run did; `best_val_loss` is the validation log-loss of the restored weights."""

    epochs_run: int
    best_epoch: int
    best_val_loss: float
    train_losses: tuple[float, ...]
    val_losses: tuple[float, ...]
    train_windows: int
    seconds: float
    stopped_by: str  # "patience", "max_epochs" or "max_seconds"

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> TrainingReport:
        """Restore a report written with `dataclasses.asdict` (JSON turns its tuples into lists)."""
        return cls(
            epochs_run=int(fields["epochs_run"]),
            best_epoch=int(fields["best_epoch"]),
            best_val_loss=float(fields["best_val_loss"]),
            train_losses=tuple(float(v) for v in fields["train_losses"]),
            val_losses=tuple(float(v) for v in fields["val_losses"]),
            train_windows=int(fields["train_windows"]),
            seconds=float(fields["seconds"]),
            stopped_by=str(fields["stopped_by"]),
        )


def train_binary_classifier(
    network: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    standardiser: WindowStandardiser,
    config: TrainingConfig,
    on_epoch: EpochCallback | None = None,
) -> TrainingReport:
    """Train `network` (windows → one logit each) in place; leave it in eval mode with its best weights.

    Windows are standardised a mini-batch at a time, so a large `x_train` is never copied whole.
    """
    _check_labels(y_train, x_train.shape[0])
    _check_labels(y_val, x_val.shape[0])
    rng = np.random.default_rng(config.seed)
    train_index = np.arange(0, x_train.shape[0], config.train_stride)
    targets = np.asarray(y_train, dtype=np.float32)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_function = nn.BCEWithLogitsLoss()
    started = time.monotonic()
    averaged = WeightAverage(network, config.ema_decay) if config.ema_decay > 0 else None
    scored = averaged.network if averaged is not None else network
    best_state = copy.deepcopy(scored.state_dict())
    best_loss, best_epoch, epochs_without_improvement = float("inf"), 0, 0
    train_losses: list[float] = []
    val_losses: list[float] = []
    stopped_by = "max_epochs"
    with torch_threads(config.num_threads):
        for epoch in range(1, config.max_epochs + 1):
            network.train()
            loss_sum, seen, out_of_time = 0.0, 0, False
            shuffled = train_index[rng.permutation(train_index.shape[0])]
            for start in range(0, shuffled.shape[0], config.batch_size):
                rows = shuffled[start : start + config.batch_size]
                inputs = torch.from_numpy(standardiser.transform(x_train[rows]))
                loss = loss_function(network(inputs), torch.from_numpy(targets[rows]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip_norm)
                optimizer.step()
                if averaged is not None:
                    averaged.update(network)
                loss_sum += float(loss.item()) * rows.shape[0]
                seen += rows.shape[0]
                if time.monotonic() - started > config.max_seconds:
                    out_of_time = True
                    break
            val_loss = log_loss(network_logits(scored, x_val, standardiser), y_val)
            train_losses.append(loss_sum / max(seen, 1))
            val_losses.append(val_loss)
            if on_epoch is not None:
                on_epoch(epoch, train_losses[-1], val_loss)
            if val_loss < best_loss - config.min_improvement:
                best_loss, best_epoch, epochs_without_improvement = val_loss, epoch, 0
                best_state = copy.deepcopy(scored.state_dict())
            else:
                epochs_without_improvement += 1
            if out_of_time:
                stopped_by = "max_seconds"
                break
            if epochs_without_improvement >= config.patience:
                stopped_by = "patience"
                break
    network.load_state_dict(best_state)
    network.eval()
    return TrainingReport(
        epochs_run=len(val_losses),
        best_epoch=best_epoch,
        best_val_loss=best_loss,
        train_losses=tuple(train_losses),
        val_losses=tuple(val_losses),
        train_windows=int(train_index.shape[0]),
        seconds=time.monotonic() - started,
        stopped_by=stopped_by,
    )


class WeightAverage:
    """An exponential moving average of a network's weights (Polyak averaging), kept in a copy of it.

    The first steps average with a smaller decay, (1 + step) / (10 + step), so the copy is not tied to the
    random initial weights.
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        self.network = copy.deepcopy(network)
        self.network.eval()
        self.decay = decay
        self.steps = 0

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        self.steps += 1
        weight = 1.0 - min(self.decay, (1 + self.steps) / (10 + self.steps))
        for parameter, followed in zip(self.network.parameters(), source.parameters(), strict=True):
            parameter.lerp_(followed, weight)
        for buffer, copied in zip(self.network.buffers(), source.buffers(), strict=True):
            buffer.copy_(copied)


def network_logits(network: nn.Module, windows: np.ndarray, standardiser: WindowStandardiser) -> np.ndarray:
    """The network's logits for raw windows, float32, shape (n,), computed in chunks without gradients."""
    network.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, windows.shape[0], _EVAL_CHUNK_WINDOWS):
            inputs = torch.from_numpy(standardiser.transform(windows[start : start + _EVAL_CHUNK_WINDOWS]))
            chunks.append(network(inputs).numpy().astype(np.float32, copy=False))
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.float32)


def log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(logits) against 0/1 labels, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    # log(1 + exp(z)) - y z, written to stay finite for large |z|
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run a block with torch limited to `count` threads, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class SequenceOptions(TypedDict, total=False):
    """What every sequence model takes besides its window and architecture (see `TorchSequenceModel`)."""

    calibration: str
    clip: tuple[float, float]
    training: TrainingConfig | None
    inputs: tuple[str, ...] | None


class TorchSequenceModel(ABC):
    """A torch network over windows of feature rows, trained by `train_binary_classifier` and calibrated.

    Subclasses say how to build the network (`build_network`) and which constructor arguments describe it
    (`architecture`); everything else (fit, predict, ONNX export, save, load) is shared.
    """

    name: str

    def __init__(
        self,
        window: int,
        calibration: str = "platt",
        clip: tuple[float, float] = DEFAULT_CLIP,
        training: TrainingConfig | None = None,
        inputs: tuple[str, ...] | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        if calibration not in ("platt", "isotonic"):
            raise ValueError(f"unknown calibration method {calibration!r} (expected 'platt' or 'isotonic')")
        self.window = window
        self.calibration = calibration
        self.clip = (float(clip[0]), float(clip[1]))
        self.training = training if training is not None else TrainingConfig()
        self.inputs = InputSelection(None if inputs is None else tuple(inputs))
        self.n_features: int | None = None  # the network's input width, once fitted
        self.network: nn.Module | None = None
        self.standardiser: WindowStandardiser | None = None
        self.calibrator: Calibrator | None = None
        self.report: TrainingReport | None = None

    @abstractmethod
    def architecture(self) -> dict[str, int]:
        """The constructor arguments, besides window and training options, that fix the network's shape."""

    @abstractmethod
    def build_network(self, n_features: int) -> nn.Module:
        """A freshly initialised network: float32 windows (batch, window, n_features) → logits (batch,)."""

    def fit(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        """Standardise on training windows, train early-stopping on validation, calibrate on validation.

        Windows carry full feature rows when the model names its `inputs`; it reads only those columns.
        """
        self._check_input(x_train, expect_features=False)
        self._check_input(x_val, expect_features=False)
        x_train, x_val = self.inputs.apply(x_train), self.inputs.apply(x_val)
        if x_train.shape[2] != x_val.shape[2]:
            raise ValueError("training and validation windows have different feature counts")
        n_features = int(x_train.shape[2])
        standardiser = WindowStandardiser.fit(x_train[:: self.training.train_stride], self.training.input_clip)
        with torch_threads(self.training.num_threads):
            torch.manual_seed(self.training.seed)
            network = self.build_network(n_features)
        report = train_binary_classifier(network, x_train, y_train, x_val, y_val, standardiser, self.training, on_epoch)
        self.n_features, self.network = n_features, network
        self.standardiser, self.report = standardiser, report
        with torch_threads(self.training.num_threads):
            val_logits = network_logits(network, x_val, standardiser)
        self.calibrator = fit_calibrator(self.calibration, val_logits, y_val, self.clip)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw network output for windows, float32, shape (n,)."""
        network, standardiser, _ = self._fitted()
        self._check_input(x, expect_features=True)
        return network_logits(network, self.inputs.apply(x), standardiser)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Calibrated P(up), float64, shape (n,), clipped to the calibrator's bounds."""
        _, _, calibrator = self._fitted()
        return calibrator.apply(self.logits(x))

    def export_onnx(self, path: Path) -> None:
        """Write the network as ONNX (float32, opset 17, dynamic batch): standardised windows → logits."""
        network, _, _ = self._fitted()
        network.eval()
        example = torch.zeros((2, self.window, self.n_features or 0), dtype=torch.float32)
        with warnings.catch_warnings():
            # the TorchScript-based exporter announces its deprecation; it handles nn.LSTM reliably
            warnings.simplefilter("ignore")
            torch.onnx.export(
                network,
                (example,),
                path,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )

    def serving_meta(self) -> dict[str, Any]:
        """What `OnnxSequenceModel` needs besides the network: shapes, standardisation, calibration."""
        _, standardiser, calibrator = self._fitted()
        return {
            "format": FORMAT_VERSION,
            "name": self.name,
            "window": self.window,
            "n_features": self.n_features,
            "inputs": self.inputs.to_list(),
            "architecture": self.architecture(),
            "calibration": self.calibration,
            "standardiser": standardiser.to_dict(),
            "calibrator": calibrator.to_dict(),
            "training_config": asdict(self.training),
            "training_report": asdict(self.report) if self.report is not None else None,
        }

    def to_serving(self) -> OnnxSequenceModel:
        """The onnxruntime copy of this model, as the live worker would load it."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / MODEL_FILE
            self.export_onnx(path)
            return OnnxSequenceModel(path.read_bytes(), self.serving_meta())

    def save(self, directory: Path) -> None:
        """Write `model.onnx`, `model.json` (standardisation, calibration, report) and `weights.pt`."""
        network, _, _ = self._fitted()
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.export_onnx(folder / MODEL_FILE)
        (folder / META_FILE).write_bytes(orjson.dumps(self.serving_meta(), option=orjson.OPT_INDENT_2))
        torch.save(network.state_dict(), folder / WEIGHTS_FILE)

    @classmethod
    def load(cls, directory: Path | str) -> Self:
        """The torch model saved in `directory`, ready to predict or to train further."""
        folder = Path(directory)
        meta = orjson.loads((folder / META_FILE).read_bytes())
        if meta.get("name") != cls.name:
            raise ValueError(f"{folder} holds a {meta.get('name')!r} model, not {cls.name!r}")
        model = cls(
            window=int(meta["window"]),
            calibration=str(meta["calibration"]),
            clip=(float(meta["calibrator"]["clip_low"]), float(meta["calibrator"]["clip_high"])),
            training=TrainingConfig(**meta["training_config"]),
            inputs=meta.get("inputs"),  # absent in models that read every feature
            **meta["architecture"],
        )
        n_features = int(meta["n_features"])
        network = model.build_network(n_features)
        network.load_state_dict(torch.load(folder / WEIGHTS_FILE, weights_only=True))
        network.eval()
        model.n_features, model.network = n_features, network
        model.standardiser = WindowStandardiser.from_dict(meta["standardiser"])
        model.calibrator = calibrator_from_dict(meta["calibrator"])
        report = meta.get("training_report")
        model.report = TrainingReport.from_dict(report) if report is not None else None
        return model

    def _fitted(self) -> tuple[nn.Module, WindowStandardiser, Calibrator]:
        if self.network is None or self.standardiser is None or self.calibrator is None:
            raise RuntimeError(f"{self.name}: fit or load the model first")
        return self.network, self.standardiser, self.calibrator

    def _check_input(self, x: np.ndarray, expect_features: bool) -> None:
        if x.ndim != 3 or x.shape[1] != self.window:
            raise ValueError(f"{self.name}: expected windows (n, {self.window}, n_features), got {x.shape}")
        if expect_features:
            width = self.inputs.row_width(self.n_features or 0)
            if x.shape[2] != width:
                raise ValueError(f"{self.name}: expected {width} features, got {x.shape[2]}")


def _check_labels(labels: np.ndarray, count: int) -> None:
    if labels.shape != (count,):
        raise ValueError(f"expected {count} labels, got shape {labels.shape}")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 (not up) or 1 (up)")
