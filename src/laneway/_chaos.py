"""An in-process chaos run: the engine under every failure at once (``laneway demo``).

Many sessions share one capped lane. Most sessions are healthy; a fifth of
them ("faulty") mix injected failures into ordinary turns: calls that hang,
streams that stall, turns that swallow their cancellation (zombies), short
event-loop blocks, crashes, flaky first attempts, turns that heartbeat past
their deadline, and stops from outside. Limits are short (deadline 2 s, idle
1 s, cancel grace 0.3 s) and the run is in real time, so the default size
finishes in well under a minute.

Afterwards the event log is the judge: every accepted job must have exactly
one terminal event (none lost, none doubled), the outcome each caller saw
must match it, and every turn of a healthy session must have succeeded
(a faulty session never wedged another). ``ChaosReport.ok`` says whether all
of that held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import Job, Laneway
from ._types import Event, JobState, Limits, Outcome, Retry
from .testing import block_loop, hang, hang_ignoring_cancel, model_stream

__all__ = ["ChaosReport", "run_chaos"]

DEADLINE, IDLE, GRACE = 2.0, 1.0, 0.3
RETRY = Retry(max_attempts=2, backoff=0.05, max_backoff=0.1)
ARRIVALS_PER_S = 300.0  # submit rate: messages arrive over messages / rate seconds
FAULTY_SHARE = 0.2  # share of sessions that get injected faults
FAULT_RATE = 0.35  # share of a faulty session's messages that are faults
FAULTS = {  # kind -> weight
    "hang": 3,
    "stall": 3,
    "swallow": 2,
    "block": 2,
    "crash": 2,
    "flaky": 2,
    "deadline": 1,
}
TERMINAL_KINDS = {f"job.{s.value}": s for s in JobState if s.terminal}


class ChaosCrash(RuntimeError):
    """The error an injected crash raises (the failure reason ``ChaosCrash``)."""


@dataclass
class ChaosReport:
    """What a chaos run did and whether every invariant held."""

    seed: int
    sessions: int
    accepted: int
    succeeded: int
    timed_out_by_reason: dict[str, int]
    failed: int
    cancelled: int
    retried: int
    dead: int
    lost: int
    duplicate_terminals: int
    healthy_latency_p50: float
    healthy_latency_p99: float
    worst_loop_lag: float
    zombies_seen: int
    loop_blocks: int = 0
    healthy_not_succeeded: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    problems: list[str] = field(default_factory=list)
    ok: bool = False

    @property
    def timed_out(self) -> int:
        return sum(self.timed_out_by_reason.values())

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a results table, in reading order."""
        rows = [
            ("sessions", str(self.sessions)),
            ("messages accepted", str(self.accepted)),
            ("faults injected", _counts(self.injected)),
            ("succeeded", str(self.succeeded)),
        ]
        rows += [
            (f"timed out ({reason})", str(n))
            for reason, n in sorted(self.timed_out_by_reason.items())
        ]
        rows += [
            ("failed", str(self.failed)),
            ("cancelled (stopped)", str(self.cancelled)),
            ("retried", str(self.retried)),
            ("dead", str(self.dead)),
            ("lost (must be 0)", str(self.lost)),
            ("duplicate terminal events (must be 0)", str(self.duplicate_terminals)),
            ("healthy sessions: turns not succeeded", str(self.healthy_not_succeeded)),
            ("healthy latency p50", _ms(self.healthy_latency_p50)),
            ("healthy latency p99", _ms(self.healthy_latency_p99)),
            ("worst loop lag", _ms(self.worst_loop_lag)),
            ("loop blocks reported", str(self.loop_blocks)),
            ("zombies seen (swallowed cancels)", str(self.zombies_seen)),
            ("elapsed", f"{self.elapsed:.1f} s"),
            ("seed", str(self.seed)),
            ("invariants", "held" if self.ok else "BROKEN: " + "; ".join(self.problems)),
        ]
        return rows


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


