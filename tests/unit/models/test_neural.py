"""LSTM and Transformer: training on real BTCUSDT bars, calibration, serving without torch, exactness."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from models.bars import MINUTE_MS
from models.base import ProbabilityModel
from models.data import BarFrame, load_bars
from models.features import FEATURE_NAMES, N_FEATURES, batch_features
from models.neural_calibration import (
    IsotonicCalibrator,
    PlattCalibrator,
    calibrator_from_dict,
    fit_calibrator,
)
from models.onnx_serving import (
    META_FILE,
    MODEL_FILE,
    InputSelection,
    OnnxSequenceModel,
    WindowStandardiser,
    bench_sequence_model,
)
from models.training.lstm import LSTMModel
from models.training.torch_training import TorchSequenceModel, TrainingConfig, WeightAverage, log_loss
from models.training.transformer import TransformerModel

DATA_DIR = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
HORIZON_BARS = 15
LSTM_WINDOW = 60
TRANSFORMER_WINDOW = 30
FAST = TrainingConfig(seed=11, max_epochs=3, patience=2, batch_size=256, train_stride=2, num_threads=1)


def _ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def _simple_features(frame: BarFrame) -> np.ndarray:
    """Six plain features: log returns over 1/5/15 bars, high-low range, volume z-score, taker imbalance."""
    log_close = np.log(frame.close)
    columns = []
    for lag in (1, 5, 15):
        ret = np.full(len(frame), np.nan)
        ret[lag:] = log_close[lag:] - log_close[:-lag]
        columns.append(ret)
    columns.append(np.log(frame.high / frame.low))
    volume = np.log1p(frame.volume)
    cumulative = np.concatenate([[0.0], np.cumsum(volume)])
    cumulative_sq = np.concatenate([[0.0], np.cumsum(volume * volume)])
    span = 60
    volume_z = np.full(len(frame), np.nan)
    mean = (cumulative[span:] - cumulative[:-span]) / span
    var = (cumulative_sq[span:] - cumulative_sq[:-span]) / span - mean * mean
    # the z-score of bar t against the 60 bars before it
    volume_z[span:] = (volume[span:] - mean[:-1]) / np.sqrt(np.maximum(var[:-1], 1e-12))
    columns.append(volume_z)
    with np.errstate(invalid="ignore", divide="ignore"):
        columns.append(frame.taker_buy_base / frame.volume - 0.5)
    return np.column_stack(columns)


def _windows_and_labels(
    frame: BarFrame, window: int, features: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Windows ending at each bar with a full window and a close 15 minutes on; label: that close is up.

    The rows are `_simple_features` unless `features` (one row per bar) is given; windows whose newest row has
    no value at all (features still warming up) are left out.
    """
    features = _simple_features(frame) if features is None else features
    ends = np.arange(window - 1, len(frame) - HORIZON_BARS)
    # only bars whose window and horizon span consecutive minutes (gaps would stretch both in time)
    contiguous = (frame.open_time[ends + HORIZON_BARS] - frame.open_time[ends - window + 1]) == (
        (window - 1 + HORIZON_BARS) * MINUTE_MS
    )
    ends = ends[contiguous]
    ends = ends[np.isfinite(features[ends]).any(axis=1)]
    views = np.lib.stride_tricks.sliding_window_view(features, window, axis=0)  # (n - window + 1, F, window)
    windows = np.ascontiguousarray(views[ends - window + 1].transpose(0, 2, 1), dtype=np.float32)
    labels = (frame.close[ends + HORIZON_BARS] > frame.close[ends]).astype(np.int64)
    return windows, labels


def _split(frame: BarFrame, window: int, full_rows: bool = False) -> Split:
    """Train on the first week (2024-03-04 → 03-11), validate on the two days after it.

    With `full_rows`, the windows hold the engine's feature rows (`FEATURE_NAMES`) instead of six plain ones.
    """
    cut = _ms("2024-03-11")
    features = batch_features(frame) if full_rows else _simple_features(frame)
    before = frame.open_time < cut
    train_x, train_y = _windows_and_labels(frame.between(None, cut), window, features[before])
    val_x, val_y = _windows_and_labels(frame.between(cut, None), window, features[~before])
    return Split(train_x, train_y, val_x, val_y)


@pytest.fixture(scope="module")
def btc_bars() -> BarFrame:
    """Nine real days of BTCUSDT 1-minute bars."""
    return load_bars(DATA_DIR, "BTCUSDT", _ms("2024-03-04"), _ms("2024-03-13"))


@pytest.fixture(scope="module")
def lstm_split(btc_bars: BarFrame) -> Split:
    return _split(btc_bars, LSTM_WINDOW)


