"""Subprocesses of a turn: started in their own group, killed as a whole group.

A CLI subprocess (and whatever it spawned) must die with the attempt that
started it, whether the attempt succeeded, timed out or was stopped: TERM to
the group, a grace, then KILL, and the child is reaped.

``run_process`` is written once, against a ``ProcessHost``: the in-process
attempt (which kills adopted groups when it ends) or a worker process (whose
whole session the parent kills). Other ways to run a subprocess for a turn
(streaming its output, say) belong here beside it, on the same host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from typing import Any, Protocol

from .._types import ProcessResult

__all__ = [
    "ProcessHost",
    "feed",
    "group_alive",
    "kill_group",
    "run_process",
    "signal_group",
    "spawn",
]

_READ_CHUNK = 64 * 1024

log = logging.getLogger("laneway.process")


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a reused id owned by someone else
        return False
    return True


def group_alive(pgid: int) -> bool:
    return signal_group(pgid, 0)


async def kill_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """TERM the child's group, wait ``grace`` for the child, then KILL the group; reap."""
    pgid = proc.pid
    if proc.returncode is None:
        signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout=grace)
    # Children that outlived the leader (or ignored TERM) stay in the group.
    if signal_group(pgid, signal.SIGKILL):
        log.debug("process.killed", extra={"pgid": pgid})
    if proc.returncode is None:
        await proc.wait()


class ProcessHost(Protocol):
    """What running a subprocess for a turn needs from the turn."""

    @property
    def kill_grace(self) -> float:
        """Seconds between TERM and KILL."""

    @property
    def own_session(self) -> bool:
        """Start children in a session of their own (else only a group of their own)."""

    def progress(self) -> None:
        """Output arrived: the turn is not idle."""

    def adopt(self, proc: asyncio.subprocess.Process) -> None:
        """Kill ``proc``'s group with the turn, however the turn ends."""

    def release(self, proc: asyncio.subprocess.Process) -> None:
        """``proc`` was killed and reaped here; forget it."""


async def run_process(
    host: ProcessHost,
    argv: tuple[str, ...],
    *,
    input: bytes | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
) -> ProcessResult:
    """Run ``argv`` to completion in its own process group; each chunk of output is progress.

    The whole group is killed (TERM, grace, KILL) when this call ends or is
    cancelled, and by the host when the turn ends, however it ends.
    """
    if not argv:
        raise ValueError("run_process needs a program to run")
    proc = await spawn(host, argv, input is not None, cwd, env)
    try:
        out, err, _ = await asyncio.gather(
            _drain(host, proc.stdout), _drain(host, proc.stderr), feed(proc, input)
        )
        returncode = await proc.wait()
    finally:
        await kill_group(proc, host.kill_grace)
        host.release(proc)
    return ProcessResult(returncode, out, err)


async def spawn(
    host: ProcessHost,
    argv: tuple[str, ...],
    stdin: bool,
    cwd: str | None,
    env: Mapping[str, str] | None,
) -> asyncio.subprocess.Process:
    """Start ``argv`` in a group (or session) of its own, adopted by ``host``."""
    # uvloop (the server's loop) refuses a ``process_group`` keyword, even None.
    group: dict[str, Any] = (
        {"start_new_session": True} if host.own_session else {"process_group": 0}
    )
    starting = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            **group,
        )
    )
    try:
        proc = await asyncio.shield(starting)
    except asyncio.CancelledError:
        # The child may already run (and have children of its own): a cancelled
        # spawn only kills the leader, so hand the group to the host once it exists.
        starting.add_done_callback(lambda f: _adopt_spawned(host, f))
        raise
    host.adopt(proc)
    return proc


def _adopt_spawned(host: ProcessHost, spawn: asyncio.Future[asyncio.subprocess.Process]) -> None:
    if not spawn.cancelled() and spawn.exception() is None:
        host.adopt(spawn.result())


async def _drain(host: ProcessHost, reader: asyncio.StreamReader | None) -> bytes:
    if reader is None:
        return b""
    chunks: list[bytes] = []
    while chunk := await reader.read(_READ_CHUNK):
        chunks.append(chunk)
        host.progress()
    return b"".join(chunks)


async def feed(proc: asyncio.subprocess.Process, data: bytes | None) -> None:
    if data is None or proc.stdin is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(data)
        await proc.stdin.drain()
    proc.stdin.close()
