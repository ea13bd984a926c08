"""Process groups: start children in their own group, kill the whole group.

A CLI subprocess (and whatever it spawned) must die with the attempt that
started it, whether the attempt succeeded, timed out or was stopped: TERM to
the group, a grace, then KILL, and the child is reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

__all__ = ["group_alive", "kill_group", "signal_group"]

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
