"""The loop watchdog outlives a log handler that raises: every block is still
counted and reported (real time: the watchdog is a thread)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from laneway import Laneway

pytestmark = pytest.mark.slow


class _Raising(logging.Handler):
    def handle(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("the log pipeline is down")


async def test_the_watchdog_keeps_counting_blocks_when_a_log_handler_raises() -> None:
    raising = _Raising()
    root = logging.getLogger("laneway")
    root.addHandler(raising)
    try:
        async with Laneway(watchdog_threshold=0.2) as lw:
            for _ in range(2):
                time.sleep(0.8)
                await asyncio.sleep(0.5)
            assert lw.loop_health()[1] == 2
    finally:
        root.removeHandler(raising)
