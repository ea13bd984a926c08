"""The worker's context: emit, progress, stream and history reach the parent."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from laneway import JobState, Laneway, Limits, ProcessPool, Retry

from ..conftest import MakeLaneway
from . import handlers

pytestmark = pytest.mark.slow


async def test_context_attributes_and_own_process_group(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1))
    lw.handler("who", isolation="process")(handlers.whoami)
    await lw.start()
    job = await lw.submit("alice", "who", {"x": [1, "two", None]})
    got = await job.result()
    assert got["pid"] != os.getpid()
    assert got["pgid"] == got["sid"] == got["pid"]  # its own session and group
    assert got["job_id"] == job.id
    assert (got["session"], got["handler"], got["attempt"]) == ("alice", "who", 1)
    assert got["payload"] == {"x": [1, "two", None]}


async def test_steady_stream_longer_than_idle_succeeds_with_every_event(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1))
    lw.handler("chat", isolation="process", limits=Limits(idle=0.4))(handlers.chatty)
    await lw.start()
    words = [f"w{i}" for i in range(12)]
    began = time.monotonic()
    job = await lw.submit("s", "chat", {"words": words, "delay": 0.1})  # 1.2 s > idle
    history = await job.result()
    assert time.monotonic() - began > 1.0
    events = await lw.store.read_events("s")
    assert [e.data["text"] for e in events if e.kind == "delta"] == words
    assert all(e.job_id == job.id for e in events)
    # ctx.history() from the worker: what the session logged before this attempt.
    assert history == "job.queued"


async def test_emit_returns_the_logged_event_and_history_sees_earlier_turns(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1))
    lw.handler("chat", isolation="process")(handlers.chatty)
    await lw.start()
    await (await lw.submit("s", "chat", {"words": ["a"], "delay": 0})).result()
    second = await (await lw.submit("s", "chat", {"words": ["b"], "delay": 0})).result()
    assert second.split() == [
        "job.queued",
        "job.started",
        "delta",
        "job.succeeded",
        "job.queued",
    ]


async def test_handler_errors_keep_their_type_name(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1), retry=Retry(max_attempts=1))
    lw.handler("fails", isolation="process")(handlers.fails)
    lw.handler("bad_result", isolation="process")(handlers.bad_result)
    await lw.start()
    failed = await (await lw.submit("a", "fails")).wait()
    assert (failed.state, failed.reason, failed.error) == (
        JobState.FAILED,
        "KeyError",
        "'no such thing'",
    )
    bad = await (await lw.submit("a", "bad_result")).wait()
    assert (bad.state, bad.reason) == (JobState.FAILED, "InvalidPayload")


async def test_invalid_events_raise_in_the_handler(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1))
    lw.handler("bad_emit", isolation="process")(handlers.bad_emit)
    await lw.start()
    job = await lw.submit("a", "bad_emit")
    assert await job.result() == "InvalidPayload,InvalidPayload,InvalidPayload"
    kinds = [e.kind for e in await lw.store.read_events("a")]
    assert kinds == ["job.queued", "job.started", "job.succeeded"]


async def test_run_process_and_run_sync_inside_a_worker(make_laneway: MakeLaneway) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1))
    lw.handler("tools", isolation="process")(handlers.run_tools)
    await lw.start()
    got = await (await lw.submit("a", "tools")).result()
    assert got == {"out": "hello", "err": "err\n", "rc": 0, "sum": 6}


async def test_decorating_at_module_level_works(
    make_laneway: MakeLaneway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The usual style: `@lw.handler(...)` while the module runs, before its name is bound.
    (tmp_path / "iso_decorated_mod.py").write_text(
        textwrap.dedent(
            """
            import os
            from laneway import Laneway, ProcessPool

            lw = Laneway(watchdog_threshold=None, process_pool=ProcessPool(size=1))

            @lw.handler("pid", isolation="process")
            async def pid(ctx, payload):
                return os.getpid()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "iso_decorated_mod", raising=False)
    import iso_decorated_mod  # type: ignore[import-not-found]

    lw: Laneway = iso_decorated_mod.lw
    try:
        await lw.start()
        pid = await (await lw.submit("a", "pid")).result()
        assert isinstance(pid, int)
        assert pid != os.getpid()
    finally:
        await lw.close()


async def test_an_emit_over_max_event_bytes_raises_in_the_worker(
    make_laneway: MakeLaneway,
) -> None:
    lw = make_laneway(process_pool=ProcessPool(size=1), max_event_bytes=100)
    lw.handler("emit", isolation="process")(handlers.emit_sized)
    await lw.start()
    fits = await (await lw.submit("s", "emit", {"size": 98})).result()
    over = await (await lw.submit("s", "emit", {"size": 99})).result()
    assert fits == "emitted"
    assert over.startswith("InvalidPayload: ")
    assert "max_event_bytes (100)" in over
    blobs = [e.data for e in await lw.store.read_events("s") if e.kind == "blob"]
    assert blobs == ["x" * 98]
