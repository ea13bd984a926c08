"""The deadline heap: fires in order, cancels, compacts, survives a bad callback."""

from __future__ import annotations

import asyncio
import logging

import pytest

from laneway._core._timers import DelayLine, Timers

from .._helpers import now

pytestmark = pytest.mark.looptime


async def test_entries_fire_in_deadline_order_at_their_time() -> None:
    timers = Timers(asyncio.get_running_loop())
    t0 = now()
    fired: list[tuple[str, float]] = []

    def record(name: str) -> None:
        fired.append((name, now() - t0))

    timers.call_at(t0 + 5, record, "5")
    timers.call_at(t0 + 1, record, "1")  # earlier than the armed one: re-arms
    timers.call_at(t0 + 3, record, "3a")
    timers.call_at(t0 + 3, record, "3b")  # same deadline: insertion order
    assert len(timers) == 4
    await asyncio.sleep(10)
    assert [name for name, _ in fired] == ["1", "3a", "3b", "5"]
    assert [at for _, at in fired] == pytest.approx([1, 3, 3, 5])
    assert len(timers) == 0
    timers.close()


async def test_a_cancelled_entry_never_fires() -> None:
    timers = Timers(asyncio.get_running_loop())
    t0 = now()
    fired: list[str] = []
    first = timers.call_at(t0 + 1, fired.append, "first")
    timers.call_at(t0 + 2, fired.append, "second")
    timers.cancel(first)
    timers.cancel(first)  # twice is harmless
    timers.cancel(None)
    assert not first.active
    assert len(timers) == 1
    await asyncio.sleep(5)
    assert fired == ["second"]
    timers.close()


async def test_compaction_keeps_only_live_entries() -> None:
    timers = Timers(asyncio.get_running_loop())
    t0 = now()
    fired: list[int] = []
    entries = [timers.call_at(t0 + 100 + i, fired.append, i) for i in range(600)]
    for entry in entries[:300]:
        timers.cancel(entry)
    assert len(timers._heap) == 600  # cancelling only marks the entry ...
    assert len(timers) == 300
    timers.cancel(entries[300])
    # ... until more than 256 and more than half the heap are dead: rebuilt.
    assert len(timers._heap) == len(timers) == 299
    assert all(item[2].active for item in timers._heap)
    for entry in entries[301:400]:
        timers.cancel(entry)
    await asyncio.sleep(800)
    assert fired == list(range(400, 600))
    timers.close()


async def test_a_failing_callback_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = Timers(asyncio.get_running_loop())
    t0 = now()
    fired: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    timers.call_at(t0 + 1, boom)
    timers.call_at(t0 + 1, fired.append, "after")
    with caplog.at_level(logging.ERROR, logger="laneway.timers"):
        await asyncio.sleep(2)
    assert fired == ["after"]
    assert any("timer callback failed" in r.getMessage() for r in caplog.records)
    timers.close()


async def test_nothing_fires_after_close() -> None:
    timers = Timers(asyncio.get_running_loop())
    fired: list[str] = []
    timers.call_at(now() + 1, fired.append, "x")
    timers.close()
    timers.call_at(now() + 2, fired.append, "y")
    await asyncio.sleep(5)
    assert fired == []


async def test_a_delay_line_fires_each_live_item_its_delay_after_its_push() -> None:
    timers = Timers(asyncio.get_running_loop())
    t0 = now()
    fired: list[tuple[str, float]] = []
    dead: set[str] = set()
    line: DelayLine[str] = DelayLine(
        timers, 5.0, lambda item: fired.append((item, now() - t0)), lambda i: i not in dead
    )
    line.push("a", t0)
    await asyncio.sleep(1)
    line.push("b", now())
    line.push("c", now())
    dead.add("b")
    line.dropped()
    await asyncio.sleep(10)
    assert [item for item, _ in fired] == ["a", "c"]
    assert [at for _, at in fired] == pytest.approx([5.0, 6.0])
    assert len(line) == 0
    timers.close()


async def test_a_delay_line_of_dead_items_is_compacted_before_they_fall_due() -> None:
    timers = Timers(asyncio.get_running_loop())
    dead: set[int] = set()
    line: DelayLine[int] = DelayLine(timers, 300.0, lambda item: None, lambda i: i not in dead)
    for i in range(1_000):
        line.push(i, now())
    for i in range(900):
        dead.add(i)
        line.dropped()
    # Compacted well before the 300 s they would wait: at most 2x live + 256.
    assert len(line) <= 2 * 100 + 256
    timers.close()
