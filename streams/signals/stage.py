"""The signal stage: closed bars → features → batched ensemble inference → risk → signals and paper fills.

Bars arrive keyed by symbol. A batch from `streams.runtime.batches` is processed in rounds (one bar per symbol per
round, so each symbol's bars stay in order); each round is scored with one inference call per model, run in an
executor so the event loop never blocks. Per-symbol engine and paper state live in changelog-backed tables: a
restarted worker resumes exactly where it left off, and a redelivered bar gets its earlier signal back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import orjson

from models.bars import Bar
from models.drift import PSI_DRIFT, feature_psi, psi
from models.engine import Pending, SignalEngine, SymbolState
from models.ensemble import EnsemblePrediction
from models.evaluate import spearman
from models.features import FEATURE_NAMES
from streams import metrics
from streams.execution import PaperBook, PaperBroker

log = logging.getLogger("mlrisk.signals")

ACTIONABLE = ("long", "short", "close")
_T = TypeVar("_T")


@dataclass(slots=True)
class BarEvent:
    """A decoded bar with what is needed to persist state in its partition and to measure latency."""

    bar: Bar
    received_ms: float | None
    event: Any  # the Faust event, whose partition table writes must use
    market: dict[str, Any] = field(default_factory=dict)  # mark price, spread, depth at the bar's close


DECAY_MIN_RESOLVED = 500  # outcomes before a rolling IC is read as decay
DECAY_IC = 0.0  # the ensemble's rolling IC at or below this: its ranking no longer tells up from down


class PerformanceTracker:
    """Rolling, out-of-sample hit rate and IC per model, resolved once the horizon has passed.

    Once `every` outcomes have resolved since the last time, `measure_if_due` puts the figures in the metrics,
    and the ensemble's rolling IC crossing `DECAY_IC` (either way) is an event in `events`, as with drift. The
    measurement is the caller's to run (the worker: on a timer), so that no bar waits for it.
    """

    def __init__(self, horizon_minutes: int, window: int = 2_000, every: int = 60) -> None:
        self.horizon_ms = horizon_minutes * 60_000
        self.window = window
        self.every = every
        self.pending: dict[str, OrderedDict[int, tuple[float, dict[str, float]]]] = {}
        self.resolved: list[tuple[float, dict[str, float]]] = []  # (forward return, p_up per model)
        # the same outcomes as rows of floats (return, then p_up in `names` order), for a report in a few array
        # operations; `names` is None once outcomes with different models were mixed
        self.names: tuple[str, ...] | None = None
        self.rows: list[tuple[float, ...]] = []
        self.outcomes = 0
        self.measured_at = 0  # `outcomes` when last measured
        self.decayed = False
        self.events: list[dict[str, Any]] = []

    def measure_if_due(self) -> None:
        if self.outcomes - self.measured_at >= self.every:
            self.measured_at = self.outcomes
            self._measure()

    def _measure(self) -> None:
        figures = self.report()
        metrics.OUTCOMES_RESOLVED.set(figures["resolved"])
        for name, values in figures.items():
            if isinstance(values, dict):
                if values["ic"] is not None:
                    metrics.ROLLING_IC.labels(name).set(values["ic"])
                if values["hit_rate"] is not None:
                    metrics.HIT_RATE.labels(name).set(values["hit_rate"])
        ensemble = figures.get("ensemble")
        if figures["resolved"] < DECAY_MIN_RESOLVED or not isinstance(ensemble, dict) or ensemble["ic"] is None:
            return
        decayed = ensemble["ic"] <= DECAY_IC
        if decayed != self.decayed:
            self.events.append(
                {
                    "kind": "decay",
                    "decayed": decayed,
                    "ic": ensemble["ic"],
                    "hit_rate": ensemble["hit_rate"],
                    "resolved": figures["resolved"],
                    "threshold": DECAY_IC,
                }
            )
            self.decayed = decayed

    def record(self, symbol: str, bar: Bar, signal: dict[str, Any]) -> None:
        queue = self.pending.setdefault(symbol, OrderedDict())
        # settle what this bar's close makes known: the queue runs in open time, so only its head can be due
        due = self.horizon_ms
        while queue:
            open_time = next(iter(queue))
            if open_time + due > bar.open_time:
                break
            if open_time + due == bar.open_time:
                close, probs = queue.pop(open_time)
                forward = float(np.log(bar.close / close))
                self.resolved.append((forward, probs))
                if not self.rows:
                    self.names = tuple(probs)
                if self.names is not None and tuple(probs) == self.names:
                    self.rows.append((forward, *probs.values()))
                else:
                    self.names = None
                del self.resolved[: max(0, len(self.resolved) - self.window)]
                del self.rows[: max(0, len(self.rows) - self.window)]
                self.outcomes += 1
            elif open_time + due < bar.open_time:
                queue.pop(open_time)  # a gap: no clean outcome
        probs = {name: c["p_up"] for name, c in signal["model_contributions"].items()}
        probs["ensemble"] = signal["metadata"]["p_up"]
        queue[bar.open_time] = (bar.close, probs)

    def report(self) -> dict[str, Any]:
        if len(self.resolved) < 10:
            return {"resolved": len(self.resolved)}
        out: dict[str, Any] = {"resolved": len(self.resolved)}
        if self.names is not None and len(self.rows) == len(self.resolved):
            table = np.array(self.rows)
            returns, columns = table[:, 0], dict(zip(self.names, table[:, 1:].T, strict=True))
        else:
            returns = np.array([r for r, _ in self.resolved])
            columns = {name: np.array([p.get(name, np.nan) for _, p in self.resolved]) for name in self.resolved[-1][1]}
        for name, scores in columns.items():
            ok = np.isfinite(scores) & (returns != 0)
            hits = float(np.mean((scores[ok] > 0.5) == (returns[ok] > 0))) if ok.any() else None
            rank_ic = spearman(scores[ok], returns[ok]) if ok.sum() > 2 else float("nan")
            ic = rank_ic if np.isfinite(rank_ic) else None
            out[name] = {"hit_rate": hits, "ic": ic}
        return out


class DriftMonitor:
    """Drift of the live inputs and outputs against the model version's references, on a rolling window.

    Per feature, PSI of the recent feature rows against the training reference; for the predictions, PSI of the
    recent ensemble P(up) against its validation distribution. A crossing of the threshold (and the return
    below it) is an event, kept in `events` until the caller records it. `measure_if_due` measures once `every`
    rows have come since the last time (and the window holds at least four times that); the caller runs it.
    """

    def __init__(
        self,
        reference: dict[str, Any] | None,
        version: str,
        prediction_reference: dict[str, Any] | None,
        window: int = 1_440,
        every: int = 60,
    ) -> None:
        self.reference, self.version = reference, version
        self.prediction_reference = prediction_reference
        self.rows = np.full((window, len(FEATURE_NAMES)), np.nan, dtype=np.float32)
        self.predictions = np.full(window, np.nan)
        self.count, self.every = 0, every
        self.measured_at = 0  # `count` when last measured
        self.latest: dict[str, float] = {}
        self.prediction_psi: float | None = None
        self.drifted: set[str] = set()
        self.events: list[dict[str, Any]] = []

    def add(self, row: np.ndarray, p_up: float) -> None:
        slot = self.count % self.rows.shape[0]
        self.rows[slot] = row
        self.predictions[slot] = p_up
        self.count += 1

    def measure_if_due(self) -> None:
        if self.count - self.measured_at >= self.every and self.count >= self.every * 4:
            self.measured_at = self.count
            self._measure()

    def _measure(self) -> None:
        n = min(self.count, self.rows.shape[0])
        if self.reference:
            self.latest = feature_psi(self.reference, FEATURE_NAMES, self.rows[:n])
            for name, value in self.latest.items():
                metrics.FEATURE_DRIFT.labels(self.version, name).set(value)
        spec = self.prediction_reference
        if spec and spec.get("values"):
            self.prediction_psi = psi(spec["quantiles"], spec["values"], self.predictions[:n])
            metrics.PREDICTION_DRIFT.labels(self.version).set(self.prediction_psi)
        values = dict(self.latest)
        if self.prediction_psi is not None:
            values["prediction"] = self.prediction_psi
        drifted = {name for name, value in values.items() if value > PSI_DRIFT}
        if drifted != self.drifted:
            self.events.append(
                {
                    "kind": "drift",
                    "started": sorted(drifted - self.drifted),
                    "ended": sorted(self.drifted - drifted),
                    "rows": n,
                    "psi": {name: round(values[name], 4) for name in sorted(drifted)},
                    "threshold": PSI_DRIFT,
                }
            )
            self.drifted = drifted

    def report(self) -> dict[str, Any]:
        drifted = sorted((n for n in self.drifted if n != "prediction"), key=lambda n: -self.latest[n])
        return {
            "rows": min(self.count, self.rows.shape[0]),
            "psi": self.latest,
            "drifted_features": drifted,
            "prediction_psi": self.prediction_psi,
            "threshold": PSI_DRIFT,
        }


class SignalStage:
    """Per-batch logic of the signal agent; tables are injected (Faust tables in the worker)."""

    def __init__(
        self,
        engine: SignalEngine,
        engine_states: Any,
        paper_books: Any,
        broker: PaperBroker,
        publish_hold: bool = False,
    ) -> None:
        self.engine = engine
        self.engine_states = engine_states
        self.paper_books = paper_books
        self.broker = broker
        self.publish_hold = publish_hold
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.last_signals: dict[str, dict[str, Any]] = {}
        # symbol → (the table value last written, the state it encodes): a state is decoded from the table only
        # when the table holds something else (restored after a rebalance or a restart)
        self.decoded: dict[str, tuple[Any, SymbolState]] = {}
        # the metric series a decision updates, by label values (as many as the series Prometheus keeps anyway)
        self.metric_children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.swap(engine)

    def swap(self, engine: SignalEngine) -> None:
        """Serve another model version from the next batch on (call between batches). Per-symbol states are
        carried over as they are loaded (`SignalEngine.adopt`); performance and drift are measured afresh."""
        self.engine = engine
        self.tracker = PerformanceTracker(engine.horizon)
        metadata = engine.bundle.metadata
        self.drift = DriftMonitor(
            metadata.get("training_reference"), engine.bundle.version, metadata.get("prediction_reference")
        )

    def load_state(self, symbol: str) -> SymbolState:
        blob = self.engine_states.get(symbol)
        if blob is None:
            return self.engine.new_state(symbol)
        cached = self.decoded.get(symbol)
        if cached is not None and cached[0] is blob:  # the very value this stage wrote last: still current
            return self.engine.adopt(cached[1])
        try:
            return self.engine.restore(decode_state(blob))
        except Exception as error:  # a stored state that does not decode (forged, or another format): start afresh
            return self._afresh("engine state", symbol, error, self.engine.new_state(symbol))

    def measure_monitors(self) -> None:
        """Drift and decay measured where enough has come since the last time: off the bars' path (the worker runs
        it on its 5 s timer), so that no bar waits for a measurement."""
        self.drift.measure_if_due()
        self.tracker.measure_if_due()

    def take_events(self) -> list[dict[str, Any]]:
        """Drift and decay events since the last call, for the database."""
        events = self.drift.events + self.tracker.events
        self.drift.events, self.tracker.events = [], []
        return events

    def load_paper(self, symbol: str) -> PaperBook:
        data = self.paper_books.get(symbol)
        try:
            book = PaperBook() if data is None else PaperBook.from_dict(data)
        except Exception as error:  # as with the engine state: a book that does not decode starts flat
            book = self._afresh("paper book", symbol, error, PaperBook())
        self.broker.account.books[symbol] = book
        return book

    def _afresh(self, what: str, symbol: str, error: Exception, fresh: _T) -> _T:
        """A stored value that does not decode must not stop the worker on every redelivery: the symbol starts
        afresh (an engine state warms up again), and the error is logged and counted."""
        log.error("%s: the stored %s does not decode (%r); starting afresh", symbol, what, error)
        metrics.ERRORS.labels("restore").inc()
        return fresh

    async def process(
        self,
        items: Sequence[BarEvent],
        persist: Callable[[BarEvent, str, SymbolState, PaperBook], None],
        emit: Callable[[dict[str, Any], list[dict[str, Any]], BarEvent], Awaitable[None]],
    ) -> int:
        """Run the batch in rounds (one bar of each symbol a round, in the order they came); `persist` stores a
        symbol's state, `emit` publishes a signal and fills. A round's signals and fills are emitted, and the
        producer given the loop to send them, before its states are stored. Returns how many bars were decided."""
        stage_started = time.perf_counter()
        clock = _CpuClock()

        async def emit_outside(signal: dict[str, Any] | None, executions: list[dict[str, Any]], item: BarEvent) -> None:
            with clock.paused():
                await emit(signal, executions, item)  # type: ignore[arg-type]

        states: dict[str, SymbolState] = {}
        papers: dict[str, PaperBook] = {}
        decided = 0
        for round_items in _rounds(items):
            moving = await self._admit(round_items, states, papers, emit_outside)
            # the round's bars through the features at once (the paper broker and the engine share no state)
            prepared = self.engine.prepare_many([m[1] for m in moving], [m[0].bar for m in moving])
            pendings = [pending for pending in prepared if pending is not None]
            by_pending = dict(zip([id(p) for p in pendings], await self._predict(pendings, clock), strict=True))
            decisions: list[tuple[BarEvent, SymbolState, PaperBook, Pending | None, dict[str, Any] | None]] = []
            emitted = False
            for (item, state, paper, executions), pending in zip(moving, prepared, strict=True):
                signal = None
                if pending is not None:
                    signal = self.engine.finish(state, pending, by_pending[id(pending)], item.market)
                    decided += 1
                    if signal["signal_type"] in ACTIONABLE:
                        executions = executions + self.broker.on_signal(signal)
                decisions.append((item, state, paper, pending, signal))
                publishable = signal is not None and (signal["signal_type"] in ACTIONABLE or self.publish_hold)
                if publishable or executions:
                    if signal is not None and item.received_ms is not None:
                        signal["latency_ms"] = round(time.time() * 1000 - item.received_ms, 3)
                        metrics.LATENCY.observe(signal["latency_ms"] / 1000)
                    await emit_outside(signal if publishable else None, executions, item)
                    emitted = True
            # the round's signals leave before its bookkeeping: nothing is acknowledged before the batch is done,
            # and a bar redelivered before its state was stored is decided again to the same signal
            if emitted:
                with clock.paused():
                    await _let_the_producer_send()
            for item, state, paper, pending, signal in decisions:
                symbol = item.bar.symbol
                if pending is not None and signal is not None:
                    self._record(item, pending, signal)
                persist(item, symbol, state, paper)
                self.decoded[symbol] = (self.engine_states.get(symbol), state)
        account = self.broker.account
        metrics.PAPER_EQUITY.set(account.equity_usdt())
        metrics.DRAWDOWN.set(account.drawdown())
        metrics.SIGNAL_STAGE_SECONDS.inc(time.perf_counter() - stage_started)
        metrics.SIGNAL_STAGE_CPU_SECONDS.inc(clock.total())
        return decided

    async def _admit(
        self,
        round_items: list[BarEvent],
        states: dict[str, SymbolState],
        papers: dict[str, PaperBook],
        emit: Callable[[dict[str, Any] | None, list[dict[str, Any]], BarEvent], Awaitable[None]],
    ) -> list[tuple[BarEvent, SymbolState, PaperBook, list[dict[str, Any]]]]:
        """The round's bars that move their symbol on, each with its state, paper book and the fills the bar
        caused. A bar at or before the symbol's last decided one is a redelivery after a crash: its decision is
        published again under the same id (the sink keeps one), and it moves nothing."""
        moving = []
        for item in round_items:
            symbol = item.bar.symbol
            state = states.get(symbol) or states.setdefault(symbol, self.load_state(symbol))
            paper = papers.get(symbol) or papers.setdefault(symbol, self.load_paper(symbol))
            previous = state.last_close_time
            if previous is not None and item.bar.close_time <= previous:
                old = self.engine.previous_signal(state, item.bar)
                if old is not None and (old["signal_type"] in ACTIONABLE or self.publish_hold):
                    await emit(old, [], item)
                continue
            moving.append((item, state, paper, self.broker.on_bar(item.bar)))
        return moving

    async def _predict(self, pendings: list[Pending], clock: _CpuClock) -> list[EnsemblePrediction]:
        """The ensemble over the round's windows, on the inference thread (its CPU time counted as the stage's)."""
        if not pendings:
            return []
        started = time.perf_counter()
        with clock.paused():
            predictions, score_cpu_s = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._score, pendings
            )
        clock.add(score_cpu_s)
        metrics.INFERENCE.labels("ensemble").observe(time.perf_counter() - started)
        return predictions

    def _record(self, item: BarEvent, pending: Pending, signal: dict[str, Any]) -> None:
        """A decision into the monitors (drift, decay), the API's last signal and the metrics."""
        symbol = item.bar.symbol
        self.drift.add(pending.window[-1], signal["metadata"]["p_up"])
        self.tracker.record(symbol, item.bar, signal)
        self.last_signals[symbol] = signal
        self._series(metrics.SIGNALS_OUT, symbol, signal["signal_type"], signal["risk_level"]).inc()
        self._series(metrics.RISK_SCORE, symbol).set(signal["risk_score"])
        for name, contribution in signal["model_contributions"].items():
            self._series(metrics.MODEL_WEIGHT, name, symbol).set(contribution["weight"])

    def _series(self, metric: Any, *labels: str) -> Any:
        """The metric's series for these label values, looked up in Prometheus once."""
        key = (metric, labels)
        series = self.metric_children.get(key)
        if series is None:
            series = self.metric_children[key] = metric.labels(*labels)
        return series

    def _score(self, pendings: list[Pending]) -> tuple[list[EnsemblePrediction], float]:
        """`engine.score` and the CPU seconds it took on the thread that ran it."""
        started = time.thread_time()
        predictions = self.engine.score(pendings)
        return predictions, time.thread_time() - started


