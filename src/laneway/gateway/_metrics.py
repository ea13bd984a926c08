"""Prometheus metrics, in a registry of the app's own (two apps never collide).

Counters follow the committed event log (every job's states, attempt
timeouts by reason, retries); gauges are read from the snapshot at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import Laneway
from .._types import Event

__all__ = ["Metrics"]

_TIMEOUT_REASONS = frozenset({"deadline", "idle", "queue_wait"})


class _SnapshotCollector(Collector):
    def __init__(self, lw: Laneway) -> None:
        self.lw = lw

    def collect(self) -> Iterator[Metric]:
        snap = self.lw.snapshot()
        jobs = GaugeMetricFamily("laneway_jobs", "Jobs queued or running now", labels=["state"])
        jobs.add_metric(["queued"], snap.jobs_queued)
        jobs.add_metric(["running"], snap.jobs_running)
        active = GaugeMetricFamily("laneway_lane_active", "Busy slots per lane", labels=["lane"])
        queued = GaugeMetricFamily(
            "laneway_lane_queued", "Jobs waiting for the lane's slots", labels=["lane"]
        )
        behind = GaugeMetricFamily(
            "laneway_lane_behind_session",
            "Jobs that need the shared lane but wait for their own session's turn",
            labels=["lane"],
        )
        limit = GaugeMetricFamily("laneway_lane_limit", "Slots per lane", labels=["lane"])
        s_active = s_queued = 0
        for lane in snap.lanes:
            if lane.name.startswith("session:"):
                s_active += lane.active
                s_queued += lane.queued
                continue
            active.add_metric([lane.name], lane.active)
            queued.add_metric([lane.name], lane.queued)
            behind.add_metric([lane.name], lane.behind_session)
            limit.add_metric([lane.name], lane.limit)
        # Session lanes are summed: one label per session would be unbounded.
        active.add_metric(["session:*"], s_active)
        queued.add_metric(["session:*"], s_queued)
        zombies = GaugeMetricFamily(
            "laneway_zombies", "Abandoned work still alive", labels=["kind"]
        )
        by_kind = {"task": 0, "thread": 0, "process": 0}
        for z in snap.zombies:
            by_kind[z.kind] = by_kind.get(z.kind, 0) + 1
        for kind, n in by_kind.items():
            zombies.add_metric([kind], n)
        lag = GaugeMetricFamily("laneway_loop_lag_seconds", "Event loop lag right now")
        lag.add_metric([], snap.loop_lag)
        blocks = CounterMetricFamily("laneway_loop_blocks", "Times the event loop was blocked")
        blocks.add_metric([], snap.loop_blocks)
        yield from (jobs, active, queued, behind, limit, zombies, lag, blocks)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.finished = Counter(
            "laneway_jobs_finished", "Jobs that reached a terminal state", ["state"], registry=r
        )
        self.timeouts = Counter(
            "laneway_timeouts", "Attempts or waits that hit a limit", ["reason"], registry=r
        )
        self.retries = Counter("laneway_retries", "Attempts retried", ["reason"], registry=r)
        self.accepted = Counter("laneway_jobs_accepted", "Jobs accepted (queued)", registry=r)
        self.events = Counter("laneway_events", "Events committed", registry=r)
        self.submit = Histogram(
            "laneway_submit_seconds",
            "Time to accept a message (commit included)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )

    def watch(self, lw: Laneway) -> None:
        self.registry.register(_SnapshotCollector(lw))
        lw.add_listener(self.observe)

    def observe(self, event: Event) -> None:
        """Count one committed event (called by the runtime for every session)."""
        self.events.inc()
        kind = event.kind
        if not kind.startswith("job."):
            return
        state = kind[4:]
        data = event.data if isinstance(event.data, dict) else {}
        reason = data.get("reason")
        if state == "queued" or state == "requeued":  # a requeue queues a new run
            self.accepted.inc()
        elif state == "retry":
            self.retries.labels(str(reason)).inc()
            if reason in _TIMEOUT_REASONS:
                self.timeouts.labels(reason).inc()
        elif state != "started":
            self.finished.labels(state).inc()
            if state == "timed_out" and reason in _TIMEOUT_REASONS:
                self.timeouts.labels(reason).inc()
