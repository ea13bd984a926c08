"""The ``cli`` model on real subprocesses: the fake agent CLI and a recorded
Claude Code transcript. Real time, short limits."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from laneway import Event, JobState, Laneway, Limits, Outcome, Retry
from laneway.handlers import register_cli
from laneway.handlers.cli import MESSAGE_MAX, TEXT_LINE_MAX
from laneway.testing import fake_agent_cli

from ..conftest import MakeLaneway

pytestmark = pytest.mark.slow

TRANSCRIPT = Path(__file__).with_name("data") / "claude_code_stream.jsonl"
SESSION_ID = "3f9c2a7e-5b1d-4e8a-9c0f-6d2b7a1e4c58"
RESUME = "--resume {session_id}"


def _laneway(make_laneway: MakeLaneway, *, attempts: int = 3, idle: float = 5.0) -> Laneway:
    return make_laneway(
        limits=Limits(deadline=30, idle=idle, cancel_grace=0.6),
        retry=Retry(max_attempts=attempts, backoff=0.05, max_backoff=0.1),
    )


async def _turn(lw: Laneway, text: str, session: str = "s", handler: str = "cli") -> Outcome:
    job = await lw.submit(session, handler, {"text": text})
    async with asyncio.timeout(20):
        return await job.wait()


async def _events(lw: Laneway, job_id: str, session: str = "s") -> list[Event]:
    return [e for e in await lw.store.read_events(session, limit=10_000) if e.job_id == job_id]


def _cat(path: Path) -> list[str]:
    """A 'CLI' that prints a file; the message text lands in $1, unused."""
    return ["sh", "-c", 'cat "$0"', str(path)]


async def test_text_lines_are_deltas_and_the_joined_text_the_message(
    make_laneway: MakeLaneway,
) -> None:
    lw = _laneway(make_laneway)
    register_cli(lw, command=fake_agent_cli())
    await lw.start()
    outcome = await _turn(lw, "three short words")
    assert (outcome.state, outcome.result) == (JobState.SUCCEEDED, "three\nshort\nwords")
    events = await _events(lw, outcome.job_id)
    assert [(e.kind, e.data) for e in events[2:-1]] == [
        ("delta", {"text": "three\n"}),
        ("delta", {"text": "short\n"}),
        ("delta", {"text": "words\n"}),
        ("message", {"role": "assistant", "text": "three\nshort\nwords"}),
    ]


async def test_a_cli_streaming_longer_than_idle_is_healthy(make_laneway: MakeLaneway) -> None:
    lw = _laneway(make_laneway, idle=0.5)
    register_cli(lw, command=fake_agent_cli())
    await lw.start()
    outcome = await _turn(lw, "/stream 10 0.2")  # 2 s of output, never 0.5 s silent
    assert outcome.state is JobState.SUCCEEDED
    assert outcome.result == "\n".join(f"line {i}" for i in range(10))


async def test_a_line_longer_than_the_bound_arrives_in_pieces(make_laneway: MakeLaneway) -> None:
    lw = _laneway(make_laneway)
    register_cli(lw, command=fake_agent_cli())
    await lw.start()
    outcome = await _turn(lw, f"/long {3 * TEXT_LINE_MAX + 7}")
    assert outcome.state is JobState.SUCCEEDED
    deltas = [e.data["text"] for e in await _events(lw, outcome.job_id) if e.kind == "delta"]
    assert [len(d) for d in deltas] == [TEXT_LINE_MAX + 1] * 3 + [8, 4]
    assert deltas[-1] == "end\n"


async def test_a_non_zero_exit_fails_with_the_stderr_tail_and_is_not_replayed(
    make_laneway: MakeLaneway,
) -> None:
    lw = _laneway(make_laneway)
    register_cli(lw, command=fake_agent_cli())
    await lw.start()
    outcome = await _turn(lw, "/fail 3")
    assert (outcome.state, outcome.reason, outcome.attempts) == (
        JobState.FAILED,
        "ProcessFailed",
        1,
    )
    assert outcome.error is not None
    assert outcome.error.endswith("exited with status 3: error: the model refused (code 3)")
    kinds = [e.kind for e in await _events(lw, outcome.job_id)]
    assert kinds == ["job.queued", "job.started", "delta", "job.failed"]


async def test_a_cli_that_dies_before_any_output_is_retried_with_backoff(
    make_laneway: MakeLaneway, tmp_path: Path
) -> None:
    lw = _laneway(make_laneway)
    register_cli(lw, command=fake_agent_cli(state=tmp_path))
    await lw.start()
    crashed = await _turn(lw, "/crash")
    assert (crashed.state, crashed.reason, crashed.attempts) == (
        JobState.FAILED,
        "ProcessFailed",
        3,
    )
    retries = [e.data for e in await _events(lw, crashed.job_id) if e.kind == "job.retry"]
    assert len(retries) == 2
    assert all(
        r["delay"] > 0 and "RuntimeError: the fake agent crashed" in r["error"] for r in retries
    )
    once = await _turn(lw, "/crash-once")
    assert (once.state, once.result, once.attempts) == (JobState.SUCCEEDED, "recovered", 2)


async def test_a_recorded_claude_code_transcript_becomes_deltas_tools_and_a_message(
    make_laneway: MakeLaneway,
) -> None:
    lw = _laneway(make_laneway)
    register_cli(lw, command=_cat(TRANSCRIPT), format="stream-json")
    await lw.start()
    outcome = await _turn(lw, "fix the failing cart test")
    final = "Fixed: `total` now discounts each item, and both cart tests pass."
    assert (outcome.state, outcome.result) == (JobState.SUCCEEDED, final)
    got = [(e.kind, e.data) for e in (await _events(lw, outcome.job_id))[2:-1]]
    assert got == [
        ("delta", {"text": "I'll run the test suite to see what fails."}),
        ("tool", _use("toolu_01Xq7", "Bash", command="python -m pytest -q tests/test_cart.py",
                      description="Run the cart tests")),
        ("tool", _result("toolu_01Xq7", "F.\n=== FAILURES ===\ntest_total_with_discount: "
                         "assert 90.0 == 81.0\n1 failed, 1 passed in 0.04s", is_error=True)),
        ("tool", _use("toolu_01Yr2", "Read", file_path="/home/dev/shop/cart.py")),
        ("tool", _result("toolu_01Yr2", "     1\tdef total(items, discount=0.0):\n"
                         "     2\t    return sum(items) * (1 - discount)")),
        ("delta", {"text": "\n\nThe discount is applied once; the test expects it per item. "
                   "Fixing `total`."}),
        ("tool", _use("toolu_01Zs3", "Edit", file_path="/home/dev/shop/cart.py",
                      old_string="sum(items) * (1 - discount)",
                      new_string="sum(i * (1 - discount) for i in items)")),
        ("tool", _result("toolu_01Zs3", "The file /home/dev/shop/cart.py has been updated.")),
        ("tool", _use("toolu_01Wt4", "Bash", command="python -m pytest -q tests/test_cart.py",
                      description="Run the cart tests again")),
        ("tool", _result("toolu_01Wt4", "..\n2 passed in 0.03s")),
        ("delta", {"text": "\n\n" + final}),
        ("message", {"role": "assistant", "text": final, "session_id": SESSION_ID}),
    ]  # fmt: skip


def _use(tool_id: str, name: str, **tool_input: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}


def _result(tool_id: str, content: str, *, is_error: bool = False) -> dict[str, Any]:
    return {"type": "tool_result", "id": tool_id, "content": content, "is_error": is_error}


def _partials(mid: str, *pieces: str) -> list[dict[str, Any]]:
    """The stream_event lines of one message whose text comes in ``pieces``."""
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": mid, "role": "assistant", "content": []}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
            for p in pieces
        ),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_stop"},
    ]
    return [{"type": "stream_event", "event": e, "session_id": SESSION_ID} for e in events]


async def test_partial_messages_stream_text_as_it_comes_without_repeating_it(
    make_laneway: MakeLaneway, tmp_path: Path
) -> None:
    """``--include-partial-messages``: text parts first, then the whole message."""
    lines = TRANSCRIPT.read_text().splitlines()
    init, first, tool_use, tool_result, result = (json.loads(lines[i]) for i in (0, 2, 3, 4, -1))
    last = json.loads(lines[-2])
    first["message"]["id"], last["message"]["id"] = "msg_p1", "msg_p2"
    tool_use["message"]["id"] = "msg_p1"
    recorded = [
        init,
        *_partials("msg_p1", "I'll run", " the test suite", " to see what fails."),
        first,
        tool_use,
        tool_result,
        *_partials(
            "msg_p2", "Fixed: `total` now discounts each item,", " and both cart tests pass."
        ),
        last,
        result,
    ]
    path = tmp_path / "partial.jsonl"
    path.write_text("".join(json.dumps(obj) + "\n" for obj in recorded))
    lw = _laneway(make_laneway)
    register_cli(lw, command=_cat(path), format="stream-json")
    await lw.start()
    outcome = await _turn(lw, "go")
    assert outcome.state is JobState.SUCCEEDED
    got = [
        (e.kind, e.data.get("text", e.data.get("type"))) for e in await _events(lw, outcome.job_id)
    ]
    assert got[2:-1] == [
        ("delta", "I'll run"),
        ("delta", " the test suite"),
        ("delta", " to see what fails."),
        ("tool", "tool_use"),
        ("tool", "tool_result"),
        ("delta", "\n\nFixed: `total` now discounts each item,"),
        ("delta", " and both cart tests pass."),
        ("message", outcome.result),
    ]


async def test_lines_that_are_not_json_are_deltas_logged_once(
    make_laneway: MakeLaneway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    noisy = tmp_path / "noisy.jsonl"
    lines = TRANSCRIPT.read_text().splitlines(keepends=True)
    noisy.write_text("npm WARN deprecated x@1\n" + "".join(lines[:3]) + "{broken\n" + lines[-1])
    lw = _laneway(make_laneway)
    register_cli(lw, command=_cat(noisy), format="stream-json")
    await lw.start()
    with caplog.at_level(logging.WARNING, logger="laneway.handlers.cli"):
        outcome = await _turn(lw, "go")
    assert outcome.state is JobState.SUCCEEDED
    deltas = [e.data["text"] for e in await _events(lw, outcome.job_id) if e.kind == "delta"]
    assert deltas == [
        "npm WARN deprecated x@1\n",
        "I'll run the test suite to see what fails.",
        "{broken\n",
    ]
    assert [r.message for r in caplog.records] == ["cli.not_json: npm WARN deprecated x@1"]


async def test_an_error_result_fails_the_turn(make_laneway: MakeLaneway, tmp_path: Path) -> None:
    failing = tmp_path / "error.jsonl"
    lines = TRANSCRIPT.read_text().splitlines(keepends=True)
    error = '{"type": "result", "subtype": "error_max_turns", "is_error": true, "num_turns": 9}\n'
    failing.write_text(lines[0] + lines[2] + error)
    lw = _laneway(make_laneway)
    register_cli(lw, command=_cat(failing), format="stream-json")
    await lw.start()
    outcome = await _turn(lw, "go")
    assert (outcome.state, outcome.reason, outcome.attempts) == (
        JobState.FAILED,
        "AgentCliError",
        1,
    )


async def test_the_cli_session_is_resumed_turn_after_turn(
    make_laneway: MakeLaneway, tmp_path: Path
) -> None:
    lw = _laneway(make_laneway)
    register_cli(
        lw, command=fake_agent_cli("stream-json", state=tmp_path), format="stream-json",
        resume_arg=RESUME,
    )  # fmt: skip
    await lw.start()
    first = await _turn(lw, "hello", session="alice")
    second = await _turn(lw, "and again", session="alice")
    other = await _turn(lw, "hi", session="bob")
    assert [first.result, second.result, other.result] == [
        "turn 1: hello",
        "turn 2: and again",  # the fake counts turns per CLI session: it was resumed
        "turn 1: hi",
    ]
    ids = [await _session_id(lw, o.job_id, s) for o, s in [(first, "alice"), (second, "alice"),
                                                            (other, "bob")]]  # fmt: skip
    assert ids[0] == ids[1] != ids[2]


async def _session_id(lw: Laneway, job_id: str, session: str) -> Any:
    (message,) = [e for e in await _events(lw, job_id, session) if e.kind == "message"]
    return message.data["session_id"]


async def test_the_reply_kept_is_bounded(make_laneway: MakeLaneway) -> None:
    lw = _laneway(make_laneway)
    wide = "head -c 15000 /dev/zero | tr '\\0' x; echo"
    register_cli(
        lw, command=["sh", "-c", f"for i in $(seq {MESSAGE_MAX // 10_000}); do {wide}; done"]
    )
    await lw.start()
    outcome = await _turn(lw, "go")
    assert outcome.state is JobState.SUCCEEDED
    assert len(outcome.result) == MESSAGE_MAX
    (message,) = [e for e in await _events(lw, outcome.job_id) if e.kind == "message"]
    assert message.data["truncated"] is True
