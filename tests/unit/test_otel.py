"""OpenTelemetry: a span per job from queued to terminal and one per attempt
under it, with the attempt's span current inside the handler, recorded by the
SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from laneway import Limits, Retry, TurnContext
from laneway.otel import instrument

from ..conftest import MakeLaneway

pytestmark = pytest.mark.looptime


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def named(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return sorted((s for s in finished if s.name == name), key=lambda s: s.start_time or 0)


async def test_job_and_attempt_spans_nest_and_a_model_call_nests_under_the_attempt(
    make_laneway: MakeLaneway, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    model = provider.get_tracer("model-sdk")
    lw = make_laneway(lanes={"llm": 2}, retry=Retry(max_attempts=2, backoff=0.01))
    calls = 0

    @lw.handler("chat", lanes=("llm",))
    async def chat(ctx: TurnContext, payload: Any) -> str:
        nonlocal calls
        calls += 1
        with model.start_as_current_span("chat.completions"):
            if calls == 1:
                raise ConnectionError("the model hung up")
        return "hi"

    instrument(lw, tracer_provider=provider)
    await lw.start()
    job = await lw.submit("alice", "chat", {"text": "hello"})
    assert await job.result() == "hi"

    finished = exporter.get_finished_spans()
    (job_span,) = named(finished, "laneway.job")
    first, second = named(finished, "laneway.attempt")
    model_calls = named(finished, "chat.completions")
    assert job_span.attributes is not None
    assert dict(job_span.attributes) == {
        "laneway.job_id": job.id,
        "laneway.session": "alice",
        "laneway.handler": "chat",
        "laneway.lanes": ("llm",),
        "laneway.attempts": 2,
        "laneway.state": "succeeded",
    }
    for attempt, n in ((first, 1), (second, 2)):
        assert attempt.parent is not None
        assert attempt.parent.span_id == job_span.context.span_id
        assert attempt.attributes is not None
        assert attempt.attributes["laneway.attempt"] == n
        assert attempt.attributes["laneway.session"] == "alice"
        wait = attempt.attributes["laneway.queue_wait_s"]
        assert isinstance(wait, float)
        assert wait >= 0
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["laneway.state"] == "retry"
    assert first.attributes["laneway.reason"] == "ConnectionError"
    assert first.status.status_code is StatusCode.ERROR
    assert second.attributes["laneway.state"] == "succeeded"
    assert [c.parent.span_id for c in model_calls if c.parent] == [
        first.context.span_id,
        second.context.span_id,
    ]
    assert job_span.start_time is not None
    assert job_span.end_time is not None
    assert first.start_time is not None
    assert second.end_time is not None
    assert job_span.start_time <= first.start_time
    assert second.end_time <= job_span.end_time


async def test_a_timed_out_job_ends_both_spans_with_the_reason(
    make_laneway: MakeLaneway, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    lw = make_laneway(limits=Limits(idle=0.05, cancel_grace=0.05))

    @lw.handler("hang")
    async def hang(ctx: TurnContext, payload: Any) -> None:
        await ctx.emit("delta", {"text": "partial"})  # output: not retried
        from laneway.testing import hang as forever

        await forever()

    instrument(lw, tracer_provider=provider)
    await lw.start()
    job = await lw.submit("bob", "hang", {})
    outcome = await job.wait()
    assert outcome.reason == "idle"
    finished = exporter.get_finished_spans()
    (job_span,) = named(finished, "laneway.job")
    (attempt,) = named(finished, "laneway.attempt")
    for span in (job_span, attempt):
        assert span.attributes is not None
        assert span.attributes["laneway.state"] == "timed_out"
        assert span.attributes["laneway.reason"] == "idle"
        assert span.status.status_code is StatusCode.ERROR
