"""Handlers for the isolation benchmarks: a worker imports them by module name."""

from __future__ import annotations

from typing import Any

from laneway import TurnContext


async def noop(ctx: TurnContext, payload: Any) -> Any:
    return payload


async def count_lines(ctx: TurnContext, payload: list[str]) -> int:
    """Read a subprocess's stdout with ``ctx.stream_process``; the number of lines."""
    n = 0
    async for _line in ctx.stream_process(*payload):
        n += 1
    return n
