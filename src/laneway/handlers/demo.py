"""The ``demo`` model: echoes the message word by word, and misbehaves on request.

Commands: ``/hang`` never answers, ``/stall`` streams a few words then goes
silent, ``/block N`` blocks the event loop for N seconds, ``/crash`` raises,
``/slow N`` streams for N seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

from .. import testing
from .._core._context import TurnContext
from .._core._runtime import Laneway

__all__ = ["DemoCrash", "register_demo"]


class DemoCrash(RuntimeError):
    """Raised by ``/crash``."""


async def _words(words: list[str], delay: float, stall_after: int | None) -> AsyncIterator[str]:
    for i, word in enumerate(words):
        if stall_after is not None and i >= stall_after:
            await testing.hang()
        await asyncio.sleep(delay)
        yield word


def _number(arg: str, default: float) -> float:
    try:
        return max(0.0, min(float(arg), 3600.0))
    except ValueError:
        return default


async def _reply(ctx: TurnContext, text: str) -> str:
    command, _, arg = text.strip().partition(" ")
    words = text.split() or ["(empty)"]
    delay, stall = 0.01, None
    if command == "/hang":
        await testing.hang()
    elif command == "/crash":
        raise DemoCrash("the demo model crashed on purpose (/crash)")
    elif command == "/block":
        testing.block_loop(_number(arg, 1.0))
    elif command == "/stall":
        words, stall = ["thinking", "about", "it", "..."] * 3, 3
    elif command == "/slow":
        seconds = _number(arg, 5.0)
        words = [f"tick{i}" for i in range(max(1, int(seconds * 4)))]
        delay = seconds / len(words)
    parts: list[str] = []
    async for word in ctx.stream(_words(words, delay, stall)):
        piece = word if not parts else " " + word
        parts.append(piece)
        await ctx.emit("delta", {"text": piece})
    reply = "".join(parts)
    await ctx.emit("message", {"role": "assistant", "text": reply})
    return reply


def register_demo(
    lw: Laneway, *, name: str = "demo", isolation: Literal["task", "process"] = "task"
) -> None:
    """Register the demo model as handler ``name`` on the shared ``llm`` lane if configured."""
    lanes = ("llm",) if "llm" in lw.lanes else ()

    @lw.handler(name, lanes=lanes, isolation=isolation)
    async def demo(ctx: TurnContext, payload: Any) -> str:
        text = payload.get("text", "") if isinstance(payload, dict) else str(payload)
        return await _reply(ctx, text)