@pytest.fixture(scope="module")
def transformer_split(btc_bars: BarFrame) -> Split:
    return _split(btc_bars, TRANSFORMER_WINDOW)


@pytest.fixture(scope="module")
def trained(
    lstm_split: Split, transformer_split: Split, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[TorchSequenceModel, Split, Path]]:
    """Both models fitted once on the real week and saved; shared by the tests that only read them."""
    result: dict[str, tuple[TorchSequenceModel, Split, Path]] = {}
    candidates: list[tuple[TorchSequenceModel, Split]] = [
        (LSTMModel(window=LSTM_WINDOW, training=FAST), lstm_split),
        (TransformerModel(window=TRANSFORMER_WINDOW, training=FAST), transformer_split),
    ]
    for model, split in candidates:
        model.fit(split.x_train, split.y_train, split.x_val, split.y_val)
        directory = tmp_path_factory.mktemp(model.name)
        model.save(directory)
        result[model.name] = (model, split, directory)
    return result


MODEL_NAMES = ["lstm", "transformer"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fitted_model_is_no_worse_than_the_base_rate_on_validation(
    trained: dict[str, tuple[TorchSequenceModel, Split, Path]], name: str
) -> None:
    model, split, _ = trained[name]
    p = model.predict_proba(split.x_val)
    base_rate = split.y_val.mean()
    constant_loss = -(base_rate * np.log(base_rate) + (1 - base_rate) * np.log(1 - base_rate))
    model_loss = -np.mean(split.y_val * np.log(p) + (1 - split.y_val) * np.log(1 - p))
    assert model_loss <= constant_loss + 0.002
    assert p.shape == (split.x_val.shape[0],)
    assert np.all((p >= 0.02) & (p <= 0.98))
    assert p.std() > 1e-4  # it tells windows apart, unlike the constant predictor


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_serving_matches_the_torch_model(
    trained: dict[str, tuple[TorchSequenceModel, Split, Path]], name: str
) -> None:
    model, split, directory = trained[name]
    served = OnnxSequenceModel.load(directory)
    assert isinstance(served, ProbabilityModel) and isinstance(model, ProbabilityModel)
    assert (served.name, served.window, served.n_features) == (model.name, model.window, model.n_features)
    np.testing.assert_allclose(served.logits(split.x_val), model.logits(split.x_val), rtol=0, atol=1e-5)
    np.testing.assert_allclose(served.predict_proba(split.x_val), model.predict_proba(split.x_val), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_batched_scores_equal_row_by_row_scores_bit_for_bit(
    trained: dict[str, tuple[TorchSequenceModel, Split, Path]], name: str
) -> None:
    _, split, directory = trained[name]
    served = OnnxSequenceModel.load(directory)
    rng = np.random.default_rng(5)
    probe = (rng.standard_normal((192, served.window, served.n_features)) * 3).astype(np.float32)
    probe[rng.random(probe.shape) < 0.01] = np.nan  # missing features are zeroed, never leak across rows
    for windows in (probe, split.x_val[:192]):
        single = np.concatenate([served.predict_proba(windows[i : i + 1]) for i in range(windows.shape[0])])
        for batch_size in (1, 7, 64):
            batched = np.concatenate(
                [served.predict_proba(windows[i : i + batch_size]) for i in range(0, windows.shape[0], batch_size)]
            )
            # other batch sizes take other matrix-kernel blockings: equal to float32 rounding; a window
            # that leaked into its neighbours would move them by orders of magnitude more
            np.testing.assert_allclose(batched, single, rtol=0, atol=1e-6, err_msg=f"batch size {batch_size}")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_torch_load_restores_the_same_predictions(
    trained: dict[str, tuple[TorchSequenceModel, Split, Path]], name: str
) -> None:
    model, split, directory = trained[name]
    restored = type(model).load(directory)
    assert np.array_equal(restored.predict_proba(split.x_val[:300]), model.predict_proba(split.x_val[:300]))
    assert restored.report == model.report


@pytest.mark.parametrize("model_class", [LSTMModel, TransformerModel])
def test_same_seed_gives_the_same_weights_and_another_seed_does_not(
    lstm_split: Split, transformer_split: Split, model_class: type[LSTMModel] | type[TransformerModel]
) -> None:
    split = lstm_split if model_class is LSTMModel else transformer_split
    x_train, y_train = split.x_train[:1500], split.y_train[:1500]
    x_val, y_val = split.x_val[:500], split.y_val[:500]

    def weights(seed: int) -> dict[str, torch.Tensor]:
        model = model_class(training=replace(FAST, seed=seed, max_epochs=1, train_stride=1))
        model.fit(x_train, y_train, x_val, y_val)
        assert model.network is not None
        return model.network.state_dict()

    first, again, other = weights(3), weights(3), weights(4)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_calibration_is_fitted_on_validation_labels_not_training_labels(lstm_split: Split) -> None:
    # train on a deliberately up-heavy subset: a calibrator fitted on training data would centre near its rate
    downs = np.flatnonzero(lstm_split.y_train == 0)
    dropped = downs[np.random.default_rng(0).random(downs.shape[0]) < 0.6]
    keep = np.setdiff1d(np.arange(lstm_split.y_train.shape[0]), dropped)
    y_train = lstm_split.y_train[keep]
    model = LSTMModel(training=replace(FAST, max_epochs=1))
    model.fit(lstm_split.x_train[keep], y_train, lstm_split.x_val, lstm_split.y_val)
    mean_p = model.predict_proba(lstm_split.x_val).mean()
    assert y_train.mean() - lstm_split.y_val.mean() > 0.1
    # Platt's maximum-likelihood fit reproduces the base rate of the data it was fitted on
    assert abs(mean_p - lstm_split.y_val.mean()) < 2e-3


# The loss recomputed from the served network and the one recorded in training come from the same weights
# through differently blocked float32 matrix products, so they agree to float32 rounding, not bit for bit.
SERVED_LOSS_REL_TOLERANCE = 1e-6


def assert_served_loss_is_the_best_epochs(served_loss: float, val_losses: tuple[float, ...]) -> None:
    """The served weights are the best epoch's: their loss is that epoch's, and no other epoch's is that close."""
    best = min(val_losses)
    tolerance = SERVED_LOSS_REL_TOLERANCE * best
    assert served_loss == pytest.approx(best, rel=SERVED_LOSS_REL_TOLERANCE)
    others = [loss for loss in val_losses if loss != best]
    assert others and min(abs(loss - best) for loss in others) > 10 * tolerance, (
        "epochs too close to tell apart at this tolerance"
    )


def test_early_stopping_restores_the_best_epoch_and_reports_every_epoch(lstm_split: Split) -> None:
    seen: list[tuple[int, float, float]] = []
    # a learning rate this high overfits a week within a few epochs, so patience must end the run
    config = replace(FAST, max_epochs=8, patience=1, learning_rate=0.03)
    model = LSTMModel(training=config)
    model.fit(
        lstm_split.x_train,
        lstm_split.y_train,
        lstm_split.x_val,
        lstm_split.y_val,
        on_epoch=lambda epoch, train, val: seen.append((epoch, train, val)),
    )
    report = model.report
    assert report is not None
    assert report.stopped_by == "patience" and report.epochs_run < config.max_epochs
    assert [epoch for epoch, _, _ in seen] == list(range(1, report.epochs_run + 1))
    assert tuple(val for _, _, val in seen) == report.val_losses
    assert report.best_val_loss == min(report.val_losses) != report.val_losses[-1]
    assert_served_loss_is_the_best_epochs(log_loss(model.logits(lstm_split.x_val), lstm_split.y_val), report.val_losses)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("ema_decay", 1.0), ("ema_decay", -0.1), ("input_clip", 0.0), ("learning_rate", 0.0), ("patience", 0)],
)
def test_training_config_rejects_a_bad_setting_by_name(setting: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"TrainingConfig.{setting}"):
        TrainingConfig(**{setting: value})


