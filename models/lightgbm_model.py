"""Gradient-boosted trees on the newest feature row (window 1), early-stopped and calibrated on validation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import orjson

from models.neural_calibration import Calibrator, calibrator_from_dict, fit_calibrator


@dataclass(frozen=True, slots=True)
class LightGBMParams:
    """Conservative parameters (few, large leaves; strong L2): the target is mostly noise."""

    num_leaves: int = 15
    learning_rate: float = 0.03
    max_rounds: int = 600
    early_stopping_rounds: int = 60
    min_data_in_leaf: int = 2000
    feature_fraction: float = 0.7
    bagging_fraction: float = 0.7
    lambda_l2: float = 10.0
    num_threads: int = 1
    seed: int = 7
    calibration: str = "platt"
    extra: dict[str, Any] = field(default_factory=dict)


def last_rows(x: np.ndarray) -> np.ndarray:
    """(n, window, F) windows or (n, F) rows → (n, F) float64 rows of the newest bar."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, -1, :]
    return np.ascontiguousarray(x, dtype=np.float64)


class LightGBMModel:
    """models.base.ProbabilityModel backed by a LightGBM booster and a calibrator."""

    name = "lightgbm"
    window = 1

    def __init__(self, params: LightGBMParams | None = None, num_threads: int = 1) -> None:
        self.params = params or LightGBMParams()
        self.num_threads = num_threads  # inference threads; one thread is fastest at batch 1 on two cores
        self.booster: lgb.Booster | None = None
        self.calibrator: Calibrator | None = None
        self.best_iteration = 0

    def _lgb_params(self) -> dict[str, Any]:
        p = self.params
        return {
            "objective": "binary",
            "metric": "binary_logloss",
            "num_leaves": p.num_leaves,
            "learning_rate": p.learning_rate,
            "min_data_in_leaf": p.min_data_in_leaf,
            "feature_fraction": p.feature_fraction,
            "bagging_fraction": p.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": p.lambda_l2,
            "num_threads": p.num_threads,
            "seed": p.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
            **p.extra,
        }

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> None:
        """Boost on training rows, stop early on validation log-loss, calibrate on validation rows."""
        train = lgb.Dataset(last_rows(x_train), label=np.asarray(y_train, dtype=np.float64), free_raw_data=True)
        val = lgb.Dataset(last_rows(x_val), label=np.asarray(y_val, dtype=np.float64), reference=train)
        self.booster = lgb.train(
            self._lgb_params(),
            train,
            num_boost_round=self.params.max_rounds,
            valid_sets=[val],
            callbacks=[lgb.early_stopping(self.params.early_stopping_rounds, verbose=False)],
        )
        self.best_iteration = int(self.booster.best_iteration or self.booster.current_iteration())
        self.calibrator = fit_calibrator(self.params.calibration, self.logits(x_val), np.asarray(y_val))

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Uncalibrated booster margins (log-odds)."""
        if self.booster is None:
            raise RuntimeError("model is not fitted")
        out = self.booster.predict(
            last_rows(x), num_iteration=self.best_iteration, raw_score=True, num_threads=self.num_threads
        )
        return np.asarray(out, dtype=np.float64)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Calibrated P(up) per row, clipped to the calibrator's range."""
        if self.calibrator is None:
            raise RuntimeError("model is not calibrated")
        return self.calibrator.apply(self.logits(x))

    def feature_importance(self) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("model is not fitted")
        return np.asarray(self.booster.feature_importance("gain"), dtype=np.float64)

    def save(self, directory: Path) -> None:
        """Write the booster (model.txt) and its calibrator and parameters (meta.json)."""
        if self.booster is None or self.calibrator is None:
            raise RuntimeError("model is not fitted")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(directory / "model.txt"), num_iteration=self.best_iteration)
        meta = {
            "params": asdict(self.params),
            "best_iteration": self.best_iteration,
            "calibrator": self.calibrator.to_dict(),
        }
        (directory / "meta.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))

    @classmethod
    def load(cls, directory: Path, num_threads: int = 1) -> LightGBMModel:
        directory = Path(directory)
        meta = orjson.loads((directory / "meta.json").read_bytes())
        model = cls(LightGBMParams(**meta["params"]), num_threads=num_threads)
        model.booster = lgb.Booster(model_file=str(directory / "model.txt"))
        model.best_iteration = int(meta["best_iteration"])
        model.calibrator = calibrator_from_dict(meta["calibrator"])
        return model
