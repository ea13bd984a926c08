"""Helpers for the process-isolation tests: real workers, real time."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from laneway import Event, Laneway
from laneway._isolation._pool import ProcessRunner


def gone(pid: int) -> bool:
    """True once ``pid`` is no longer running.

    An orphan that died waits as a zombie until PID 1 reaps it, and some
    container inits never do: a zombie holds no resources and runs nothing.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] == b"Z"


def session_members(sid: int, name: bytes | None = None) -> list[int]:
    """Live pids in session ``sid`` (optionally with command ``name``)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.find(b"(") + 1 : stat.rfind(b")")]
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] != b"Z" and int(fields[3]) == sid and (name is None or comm == name):
            found.append(int(entry))
    return found


async def eventually(check: Callable[[], Any], within: float = 5.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy (real time)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or check}")
        await asyncio.sleep(0.02)


async def first_event(lw: Laneway, session: str, kind: str, within: float = 10.0) -> Event:
    async with asyncio.timeout(within):
        async for event in lw.events(session):
            if event.kind == kind:
                return event
    raise AssertionError("unreachable")


def runner(lw: Laneway) -> ProcessRunner:
    r = lw.runner("process")
    assert isinstance(r, ProcessRunner)
    return r


async def pool_restored(lw: Laneway, size: int, dead: int | None = None) -> list[int]:
    """Wait until the pool has ``size`` workers up again, none of them ``dead``."""

    def ok() -> list[int] | None:
        pids = runner(lw).pids
        return pids if len(pids) == size and dead not in pids else None

    result: list[int] = await eventually(ok, 10.0, f"the pool to return to {size} workers")
    return result
