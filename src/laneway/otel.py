"""OpenTelemetry traces for laneway (``pip install 'laneway[otel]'``).

``instrument(lw)`` traces every job of ``lw``: a ``laneway.job`` span from
``job.queued`` to its terminal event, and under it one ``laneway.attempt`` span
per attempt, with the session, handler, lanes, attempt, reason and state as
attributes and the wait before each attempt as ``laneway.queue_wait_s``. The
attempt's span is the current span inside the handler, so a model call's own
spans (an instrumented HTTP client, your ``tracer.start_as_current_span``)
nest under it::

    from laneway.otel import instrument
    instrument(lw)            # the global tracer provider, or tracer_provider=...

It is built on public hooks only: committed events (``Laneway.add_listener``)
open and close the spans, ``Laneway.add_attempt_hook`` makes the attempt's
span current in the handler. ``configure_from_env()`` sets up the SDK from the
standard ``OTEL_*`` variables; ``laneway serve`` calls it when any is set.
Process-isolated handlers run in another process: their own spans do not nest.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from ._extras import require

require("otel", "laneway.otel")

from opentelemetry import context as otel_context  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.trace import Span, SpanKind, Status, StatusCode  # noqa: E402

from . import Event, Laneway, TurnContext, __version__  # noqa: E402

__all__ = ["configure_from_env", "instrument"]

_TERMINAL = frozenset({"job.succeeded", "job.failed", "job.timed_out", "job.cancelled", "job.dead"})


def _ns(at: float) -> int:
    return int(at * 1e9)


def _data(event: Event) -> dict[str, Any]:
    return event.data if isinstance(event.data, dict) else {}


class _Tracer:
    """The open spans of one Laneway's jobs and attempts, driven by its events."""

    def __init__(self, lw: Laneway, tracer: trace.Tracer) -> None:
        self.lw = lw
        self.tracer = tracer
        self.jobs: dict[str, Span] = {}
        self.attempts: dict[str, Span] = {}
        self.handler_of: dict[str, str] = {}
        self.ready_at: dict[str, float] = {}  # when the job last became ready to run

    def _common(self, event: Event) -> dict[str, Any]:
        handler = self.handler_of.get(event.job_id or "", "")
        spec = self.lw.handlers.get(handler)
        return {
            "laneway.job_id": event.job_id or "",
            "laneway.session": event.session,
            "laneway.handler": handler,
            "laneway.lanes": list(spec.lanes) if spec is not None else [],
        }

    def observe(self, event: Event) -> None:
        job_id = event.job_id
        if job_id is None or not event.kind.startswith("job."):
            return
        if event.kind == "job.queued":
            self._queued(job_id, event)
        elif event.kind == "job.started":
            self._started(job_id, event)
        elif event.kind == "job.retry":
            self._end_attempt(job_id, event, "retry")
            self.ready_at[job_id] = event.at + float(_data(event).get("delay") or 0.0)
        elif event.kind in _TERMINAL:
            self._end_attempt(job_id, event, event.kind[4:])
            self._end_job(job_id, event)

    def _queued(self, job_id: str, event: Event) -> None:
        self.handler_of[job_id] = str(_data(event).get("handler", ""))
        self.jobs[job_id] = self.tracer.start_span(
            "laneway.job",
            kind=SpanKind.CONSUMER,
            start_time=_ns(event.at),
            attributes=self._common(event),
        )
        self.ready_at[job_id] = event.at

    def _started(self, job_id: str, event: Event) -> None:
        job_span = self.jobs.get(job_id)
        if job_span is None:  # queued before this process traced it (a restart)
            job_span = self.tracer.start_span(
                "laneway.job", start_time=_ns(event.at), attributes={"laneway.recovered": True}
            )
            self.jobs[job_id] = job_span
        attempt = int(_data(event).get("attempt", 1))
        attributes = {
            **self._common(event),
            "laneway.attempt": attempt,
            "laneway.queue_wait_s": max(0.0, event.at - self.ready_at.get(job_id, event.at)),
        }
        self.attempts[job_id] = self.tracer.start_span(
            "laneway.attempt",
            context=trace.set_span_in_context(job_span),
            start_time=_ns(event.at),
            attributes=attributes,
        )

    def _end_attempt(self, job_id: str, event: Event, state: str) -> None:
        span = self.attempts.pop(job_id, None)
        if span is None:
            return
        data = _data(event)
        _finish(span, state, data.get("reason"), data.get("error"), event.at)

    def _end_job(self, job_id: str, event: Event) -> None:
        self.ready_at.pop(job_id, None)
        self.handler_of.pop(job_id, None)
        span = self.jobs.pop(job_id, None)
        if span is None:
            return
        data = _data(event)
        span.set_attribute("laneway.attempts", int(data.get("attempts") or 0))
        _finish(span, event.kind[4:], data.get("reason"), data.get("error"), event.at)

    @contextlib.contextmanager
    def around(self, ctx: TurnContext) -> Iterator[None]:
        span = self.attempts.get(ctx.job_id)
        if span is None:
            yield
            return
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            otel_context.detach(token)


def _finish(span: Span, state: str, reason: Any, error: Any, at: float) -> None:
    span.set_attribute("laneway.state", state)
    if reason:
        span.set_attribute("laneway.reason", str(reason))
    if state != "succeeded":
        span.set_status(Status(StatusCode.ERROR, str(error or reason or state)))
    span.end(end_time=_ns(at))


def instrument(
    lw: Laneway, *, tracer_provider: trace.TracerProvider | None = None
) -> Callable[[], None]:
    """Trace ``lw``'s jobs and attempts; returns a function that stops it."""
    tracing = _Tracer(lw, trace.get_tracer("laneway", __version__, tracer_provider=tracer_provider))
    unlisten = lw.add_listener(tracing.observe)
    unhook = lw.add_attempt_hook(tracing.around)

    def uninstrument() -> None:
        unlisten()
        unhook()

    return uninstrument


def configure_from_env() -> None:
    """Install an SDK tracer provider configured by the standard ``OTEL_*`` variables
    (``OTEL_TRACES_EXPORTER=otlp|console|none``, ``OTEL_EXPORTER_OTLP_*`` for OTLP over
    HTTP, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), unless a provider was
    already installed (say by ``opentelemetry-instrument``)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "laneway"}))
    provider = TracerProvider(resource=resource)
    for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        exporter = _exporter(name.strip().lower())
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def _exporter(name: str) -> Any:
    if name in ("", "none"):
        return None
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: laneway supports otlp, console and none")
