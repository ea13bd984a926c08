"""Seeing the lanes: the ``Snapshot`` and the ``lane.wait_exceeded`` monitor.

Both read the dispatcher's state and change nothing. The monitor runs on the
deadline heap every ``wait_warn / 4`` seconds (at least 1 s), looks at the
oldest queued jobs only, and logs each blocked lane at most once per
``max(30 s, wait_warn)``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping

from .._types import LaneStats, RunningJob, Snapshot, Zombie
from ._attempt import Attempt, JobRecord
from ._slots import SlotSource

__all__ = ["WaitMonitor", "build_snapshot"]

log = logging.getLogger("laneway.runtime")


def build_snapshot(
    now: float,
    slots: SlotSource[JobRecord],
    running: Iterable[Attempt],
    session_limit: int,
    zombies: list[Zombie],
    loop_health: tuple[float, int],
    node: str = "",
    elsewhere: Iterable[RunningJob] = (),
) -> Snapshot:
    """``node`` names this node in ``running``; ``elsewhere``: other nodes' turns."""
    oldest_active: dict[str, float] = {}
    count = 0
    turns = list(elsewhere)
    for att in running:
        count += 1
        age = now - att.started_at
        job = att.job
        turns.append(RunningJob(job.id, job.session, job.spec.name, att.number, node, age))
        for name in (f"session:{att.job.session}", *att.job.lanes):
            if age > oldest_active.get(name, -1.0):
                oldest_active[name] = age
    lanes: list[LaneStats] = []
    for key, active, queued, head in slots.sessions():
        name = f"session:{key}"
        q_age = None if head is None else now - head.enqueued_at
        lanes.append(LaneStats(name, session_limit, active, queued, oldest_active.get(name), q_age))
    # A shared lane's queue is the heads that wait only for its slots; jobs behind
    # their own session's turn are counted apart, or the lane would look starved.
    waiting: dict[str, int] = {}
    oldest_queued: dict[str, float] = {}
    for head in slots.waiting_heads():
        q_age = now - head.enqueued_at
        for lane in head.lanes:
            waiting[lane] = waiting.get(lane, 0) + 1
            if q_age > oldest_queued.get(lane, -1.0):
                oldest_queued[lane] = q_age
    shared = [
        LaneStats(
            name,
            cap,
            active,
            waiting.get(name, 0),
            oldest_active.get(name),
            oldest_queued.get(name),
            behind_session=queued - waiting.get(name, 0),
        )
        for name, cap, active, queued in slots.shared_counts()
        # laneway's own lanes (crash suspects) are listed only while in use.
        if active or queued or not name.startswith("laneway:")
    ]
    return Snapshot(
        lanes=shared + lanes,
        jobs_queued=slots.total_queued,
        jobs_running=count,
        zombies=zombies,
        loop_lag=loop_health[0],
        loop_blocks=loop_health[1],
        node=node,
        running=sorted(turns, key=lambda turn: -turn.age_s),
    )


class WaitMonitor:
    """Logs ``lane.wait_exceeded`` for lanes whose head waited past ``wait_warn``."""

    def __init__(self, wait_warn: float, session_limit: int) -> None:
        self.wait_warn = wait_warn
        self.session_limit = session_limit
        self.interval = max(1.0, wait_warn / 4)
        self._warned: dict[str, float] = {}

    def scan(
        self,
        now: float,
        queued: Iterable[JobRecord],
        slots: SlotSource[JobRecord],
        running: Mapping[str, Attempt],
    ) -> None:
        seen: set[str] = set()
        for job in itertools.islice(queued, 256):
            if now - job.enqueued_at < self.wait_warn:
                break
            lane = slots.blocking_lane(job)
            if lane is None or lane in seen:
                continue
            seen.add(lane)
            if now - self._warned.get(lane, -1e18) < max(30.0, self.wait_warn):
                continue
            self._warned[lane] = now
            self._log(lane, job, now, slots, running)
        if len(self._warned) > 10_000:
            self._warned = {k: v for k, v in self._warned.items() if now - v < self.wait_warn}

    def _log(
        self,
        lane: str,
        job: JobRecord,
        now: float,
        slots: SlotSource[JobRecord],
        running: Mapping[str, Attempt],
    ) -> None:
        if lane.startswith("session:"):
            key = lane[len("session:") :]
            active, limit, queued = slots.active_in(key), self.session_limit, slots.queued_in(key)
            starts = [a.started_at for a in running.values() if a.job.session == key]
        else:
            counts = {name: (cap, act, q) for name, cap, act, q in slots.shared_counts()}
            limit, active, queued = counts[lane]
            starts = [a.started_at for a in running.values() if lane in a.job.lanes]
        oldest = round(now - min(starts), 3) if starts else None
        log.warning(
            "lane.wait_exceeded: %s active=%d/%d queued=%d oldest_active_s=%s",
            lane,
            active,
            limit,
            queued,
            oldest,
            extra={
                "lane": lane,
                "active": active,
                "limit": limit,
                "queued": queued,
                "oldest_active_s": oldest,
                "waited_s": round(now - job.enqueued_at, 3),
                "job_id": job.id,
            },
        )
