"""The demo model: every command behaves as its docstring and `/help` promise."""

from __future__ import annotations

import asyncio
import logging

import pytest

from laneway import Event, JobState, Laneway, Limits, Outcome, Retry
from laneway.handlers import register_demo
from laneway.handlers.demo import STALL_WORDS

from ..conftest import MakeLaneway


async def _run(lw: Laneway, text: str, session: str = "s") -> tuple[Outcome, list[Event]]:
    job = await lw.submit(session, "demo", {"text": text})
    outcome = await job.wait()
    events = [e for e in await lw.store.read_events(session, limit=10_000) if e.job_id == job.id]
    return outcome, events


def _kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def _streamed(events: list[Event]) -> str:
    return "".join(e.data["text"] for e in events if e.kind == "delta")


@pytest.mark.looptime
async def test_ordinary_text_streams_word_by_word_then_one_message(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway()
    register_demo(lw)
    await lw.start()
    job = await lw.submit("alice", "demo", {"text": "hello there"})
    reply = await job.result()
    events = await lw.store.read_events("alice")
    kinds = _kinds(events)
    assert kinds[:2] == ["job.queued", "job.started"]
    assert kinds[-2:] == ["message", "job.succeeded"]
    deltas = [e for e in events if e.kind == "delta"]
    assert len(deltas) == len(reply.split()) > 2  # one delta per word
    assert all(e.data["text"].endswith(" ") for e in deltas)
    assert "hello there" in reply
    assert "/help" in reply
    message = next(e for e in events if e.kind == "message")
    assert message.data == {"role": "assistant", "text": reply}
    assert _streamed(events).strip() == reply


@pytest.mark.looptime
async def test_help_lists_every_command(make_laneway: MakeLaneway) -> None:
    lw = make_laneway()
    register_demo(lw)
    await lw.start()
    reply = await (await lw.submit("s", "demo", {"text": "/help"})).result()
    for command in ("/hang", "/stall", "/block N", "/crash", "/slow N", "/help"):
        assert command in reply


@pytest.mark.looptime
async def test_slow_streams_for_its_whole_length_without_hitting_idle(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway(limits=Limits(deadline=900, idle=60))
    register_demo(lw)
    await lw.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome, events = await _run(lw, "/slow 600")
    assert outcome.state is JobState.SUCCEEDED
    assert loop.time() - started == pytest.approx(600, abs=5)
    assert _kinds(events).count("delta") == 600 / 0.5 + 1  # a word every 0.5 s, then "done."


@pytest.mark.looptime
async def test_stall_times_out_idle_and_is_not_retried(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(limits=Limits(deadline=900, idle=5), retry=Retry(backoff=0))
    register_demo(lw)
    await lw.start()
    outcome, events = await _run(lw, "/stall")
    assert outcome.state is JobState.TIMED_OUT
    assert outcome.reason == "idle"
    assert outcome.attempts == 1  # it had streamed: no retry
    assert _kinds(events).count("delta") == STALL_WORDS
    assert "message" not in _kinds(events)


@pytest.mark.looptime
async def test_hang_is_ended_by_the_deadline(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(limits=Limits(deadline=30, idle=None), retry=Retry(max_attempts=2, backoff=0))
    register_demo(lw)
    await lw.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome, events = await _run(lw, "/hang")
    assert outcome.state is JobState.TIMED_OUT
    assert outcome.reason == "deadline"
    assert outcome.attempts == 2  # silent, so retried
    assert loop.time() - started == pytest.approx(60, abs=2)
    assert _kinds(events).count("job.retry") == 1
    # The session is free again: the next message is answered.
    nxt, _ = await _run(lw, "still there?")
    assert nxt.state is JobState.SUCCEEDED


@pytest.mark.looptime
async def test_crash_fails_with_the_error_type_as_reason(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(retry=Retry(max_attempts=2, backoff=0))
    register_demo(lw)
    await lw.start()
    outcome, events = await _run(lw, "/crash")
    assert outcome.state is JobState.FAILED
    assert outcome.reason == "DemoCrash"
    assert "on purpose" in (outcome.error or "")
    assert outcome.attempts == 2
    assert _kinds(events)[-1] == "job.failed"


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/block", "/block needs a number of seconds"),
        ("/block soon", "/block needs a number of seconds"),
        ("/block 0", "/block needs a number of seconds"),
        ("/block 61", "0 < N <= 60"),
        ("/slow -1", "/slow needs a number of seconds"),
        ("/slow nan", "/slow needs a number of seconds"),
        ("/slow 99999", "0 < N <= 3600"),
        ("/nope", "Unknown command /nope"),
    ],
)
async def test_a_malformed_command_is_answered_not_failed(
    make_laneway: MakeLaneway, text: str, expected: str
) -> None:
    lw = make_laneway()
    register_demo(lw)
    await lw.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome, _ = await _run(lw, text)
    assert outcome.state is JobState.SUCCEEDED
    assert expected in outcome.result
    assert loop.time() - started < 10  # nothing slept or blocked


@pytest.mark.looptime
async def test_a_payload_without_text_fails_clearly(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(retry=Retry(max_attempts=1))
    register_demo(lw)
    await lw.start()
    job = await lw.submit("s", "demo", {"prompt": "hi"})
    outcome = await job.wait()
    assert outcome.state is JobState.FAILED
    assert outcome.reason == "InvalidPayload"


@pytest.mark.looptime
async def test_registers_under_the_given_name_only_when_asked(make_laneway: MakeLaneway) -> None:
    lw = make_laneway()
    assert lw.handlers == {}  # importing the handlers registered nothing
    register_demo(lw, name="toy")
    assert list(lw.handlers) == ["toy"]
    await lw.start()
    assert "hi" in await (await lw.submit("s", "toy", {"text": "hi"})).result()


async def test_block_blocks_the_loop_and_the_watchdog_reports_it(
    make_laneway: MakeLaneway, caplog: pytest.LogCaptureFixture
) -> None:
    """Real time: the watchdog is a thread watching the real clock."""
    lw = make_laneway(watchdog_threshold=0.2)
    register_demo(lw)
    await lw.start()
    with caplog.at_level(logging.WARNING, logger="laneway.watchdog"):
        outcome, _ = await _run(lw, "/block 0.5")
    assert outcome.state is JobState.SUCCEEDED
    assert "blocked my thread for 0.5 seconds" in outcome.result
    assert lw.snapshot().loop_blocks >= 1
    blocked = [r for r in caplog.records if r.getMessage().startswith("loop.blocked")]
    assert blocked
    assert "demo.py" in blocked[0].getMessage()  # the blocking stack points at the command