def test_weight_average_follows_the_network_with_a_warm_up() -> None:
    network = torch.nn.Linear(2, 1)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.fill_(0.0)
    average = WeightAverage(network, decay=0.9)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.fill_(1.0)
    expected = 0.0
    for step in range(1, 121):
        average.update(network)
        # decay min(0.9, (1 + step) / (10 + step)): 2/11 at the first step, 0.9 from step 80 on
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * 1.0
        for parameter in average.network.parameters():
            assert torch.allclose(parameter, torch.full_like(parameter, expected), atol=1e-6)
    assert 0.99 < expected < 1.0
    assert all(torch.equal(p, torch.ones_like(p)) for p in network.parameters())


def test_weight_averaged_training_serves_the_best_average_not_the_last_weights(lstm_split: Split) -> None:
    config = replace(FAST, max_epochs=3, patience=3, ema_decay=0.99)
    averaged = LSTMModel(training=config)
    averaged.fit(lstm_split.x_train, lstm_split.y_train, lstm_split.x_val, lstm_split.y_val)
    plain = LSTMModel(training=replace(config, ema_decay=0.0))
    plain.fit(lstm_split.x_train, lstm_split.y_train, lstm_split.x_val, lstm_split.y_val)
    assert averaged.report is not None and plain.report is not None
    # the same seed draws the same batches: only the averaging differs
    assert averaged.report.train_losses == plain.report.train_losses
    assert averaged.report.val_losses != plain.report.val_losses
    assert averaged.report.best_val_loss == min(averaged.report.val_losses)
    assert_served_loss_is_the_best_epochs(
        log_loss(averaged.logits(lstm_split.x_val), lstm_split.y_val), averaged.report.val_losses
    )


