"""Handlers for ``bench_isolation.py``: a worker imports them by module name."""

from __future__ import annotations

from typing import Any

from laneway import TurnContext


async def noop(ctx: TurnContext, payload: Any) -> Any:
    return payload