@dataclass(frozen=True, slots=True)
class _Message:
    at: float  # seconds after the start
    session: str
    payload: dict[str, Any]


@dataclass
class _Plan:
    messages: list[_Message]
    stops: list[tuple[float, str]]
    healthy: set[str]
    window: float


def _plan(rng: random.Random, sessions: int, messages: int) -> _Plan:
    names = [f"chaos-{i:04d}" for i in range(sessions)]
    faulty = set(rng.sample(names, max(1, round(sessions * FAULTY_SHARE))))
    window = messages / ARRIVALS_PER_S
    kinds, weights = list(FAULTS), list(FAULTS.values())
    plan: list[_Message] = []
    for _ in range(messages):
        session = rng.choice(names)
        kind = "ok"
        if session in faulty and rng.random() < FAULT_RATE:
            kind = rng.choices(kinds, weights)[0]
        payload = {
            "kind": kind,
            "words": rng.randint(3, 8),
            "delay": rng.uniform(0.005, 0.03),
            "block": rng.uniform(0.03, 0.15),
        }
        plan.append(_Message(rng.uniform(0, window), session, payload))
    plan.sort(key=lambda m: m.at)
    stops = [(rng.uniform(0, window), s) for s in rng.sample(sorted(faulty), len(faulty) // 4)]
    return _Plan(plan, sorted(stops), set(names) - faulty, window)


class _Harness:
    """The chaos handler plus what the run observed."""

    def __init__(self) -> None:
        self.swallowers: set[asyncio.Task[Any]] = set()

    async def turn(self, ctx: Any, payload: dict[str, Any]) -> str:
        kind = payload["kind"]
        if kind == "hang":
            await hang()
        elif kind == "stall":
            await self._relay(ctx, model_stream(["thinking", "about", "it"], stall_after=2))
        elif kind == "swallow" and ctx.attempt == 1:
            await self._swallow()
        elif kind == "crash" or (kind == "flaky" and ctx.attempt == 1):
            raise ChaosCrash(f"injected {kind}")
        elif kind == "deadline":
            await _heartbeat_forever(ctx)
        elif kind == "block":
            block_loop(payload["block"])
        return await self._answer(ctx, payload)

    async def _swallow(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.swallowers.add(task)
            task.add_done_callback(self.swallowers.discard)
        await hang_ignoring_cancel(times=1)  # swallows laneway's cancel; the cleanup's ends it

    @staticmethod
    async def _relay(ctx: Any, source: Any) -> list[str]:
        words: list[str] = []
        async for word in ctx.stream(source):
            words.append(word)
            await ctx.emit("delta", {"text": word + " "})
        return words

    async def _answer(self, ctx: Any, payload: dict[str, Any]) -> str:
        words = [f"w{i}" for i in range(payload["words"])]
        said = await self._relay(ctx, model_stream(words, delay=payload["delay"]))
        reply = " ".join(said)
        await ctx.emit("message", {"role": "assistant", "text": reply})
        return reply

    async def end_zombies(self) -> None:
        """Cancel the swallowing tasks again (they give in the second time)."""
        for _ in range(10):
            if not self.swallowers:
                return
            for task in list(self.swallowers):
                task.cancel()
            await asyncio.sleep(0.01)


async def _heartbeat_forever(ctx: Any) -> None:
    # Progress without output: never idle, so only the deadline ends it.
    while True:
        await asyncio.sleep(IDLE / 4)
        ctx.progress()


@dataclass
class _Observed:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    worst_lag: float = 0.0
    zombies: set[str] = field(default_factory=set)


async def run_chaos(
    *,
    sessions: int = 300,
    messages: int = 3000,
    seed: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    store: str = "memory://",
    quiet: bool = True,
) -> ChaosReport:
    """Run the chaos scenario; the report says what happened and if invariants held.

    ``progress(done, total)`` is called as jobs reach a terminal state.
    ``quiet`` silences laneway's own log records for the run (each injected
    failure would log a warning)."""
    if sessions < 1 or messages < 1:
        raise ValueError("run_chaos needs at least one session and one message")
    seed = random.randrange(2**32) if seed is None else seed
    plan = _plan(random.Random(seed), sessions, messages)
    harness = _Harness()
    lw = Laneway(
        store,
        lanes={"llm": max(8, sessions // 3)},
        limits=Limits(deadline=DEADLINE, idle=IDLE, cancel_grace=GRACE),
        retry=RETRY,
        watchdog_threshold=0.1,
        wait_warn=30.0,
    )
    lw.handler("chaos", lanes=("llm",))(harness.turn)
    with _quiet(quiet):
        async with lw:
            loop = asyncio.get_running_loop()
            started = loop.time()
            observed, jobs = await _drive(lw, plan, harness, progress)
            elapsed = loop.time() - started
            log = await _read_log(lw, {m.session for m in plan.messages})
            blocks = lw.snapshot().loop_blocks
    report = _judge(plan, jobs, observed, log)
    report.seed, report.sessions, report.elapsed, report.loop_blocks = (
        seed,
        sessions,
        elapsed,
        blocks,
    )
    return report


async def _drive(
    lw: Laneway,
    plan: _Plan,
    harness: _Harness,
    progress: Callable[[int, int], None] | None,
) -> tuple[_Observed, dict[str, Job]]:
    observed = _Observed()
    jobs: dict[str, Job] = {}
    waiters: set[asyncio.Task[None]] = set()
    total = len(plan.messages)
    if progress is not None:
        progress(0, total)
    watchers = [
        asyncio.create_task(_watch_lag(observed)),
        asyncio.create_task(_watch_zombies(lw, observed)),
        asyncio.create_task(_stop_sessions(lw, plan.stops)),
    ]
    loop = asyncio.get_running_loop()
    start = loop.time()

    def finished(_t: asyncio.Task[None]) -> None:
        if progress is not None:
            progress(len(observed.outcomes), total)

    try:
        for msg in plan.messages:
            ahead = start + msg.at - loop.time()
            if ahead > 0:
                await asyncio.sleep(ahead)
            job = await lw.submit(msg.session, "chaos", msg.payload)
            jobs[job.id] = job
            task = asyncio.create_task(_wait(job, loop.time(), observed))
            task.add_done_callback(finished)
            waiters.add(task)
        if waiters:
            await asyncio.wait(waiters, timeout=_settle_budget(plan))
    finally:
        for task in (*waiters, *watchers):
            task.cancel()
        await asyncio.gather(*waiters, *watchers, return_exceptions=True)
        await harness.end_zombies()
    return observed, jobs


def _settle_budget(plan: _Plan) -> float:
    """Seconds after the last arrival by which every job must be terminal: each
    session's messages run one after another, each at worst every attempt to its
    deadline plus grace and backoff."""
    worst = RETRY.max_attempts * (DEADLINE + GRACE + RETRY.max_backoff) + 0.5
    per_session = Counter(m.session for m in plan.messages)
    return max(per_session.values()) * worst + 10.0


async def _wait(job: Job, submitted: float, observed: _Observed) -> None:
    outcome = await job.wait()
    observed.latency[job.id] = asyncio.get_running_loop().time() - submitted
    observed.outcomes[job.id] = outcome


async def _watch_lag(observed: _Observed, every: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + every
        await asyncio.sleep(every)
        observed.worst_lag = max(observed.worst_lag, loop.time() - due)


async def _watch_zombies(lw: Laneway, observed: _Observed, every: float = 0.05) -> None:
    while True:
        observed.zombies.update(z.job_id for z in lw.snapshot().zombies)
        await asyncio.sleep(every)


async def _stop_sessions(lw: Laneway, stops: list[tuple[float, str]]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for at, session in stops:
        ahead = start + at - loop.time()
        if ahead > 0:
            await asyncio.sleep(ahead)
        await lw.stop(session)


async def _read_log(lw: Laneway, sessions: set[str]) -> list[Event]:
    events: list[Event] = []
    for session in sorted(sessions):
        after = 0
        while batch := await lw.store.read_events(session, after=after, limit=1000):
            events += batch
            after = batch[-1].seq
    return events


def _judge(plan: _Plan, jobs: dict[str, Job], observed: _Observed, log: list[Event]) -> ChaosReport:
    terminals: dict[str, list[Event]] = {}
    retried: set[str] = set()
    for ev in log:
        if ev.job_id is None:
            continue
        if ev.kind in TERMINAL_KINDS:
            terminals.setdefault(ev.job_id, []).append(ev)
        elif ev.kind == "job.retry":
            retried.add(ev.job_id)
    final = {job_id: evs[-1] for job_id, evs in terminals.items()}
    states = Counter(TERMINAL_KINDS[ev.kind] for ev in final.values())
    timeouts = Counter(
        str(ev.data.get("reason")) for ev in final.values() if ev.kind == "job.timed_out"
    )
    lost = [job_id for job_id in jobs if job_id not in terminals]
    duplicates = sum(len(evs) - 1 for evs in terminals.values())
    problems = _problems(jobs, observed, final, lost, duplicates)
    healthy = [j for j in jobs.values() if j.session in plan.healthy]
    latencies = sorted(observed.latency[j.id] for j in healthy if j.id in observed.latency)
    not_ok = sum(1 for j in healthy if _state_of(final.get(j.id)) is not JobState.SUCCEEDED)
    if not_ok:
        problems.append(f"{not_ok} turns of healthy sessions did not succeed")
    return ChaosReport(
        seed=0,
        sessions=0,
        accepted=len(jobs),
        succeeded=states[JobState.SUCCEEDED],
        timed_out_by_reason=dict(timeouts),
        failed=states[JobState.FAILED],
        cancelled=states[JobState.CANCELLED],
        retried=len(retried),
        dead=states[JobState.DEAD],
        lost=len(lost),
        duplicate_terminals=duplicates,
        healthy_latency_p50=_percentile(latencies, 0.50),
        healthy_latency_p99=_percentile(latencies, 0.99),
        worst_loop_lag=observed.worst_lag,
        zombies_seen=len(observed.zombies),
        healthy_not_succeeded=not_ok,
        injected=dict(
            Counter(m.payload["kind"] for m in plan.messages if m.payload["kind"] != "ok")
        ),
        problems=problems,
        ok=not problems,
    )


def _state_of(event: Event | None) -> JobState | None:
    return None if event is None else TERMINAL_KINDS[event.kind]


def _problems(
    jobs: dict[str, Job],
    observed: _Observed,
    final: dict[str, Event],
    lost: list[str],
    duplicates: int,
) -> list[str]:
    problems: list[str] = []
    if lost:
        problems.append(f"{len(lost)} accepted jobs never reached a terminal state")
    if duplicates:
        problems.append(f"{duplicates} extra terminal events")
    strangers = set(final) - set(jobs)
    if strangers:
        problems.append(f"{len(strangers)} terminal events for jobs nobody submitted")
    mismatched = sum(
        1
        for job_id, outcome in observed.outcomes.items()
        if job_id in final and outcome.state is not _state_of(final[job_id])
    )
    if mismatched:
        problems.append(f"{mismatched} outcomes disagree with the event log")
    return problems


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (0.0 when empty)."""
    if not values:
        return 0.0
    return values[max(0, math.ceil(q * len(values)) - 1)]


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    logger = logging.getLogger("laneway")
    null = logging.NullHandler()
    propagate = logger.propagate
    logger.addHandler(null)
    logger.propagate = False
    try:
        yield
    finally:
        logger.propagate = propagate
        logger.removeHandler(null)