def test_wall_time_cap_ends_training_within_the_first_epoch(lstm_split: Split) -> None:
    model = LSTMModel(training=replace(FAST, max_seconds=1e-3, max_epochs=50))
    model.fit(lstm_split.x_train, lstm_split.y_train, lstm_split.x_val, lstm_split.y_val)
    assert model.report is not None
    assert (model.report.stopped_by, model.report.epochs_run) == ("max_seconds", 1)


def test_standardiser_uses_training_windows_and_zeroes_missing_values(
    trained: dict[str, tuple[TorchSequenceModel, Split, Path]],
) -> None:
    model, split, _ = trained["lstm"]
    assert model.standardiser is not None
    rows = split.x_train[:: FAST.train_stride].reshape(-1, split.x_train.shape[2]).astype(np.float64)
    np.testing.assert_allclose(model.standardiser.mean, np.nanmean(rows, axis=0), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(model.standardiser.std, np.nanstd(rows, axis=0), rtol=1e-5)
    windows = split.x_val[:2].copy()
    windows[0, 3, 1] = np.nan
    windows[1, 0, 0] = np.inf
    out = model.standardiser.transform(windows)
    assert out.dtype == np.float32 and out[0, 3, 1] == 0.0 and out[1, 0, 0] == 0.0 and np.isfinite(out).all()


def test_clipped_standardiser_limits_only_values_beyond_the_clip(lstm_split: Split) -> None:
    plain = WindowStandardiser.fit(lstm_split.x_train[::4])
    clipped = WindowStandardiser.fit(lstm_split.x_train[::4], clip=3.0)
    assert np.array_equal(plain.mean, clipped.mean) and np.array_equal(plain.std, clipped.std)
    windows = lstm_split.x_val[:64].copy()
    windows[0, -1, 0] = plain.mean[0] + 50 * plain.std[0]  # a return fifty standard deviations out
    windows[1, -1, 1] = plain.mean[1] - 50 * plain.std[1]
    free, limited = plain.transform(windows), clipped.transform(windows)
    assert free[0, -1, 0] == pytest.approx(50, rel=1e-4) and limited[0, -1, 0] == 3.0
    assert free[1, -1, 1] == pytest.approx(-50, rel=1e-4) and limited[1, -1, 1] == -3.0
    inside = np.abs(free) <= 3.0
    assert inside.mean() > 0.95 and np.array_equal(limited[inside], free[inside])
    assert np.all(np.abs(limited) <= 3.0)
    assert WindowStandardiser.from_dict(clipped.to_dict()).clip == 3.0
    # a model saved before clipping existed has no "clip" in its metadata and is served unclipped
    legacy = {"mean": plain.mean.tolist(), "std": plain.std.tolist()}
    assert WindowStandardiser.from_dict(legacy).clip is None


def test_clipped_model_serves_the_same_scores_from_onnx(lstm_split: Split, tmp_path: Path) -> None:
    model = LSTMModel(window=LSTM_WINDOW, training=replace(FAST, max_epochs=1, input_clip=2.0))
    model.fit(lstm_split.x_train, lstm_split.y_train, lstm_split.x_val, lstm_split.y_val)
    model.save(tmp_path)
    served = OnnxSequenceModel.load(tmp_path)
    assert served.standardiser.clip == 2.0
    windows = lstm_split.x_val[:128].copy()
    windows[:, -1, :] *= 40.0  # the newest row far outside the training range: only the clip bounds it
    np.testing.assert_allclose(served.logits(windows), model.logits(windows), rtol=0, atol=1e-5)
    meta = orjson.loads((tmp_path / META_FILE).read_bytes())
    meta["standardiser"]["clip"] = None
    unclipped = OnnxSequenceModel((tmp_path / MODEL_FILE).read_bytes(), meta)
    assert not np.allclose(unclipped.logits(windows), served.logits(windows), atol=1e-3)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (("ret_1", "volume"), "unknown sequence-model inputs \\['volume'\\]"),
        ((), "at least one"),
        (("ret_1", "rv_60", "ret_1"), "repeat"),
    ],
)
def test_input_selection_rejects_a_bad_list_of_inputs(names: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LSTMModel(window=LSTM_WINDOW, inputs=names)


def test_model_reading_named_inputs_ignores_other_columns_and_serves_them_from_onnx(
    btc_bars: BarFrame, tmp_path: Path
) -> None:
    window = 20
    split = _split(btc_bars, window, full_rows=True)
    assert split.x_train.shape[2] == N_FEATURES
    inputs = ("ret_1", "volume_z", "imbalance_z", "hl_range_15", "tod_sin")
    columns = [FEATURE_NAMES.index(name) for name in inputs]
    model = LSTMModel(window=window, training=replace(FAST, max_epochs=1), inputs=inputs)
    model.fit(split.x_train, split.y_train, split.x_val, split.y_val)
    assert model.n_features == len(inputs)
    # standardised on the named columns of the training windows (every second one: FAST's stride) only
    selected = split.x_train[:: FAST.train_stride][:, :, columns].reshape(-1, len(inputs)).astype(np.float64)
    assert model.standardiser is not None
    np.testing.assert_allclose(model.standardiser.mean, np.nanmean(selected, axis=0), rtol=1e-5, atol=1e-9)

    windows = split.x_val[:256]
    unread = [j for j in range(N_FEATURES) if j not in columns]
    noisy = windows.copy()
    noisy[:, :, unread] = np.random.default_rng(3).normal(0.0, 100.0, (windows.shape[0], window, len(unread)))
    np.testing.assert_array_equal(model.logits(noisy), model.logits(windows))
    shifted = windows.copy()
    shifted[:, -1, FEATURE_NAMES.index("volume_z")] += 3.0
    assert not np.allclose(model.logits(shifted), model.logits(windows), atol=1e-4)

    model.save(tmp_path)
    served = OnnxSequenceModel.load(tmp_path)
    assert served.inputs.names == inputs
    assert (served.n_features, served.row_width) == (len(inputs), N_FEATURES)
    np.testing.assert_allclose(served.logits(noisy), model.logits(windows), rtol=0, atol=1e-5)
    assert LSTMModel.load(tmp_path).inputs.names == inputs
    with pytest.raises(ValueError, match=f"expected {N_FEATURES} features"):
        served.logits(windows[:, :, columns])
    # a model saved before inputs could be named has no "inputs" in its metadata and reads every column
    assert InputSelection.from_list(None).apply(windows) is windows


def test_constant_feature_is_centred_not_divided_by_zero() -> None:
    windows = np.zeros((4, 3, 2), dtype=np.float32)
    windows[..., 0] = 7.0
    windows[..., 1] = np.arange(3, dtype=np.float32)
    standardiser = WindowStandardiser.fit(windows)
    out = standardiser.transform(windows)
    assert standardiser.std[0] == 1.0 and np.all(out[..., 0] == 0.0)


def test_platt_calibrator_recovers_known_slope_and_intercept() -> None:
    # synthetic draws from a known logistic map: a check of the estimator, not a stand-in for market data
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-(0.4 * logits - 0.2)))).astype(np.int64)
    calibrator = PlattCalibrator.fit(logits, labels, clip=(0.001, 0.999))
    assert calibrator.slope == pytest.approx(0.4, abs=0.05)
    assert calibrator.intercept == pytest.approx(-0.2, abs=0.05)
    assert calibrator_from_dict(calibrator.to_dict()) == calibrator


def test_isotonic_calibrator_is_monotone_and_clipped() -> None:
    logits = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    labels = np.array([0, 0, 1, 0, 1, 1, 1, 1])
    calibrator = fit_calibrator("isotonic", logits, labels, clip=(0.05, 0.95))
    assert isinstance(calibrator, IsotonicCalibrator)
    p = calibrator.apply(np.linspace(-5, 5, 101))
    assert np.all(np.diff(p) >= 0) and p.min() == 0.05 and p.max() == 0.95
    assert calibrator.apply(np.array([-0.5]))[0] == pytest.approx(0.5)  # the pooled (-1, 0) block
    assert calibrator_from_dict(calibrator.to_dict()) == calibrator
    with pytest.raises(ValueError, match="unknown calibration"):
        fit_calibrator("beta", logits, labels)


def test_bench_reports_cheaper_rows_in_a_batch(
    trained: dict[str, tuple[TorchSequenceModel, Split, Path]],
) -> None:
    served = OnnxSequenceModel.load(trained["lstm"][2])
    timings = bench_sequence_model(served, served.window, served.n_features)
    assert set(timings) == {"batch_1", "batch_64"}
    assert 0 < timings["batch_64"] < timings["batch_1"]
