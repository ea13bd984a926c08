"""An idle limit fires at its instant even when float rounding makes
``now - last_progress`` come out a hair under the limit (found at t=7.7 with a
5 s limit: the timer was re-armed for the same instant, forever)."""

from __future__ import annotations

import subprocess

import pytest

from .._helpers import run_python

SNIPPET = """
import asyncio, looptime
from laneway import Laneway, Limits, Retry
from laneway.testing import hang

assert (7.7 + 5.0) - 7.7 < 5.0  # the rounding this run depends on

async def main():
    lw = Laneway("memory://", limits=Limits(idle=5.0), retry=Retry(max_attempts=1),
                 watchdog_threshold=None)
    @lw.handler("h")
    async def h(ctx, payload):
        await hang()
    async with lw:
        outcome = await (await lw.submit("s", "h", {})).wait()
        print(outcome.reason, round(asyncio.get_running_loop().time(), 3))

loop = looptime.new_event_loop(start=7.7)
loop.run_until_complete(main())
loop.close()
"""


def test_an_idle_limit_is_not_rearmed_for_the_same_instant() -> None:
    try:
        done = run_python(SNIPPET, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the idle timer spun on the same instant instead of firing")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["idle", "12.7"]
