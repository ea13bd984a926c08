"""``max_event_bytes``: an event too large for the log is refused in the handler, in every store.

Real stores, real time: the sqlite writer runs in a thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from laneway import ConfigError, InvalidPayload, JobState, Laneway, TurnContext

from .._helpers import events_of


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'lw.db'}"


@pytest.mark.parametrize(
    "data",
    [
        "x" * 1000,  # a plain string, refused without being encoded
        {"text": "x" * 1000},
        ["é" * 200],  # 200 characters, 1,200 bytes escaped
    ],
)
async def test_an_emit_over_the_cap_raises_in_the_handler(store_url: str, data: Any) -> None:
    lw = Laneway(store_url, max_event_bytes=1000, watchdog_threshold=None)
    raised: list[BaseException] = []

    @lw.handler("big")
    async def big(ctx: TurnContext, payload: Any) -> str:
        try:
            await ctx.emit("blob", data)
        except InvalidPayload as exc:
            raised.append(exc)
            raise
        return "emitted"

    async with lw:
        job = await lw.submit("s", "big", None)
        outcome = await job.wait()
        kinds = [e.kind for e in await events_of(lw, "s")]
    assert outcome.state is JobState.FAILED
    assert outcome.reason == "InvalidPayload"
    assert "max_event_bytes (1000)" in str(raised[0])
    assert "blob" not in kinds


async def test_an_emit_at_the_cap_is_written(store_url: str) -> None:
    data = {"text": "x" * (1000 - len('{"text": ""}'))}
    lw = Laneway(store_url, max_event_bytes=1000, watchdog_threshold=None)

    @lw.handler("fits")
    async def fits(ctx: TurnContext, payload: Any) -> None:
        await ctx.emit("blob", data)

    async with lw:
        outcome = await (await lw.submit("s", "fits", None)).wait()
        events = await events_of(lw, "s")
    assert outcome.state is JobState.SUCCEEDED
    assert [e.data for e in events if e.kind == "blob"] == [data]


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "1000"])
def test_max_event_bytes_must_be_a_positive_int(value: Any) -> None:
    with pytest.raises(ConfigError, match="max_event_bytes"):
        Laneway(max_event_bytes=value)
