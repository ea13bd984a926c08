"""The openai model against a real HTTP fake endpoint, through the real SDK.

Real time (a server thread and sockets), so the limits are short: idle 0.5 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from laneway import ConfigError, Event, JobState, Laneway, Limits, Outcome, Retry
from laneway.handlers import register_openai
from laneway.testing import FakeOpenAI

from ..conftest import MakeLaneway

IDLE = 0.5


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def _laneway(
    make_laneway: MakeLaneway, fake: FakeOpenAI, *, max_attempts: int = 3, **kwargs: Any
) -> Laneway:
    lw = make_laneway(
        limits=Limits(deadline=10, idle=IDLE, cancel_grace=0.3),
        retry=Retry(max_attempts=max_attempts, backoff=0.01, max_backoff=0.02),
    )
    register_openai(lw, base_url=fake.base_url, model="fake-model", api_key="sk-test", **kwargs)
    await lw.start()
    return lw


async def _turn(lw: Laneway, text: str, session: str = "s") -> tuple[Outcome, list[Event]]:
    job = await lw.submit(session, "openai", {"text": text})
    async with asyncio.timeout(20):
        outcome = await job.wait()
    events = [e for e in await lw.store.read_events(session, limit=10_000) if e.job_id == job.id]
    return outcome, events


def _kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


async def test_a_streamed_reply_becomes_deltas_then_a_message(
    make_laneway: MakeLaneway, fake: FakeOpenAI
) -> None:
    lw = await _laneway(make_laneway, fake)
    fake.reply("Hello from the fake model", chunk_delay=0.01)
    outcome, events = await _turn(lw, "hi")
    assert outcome.state is JobState.SUCCEEDED
    assert outcome.result == "Hello from the fake model"
    assert _kinds(events) == [
        "job.queued",
        "job.started",
        *["delta"] * 5,
        "message",
        "job.succeeded",
    ]
    assert [e.data["text"] for e in events if e.kind == "delta"] == [
        "Hello ",
        "from ",
        "the ",
        "fake ",
        "model",
    ]
    assert events[-2].data == {"role": "assistant", "text": "Hello from the fake model"}
    (request,) = fake.requests
    assert request.body["stream"] is True
    assert request.body["model"] == "fake-model"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.messages == [{"role": "user", "content": "hi"}]


async def test_the_transcript_is_rebuilt_from_the_event_log(
    make_laneway: MakeLaneway, fake: FakeOpenAI
) -> None:
    lw = await _laneway(make_laneway, fake, max_attempts=1, system_prompt="Be brief.")
    long_answer = ["word "] * 700  # more deltas than one page of history
    fake.reply("", chunks=long_answer)
    fake.error(status=400, message="rejected")  # the second turn fails: no reply
    fake.reply("third answer")
    assert (await _turn(lw, "first question"))[0].state is JobState.SUCCEEDED
    assert (await _turn(lw, "second question"))[0].reason == "BadRequestError"
    assert (await _turn(lw, "third question"))[0].state is JobState.SUCCEEDED
    other, _ = await _turn(lw, "unrelated", session="other")  # another session's turn
    assert other.result == "echo: unrelated"
    fake.reply("fourth answer")
    assert (await _turn(lw, "fourth question"))[0].state is JobState.SUCCEEDED
    sent = [r.messages for r in fake.requests]
    assert sent[0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
    ]
    assert sent[-1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "word " * 700},
        {"role": "user", "content": "third question"},
        {"role": "assistant", "content": "third answer"},
        {"role": "user", "content": "fourth question"},
    ]


async def test_max_history_keeps_the_latest_messages(
    make_laneway: MakeLaneway, fake: FakeOpenAI
) -> None:
    lw = await _laneway(make_laneway, fake, max_history=2)
    for text in ("one", "two", "three"):
        await _turn(lw, text)
    assert fake.requests[-1].messages == [
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "echo: two"},
        {"role": "user", "content": "three"},
    ]


async def test_a_server_error_before_output_is_retried(
    make_laneway: MakeLaneway, fake: FakeOpenAI
) -> None:
    lw = await _laneway(make_laneway, fake)
    fake.error(status=500, message="upstream exploded")
    fake.reply("recovered")
    outcome, events = await _turn(lw, "hi")
    assert outcome.state is JobState.SUCCEEDED
    assert outcome.result == "recovered"
    assert outcome.attempts == 2
    retry = next(e for e in events if e.kind == "job.retry")
    assert retry.data["reason"] == "InternalServerError"
    assert len(fake.requests) == 2


async def test_errors_exhaust_retries_and_fail_with_the_sdk_error_type(
    make_laneway: MakeLaneway, fake: FakeOpenAI
) -> None:
    lw = await _laneway(make_laneway, fake, max_attempts=2)
    fake.error(status=429, message="slow down")
    fake.error(status=429, message="slow down")
    outcome, _ = await _turn(lw, "hi")
    assert outcome.state is JobState.FAILED
    assert outcome.reason == "RateLimitError"
    assert outcome.attempts == 2


async def test_a_mid_stream_hang_times_out_idle_and_is_not_retried(
    make_laneway: MakeLaneway, fake: FakeOpenAI
) -> None:
    lw = await _laneway(make_laneway, fake)
    fake.hang_after(2, "partial answer that stops")
    fake.reply("must not be requested")
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome, events = await _turn(lw, "hi")
    assert outcome.state is JobState.TIMED_OUT
    assert outcome.reason == "idle"
    assert outcome.attempts == 1  # it had streamed: a retry would re-stream the reply
    assert loop.time() - started < IDLE + 3
    assert [e.data["text"] for e in events if e.kind == "delta"] == ["partial ", "answer "]
    assert "message" not in _kinds(events)
    await asyncio.sleep(0.2)
    assert len(fake.requests) == 1
    # The session is free again and the next turn is answered.
    nxt, _ = await _turn(lw, "again?")
    assert nxt.result == "must not be requested"


async def test_a_hang_before_any_chunk_is_retried(
    make_laneway: MakeLaneway, fake: FakeOpenAI
) -> None:
    lw = await _laneway(make_laneway, fake)
    fake.hang()
    fake.reply("second time lucky")
    outcome, events = await _turn(lw, "hi")
    assert outcome.state is JobState.SUCCEEDED
    assert outcome.result == "second time lucky"
    assert outcome.attempts == 2
    retry = next(e for e in events if e.kind == "job.retry")
    assert retry.data["reason"] == "idle"


async def test_a_model_needs_a_key_unless_it_is_a_custom_endpoint(
    make_laneway: MakeLaneway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lw = make_laneway()
    with pytest.raises(ConfigError, match="API key"):
        register_openai(lw, base_url=None, model="gpt-4o-mini", api_key=None)
    with pytest.raises(ConfigError, match="max_history"):
        register_openai(lw, base_url=None, model="m", api_key="k", name="x", max_history=-1)
    with pytest.raises(ConfigError, match="lane"):
        register_openai(lw, base_url=None, model="m", api_key="k", lanes=("nope",))
    register_openai(lw, base_url="http://127.0.0.1:9/v1", model="local", api_key=None)
    assert list(lw.handlers) == ["openai"]
