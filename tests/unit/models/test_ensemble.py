"""Ensemble: weights follow realised log-loss, start from validation; replay equals the live steps."""

from __future__ import annotations

import numpy as np

from models.bars import MINUTE_MS
from models.ensemble import (
    EnsembleConfig,
    combine,
    misfit,
    new_state,
    remember,
    replay_weights,
    resolve,
    weights,
    weights_many,
)

CONFIG = EnsembleConfig(("good", "bad", "noise"), (0.693, 0.693, 0.693), horizon_minutes=5)


def test_initial_weights_follow_validation_logloss() -> None:
    config = EnsembleConfig(("a", "b"), (0.690, 0.700), horizon_minutes=15)
    w = weights(config, new_state(config))
    assert w[0] > w[1]
    assert abs(w.sum() - 1.0) < 1e-12


def test_weights_move_toward_the_model_that_is_right() -> None:
    rng = np.random.default_rng(3)
    state = new_state(CONFIG)
    start = weights(CONFIG, state)
    np.testing.assert_allclose(start, 1 / 3)
    close = 100.0
    for minute in range(3000):
        close_next = close * (1.0 + rng.choice([-1e-3, 1e-3]))
        up = close_next > close
        # resolve what is due, then predict: "good" leans the right way, "bad" the wrong way
        resolve(CONFIG, state, minute * MINUTE_MS, close)
        remember(CONFIG, state, minute * MINUTE_MS, close, (0.6 if up else 0.4, 0.4 if up else 0.6, 0.5))
        close = close_next
    final = weights(CONFIG, state)
    assert state.resolved > 1000
    assert final[0] > 0.5 > final[1]
    assert final[0] > final[2] > final[1]


def test_unresolvable_predictions_are_dropped() -> None:
    state = new_state(CONFIG)
    remember(CONFIG, state, 0, 100.0, (0.9, 0.1, 0.5))
    resolve(CONFIG, state, 10 * MINUTE_MS, 120.0)  # the bar at minute 5 never came
    assert state.pending == [] and state.resolved == 0
    remember(CONFIG, state, 0, 100.0, (0.9, 0.1, 0.5))
    resolve(CONFIG, state, 5 * MINUTE_MS, 100.0)  # a zero return carries no direction
    assert state.resolved == 0


def test_replay_weights_equal_the_step_by_step_engine_logic() -> None:
    rng = np.random.default_rng(5)
    n = 400
    open_time = np.arange(n) * MINUTE_MS
    open_time[200:] += 3 * MINUTE_MS  # a gap: some predictions never resolve
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    probs = rng.uniform(0.3, 0.7, (n, 3))
    index = {int(t): i for i, t in enumerate(open_time)}
    fwd = np.array(
        [
            np.log(close[index[t + 5 * MINUTE_MS]] / close[i]) if t + 5 * MINUTE_MS in index else np.nan
            for i, t in enumerate(open_time.tolist())
        ]
    )
    replayed = replay_weights(CONFIG, open_time, probs, fwd)
    state = new_state(CONFIG)
    for i in range(n):
        resolve(CONFIG, state, int(open_time[i]), float(close[i]))
        np.testing.assert_array_equal(weights(CONFIG, state), replayed[i])
        remember(CONFIG, state, int(open_time[i]), float(close[i]), tuple(probs[i]))


def test_disagreement_lowers_confidence_and_contributions_carry_each_model() -> None:
    w = np.full((2, 3), 1 / 3)
    agree, split = combine(CONFIG, np.array([[0.6, 0.6, 0.6], [0.9, 0.3, 0.6]]), w)
    assert abs(agree.p_up - split.p_up) < 1e-12
    assert split.disagreement > agree.disagreement == 0.0
    assert split.confidence < agree.confidence
    assert agree.prediction == "up"
    contributions = split.contributions(CONFIG.members)
    assert contributions["good"] == {"p_up": 0.9, "weight": 1 / 3}


def test_weights_of_many_states_are_each_state_alone_a_softmax_of_its_own_losses() -> None:
    rng = np.random.default_rng(11)
    states = [new_state(CONFIG) for _ in range(37)]
    for state in states:
        state.loss_sums = list(rng.uniform(5.0, 80.0, size=3))
    many = weights_many(CONFIG, states)
    assert many.shape == (37, 3)
    for state, row in zip(states, many, strict=True):
        np.testing.assert_array_equal(row, weights_many(CONFIG, [state])[0])  # the same bits alone as in a batch
        z = -CONFIG.eta * np.array(state.loss_sums)
        np.testing.assert_allclose(row, np.exp(z - z.max()) / np.exp(z - z.max()).sum(), rtol=1e-12)
        assert int(np.argmax(row)) == int(np.argmin(state.loss_sums))


def test_a_memory_the_updates_make_fits_and_a_forged_one_does_not() -> None:
    state = new_state(CONFIG)
    assert misfit(CONFIG, state) is None
    for minute in range(20_000):  # the worst case: every member certain and wrong, until the sums saturate
        close = 100.0 + (minute % 2)
        resolve(CONFIG, state, minute * MINUTE_MS, close)
        remember(CONFIG, state, minute * MINUTE_MS, close, (1.0, 1.0, 1.0) if minute % 2 else (0.0, 0.0, 0.0))
    assert min(state.loss_sums) > 0.99 * 27.631 / (1.0 - CONFIG.forget)  # near the largest reachable sum
    assert misfit(CONFIG, state) is None
    for loss_sums, pending in (
        (state.loss_sums[:2], state.pending),
        ([-1.0, *state.loss_sums[1:]], state.pending),
        ([float("nan"), *state.loss_sums[1:]], state.pending),
        (state.loss_sums, [(0, 100.0, [0.5, 0.5])]),
        (state.loss_sums, [(0, float("inf"), [0.5, 0.5, 0.5])]),
        (state.loss_sums, [(0, 100.0, [0.5, float("nan"), 0.5])]),
    ):
        forged = new_state(CONFIG)
        forged.loss_sums, forged.pending = list(loss_sums), list(pending)
        assert misfit(CONFIG, forged) is not None