def decode_state(blob: Any) -> SymbolState:
    """A symbol's engine state from its table value (bytes, through Faust's raw codec): what `SymbolState.to_bytes`
    wrote, or a state of the earlier format, which the table kept as a JSON string."""
    if not isinstance(blob, bytes):
        raise ValueError(f"an engine state of type {type(blob).__name__}")
    if blob[:1] == b'"':  # a JSON document that opens with a quote is a string
        blob = orjson.loads(blob).encode()
    return SymbolState.from_bytes(blob)


SEND_HOPS = 4  # loop iterations from a message handed to the producer to its request on the socket


async def _let_the_producer_send() -> None:
    """Give the loop the few iterations that the producer's sender needs to put what it holds on the wire (it
    wakes, drains the ready batches, then a task writes each request): the stage's own work in between would
    otherwise hold the round's signals in the process."""
    for _ in range(SEND_HOPS):
        await asyncio.sleep(0)


def _rounds(items: Sequence[BarEvent]) -> Iterator[list[BarEvent]]:
    """One bar of each symbol a round, in arrival order: a symbol's bars stay in order, symbols go side by side."""
    queues: OrderedDict[str, list[BarEvent]] = OrderedDict()
    for item in items:
        queues.setdefault(item.bar.symbol, []).append(item)
    while queues:
        yield [queue.pop(0) for queue in queues.values()]
        for symbol in [s for s, q in queues.items() if not q]:
            del queues[symbol]


class _CpuClock:
    """This thread's CPU seconds, less the spans spent awaiting others (`paused`), plus time added from elsewhere."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.mark = time.thread_time()

    @contextmanager
    def paused(self) -> Iterator[None]:
        self.spent += time.thread_time() - self.mark
        try:
            yield
        finally:
            self.mark = time.thread_time()

    def add(self, seconds: float) -> None:
        self.spent += seconds

    def total(self) -> float:
        return self.spent + time.thread_time() - self.mark
