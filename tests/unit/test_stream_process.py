"""``ctx.stream_process``: stdout lines as they come, each one progress, the
child's process group killed whenever the iteration or the attempt ends.

Real children in real time (a pipe cannot be fast-forwarded): limits are a
fraction of a second and the timing checks are generous.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from laneway import JobState, Laneway, Limits, ProcessFailed, Retry, TurnContext
from laneway._core._proc_stream import MAX_LINE, STDERR_TAIL
from laneway._types import UNSET, LimitValue

from .._helpers import all_gone, gone
from ..conftest import MakeLaneway

pytestmark = pytest.mark.slow

# Prints "first", starts ``sleep`` in its group, writes both pids to $1, then waits.
FAMILY = 'echo first; sleep 1000 & echo "$$ $!" > "$1"; wait'


def _laneway(make_laneway: MakeLaneway, idle: float | None = 5.0) -> Laneway:
    return make_laneway(
        limits=Limits(deadline=30, idle=idle, cancel_grace=0.6), retry=Retry(max_attempts=1)
    )


async def _lines(lw: Laneway, *argv: str, **kwargs: Any) -> list[str]:
    @lw.handler("lines")
    async def lines(ctx: TurnContext, payload: None) -> list[str]:
        return [line async for line in ctx.stream_process(*argv, **kwargs)]

    await lw.start()
    result: list[str] = await (await lw.submit("s", "lines")).result()
    return result


async def test_lines_come_while_the_child_runs_and_breaking_off_kills_its_group(
    make_laneway: MakeLaneway, tmp_path: Path
) -> None:
    lw = _laneway(make_laneway)
    pidfile = tmp_path / "pids"
    seen: dict[str, Any] = {}

    @lw.handler("first")
    async def first(ctx: TurnContext, payload: None) -> str:
        got = ""
        async for line in ctx.stream_process("sh", "-c", FAMILY, "sh", str(pidfile)):
            got = line
            while not pidfile.exists() or len(pidfile.read_text().split()) < 2:
                await asyncio.sleep(0.01)
            seen["pids"] = [int(p) for p in pidfile.read_text().split()]
            seen["alive"] = not any(gone(p) for p in seen["pids"])
            break  # abandon the iteration while the child still runs
        return got

    await lw.start()
    assert await (await lw.submit("s", "first")).result() == "first"
    assert seen["alive"]  # the line came before the child ended
    assert await all_gone(seen["pids"], within=3.0)  # and breaking off killed both


async def test_lines_are_text_with_newlines_stripped(make_laneway: MakeLaneway) -> None:
    lw = _laneway(make_laneway)
    script = r"printf 'crlf\r\n\nbad\377byte\n'; sleep 0.05; printf 'no newline at the end'"
    assert await _lines(lw, "sh", "-c", script) == [
        "crlf",
        "",
        "bad\ufffdbyte",
        "no newline at the end",
    ]


async def test_a_line_longer_than_the_bound_comes_in_pieces(make_laneway: MakeLaneway) -> None:
    lw = _laneway(make_laneway)
    script = f"head -c {2 * MAX_LINE + 10} /dev/zero | tr '\\0' x; echo; echo end"
    lines = await _lines(lw, "sh", "-c", script)
    assert [len(line) for line in lines] == [MAX_LINE, MAX_LINE, 10, 3]
    assert lines[-1] == "end"
    assert set("".join(lines[:-1])) == {"x"}


async def test_max_line_sets_the_bound(make_laneway: MakeLaneway) -> None:
    lw = _laneway(make_laneway)
    assert await _lines(lw, "sh", "-c", "echo abcdefghijk; echo xy", max_line=4) == [
        "abcd",
        "efgh",
        "ijk",
        "xy",
    ]


async def test_input_is_fed_to_stdin(make_laneway: MakeLaneway) -> None:
    lw = _laneway(make_laneway)
    assert await _lines(lw, "cat", input=b"one\ntwo\n") == ["one", "two"]


async def test_a_non_zero_exit_raises_process_failed_with_the_stderr_tail(
    make_laneway: MakeLaneway,
) -> None:
    lw = _laneway(make_laneway)
    caught: list[ProcessFailed] = []
    # 100 KB of noise on stderr first: only the tail is kept.
    noise = "head -c 100000 /dev/zero | tr '\\0' n >&2; echo >&2"
    script = f"echo out; {noise}; echo 'fatal: no' >&2; exit 3"

    @lw.handler("fails")
    async def fails(ctx: TurnContext, payload: bool) -> list[str]:
        got: list[str] = []
        try:
            async for line in ctx.stream_process("sh", "-c", script):
                got.append(line)
        except ProcessFailed as exc:
            caught.append(exc)
            if payload:
                raise
        return got

    await lw.start()
    assert await (await lw.submit("s", "fails", False)).result() == ["out"]
    (exc,) = caught
    assert exc.returncode == 3
    assert exc.stderr.endswith("fatal: no\n")
    assert len(exc.stderr) <= STDERR_TAIL
    assert exc.argv == ("sh", "-c", script)
    outcome = await (await lw.submit("s", "fails", True)).wait()
    assert (outcome.state, outcome.reason) == (JobState.FAILED, "ProcessFailed")
    assert outcome.error == "sh exited with status 3: fatal: no"


async def test_steady_lines_for_longer_than_idle_are_healthy(make_laneway: MakeLaneway) -> None:
    lw = _laneway(make_laneway, idle=0.5)
    script = "for i in $(seq 12); do echo $i; sleep 0.15; done"
    t0 = time.monotonic()
    assert await _lines(lw, "sh", "-c", script) == [str(i) for i in range(1, 13)]
    assert time.monotonic() - t0 > 1.5  # three idle limits long, never idle


@pytest.mark.parametrize(
    ("idle", "state"), [(UNSET, JobState.TIMED_OUT), (None, None), (3.0, None)]
)
async def test_idle_overrides_the_limit_for_the_stream(
    make_laneway: MakeLaneway, idle: LimitValue, state: JobState | None
) -> None:
    lw = _laneway(make_laneway, idle=0.4)

    @lw.handler("quiet")
    async def quiet(ctx: TurnContext, payload: None) -> list[str]:
        lines = ctx.stream_process("sh", "-c", "sleep 1; echo late", idle=idle)
        return [line async for line in lines]

    await lw.start()
    outcome = await (await lw.submit("s", "quiet")).wait()
    if state is None:
        assert (outcome.state, outcome.result) == (JobState.SUCCEEDED, ["late"])
    else:
        assert (outcome.state, outcome.reason) == (state, "idle")


async def test_the_idle_limit_is_restored_after_the_stream(make_laneway: MakeLaneway) -> None:
    lw = _laneway(make_laneway, idle=0.4)

    @lw.handler("after")
    async def after(ctx: TurnContext, payload: None) -> str:
        async with contextlib.aclosing(ctx.stream_process("echo", "x", idle=None)) as lines:
            async for _ in lines:
                pass
        await asyncio.sleep(1.0)  # silent past the attempt's own idle limit
        return "survived"

    await lw.start()
    outcome = await (await lw.submit("s", "after")).wait()
    assert (outcome.state, outcome.reason) == (JobState.TIMED_OUT, "idle")


async def test_bad_arguments_are_refused_at_the_call(make_laneway: MakeLaneway) -> None:
    lw = _laneway(make_laneway)
    errors: list[str] = []

    @lw.handler("bad")
    async def bad(ctx: TurnContext, payload: None) -> None:
        with contextlib.suppress(ValueError):
            ctx.stream_process()
            errors.append("no program accepted")
        with contextlib.suppress(ValueError):
            ctx.stream_process("x", max_line=0)
            errors.append("max_line=0 accepted")

    await lw.start()
    await (await lw.submit("s", "bad")).result()
    assert errors == []


async def test_a_turn_that_swallows_the_stop_still_loses_its_child(
    make_laneway: MakeLaneway, tmp_path: Path
) -> None:
    """The stream's own cleanup never runs (the iteration is shielded and the
    cancel swallowed): the attempt, abandoned after its grace, kills the group."""
    lw = _laneway(make_laneway)
    pidfile = tmp_path / "pids"

    async def read_all(ctx: TurnContext) -> list[str]:
        return [line async for line in ctx.stream_process("sh", "-c", FAMILY, "sh", str(pidfile))]

    @lw.handler("stubborn")
    async def stubborn(ctx: TurnContext, payload: None) -> list[str]:
        call = asyncio.ensure_future(read_all(ctx))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            return await asyncio.shield(call)  # swallowed; ends once the child is gone

    await lw.start()
    job = await lw.submit("s", "stubborn")
    while not pidfile.exists() or len(pidfile.read_text().split()) < 2:
        await asyncio.sleep(0.01)
    pids = [int(p) for p in pidfile.read_text().split()]
    await lw.stop("s")
    assert (await job.wait()).state is JobState.CANCELLED
    assert await all_gone(pids, within=3.0)
