"""The ``demo`` model: a stand-in LLM that can misbehave on command.

It answers ordinary text by streaming a short reply word by word (``delta``
events, then one ``message`` event), through ``ctx.stream`` so idle limits
apply exactly as they would to a real model. Commands reproduce the failures
laneway exists to survive, so a newcomer can watch each one recover:

- ``/help``: list the commands.
- ``/hang``: never answer (honours cancellation); the turn's idle limit or
  deadline, whichever is shorter, ends it.
- ``/stall``: stream a few words, then go silent forever; the idle limit ends
  it, and because output was emitted it is not retried.
- ``/block N``: block the event loop for N seconds (``time.sleep``); the
  watchdog reports ``loop.blocked`` with this stack.
- ``/crash``: raise ``DemoCrash``; the job fails with reason ``DemoCrash``
  (after the retries the Retry policy allows, since nothing was emitted).
- ``/slow N``: take N seconds while streaming a word every 0.5 s, so a long
  turn stays healthy under an idle limit shorter than N.

On a gateway with tokens the task-mode ``demo`` refuses ``/block`` (any
client could freeze every session): it answers with a reply naming
``demo-isolated``, where the block stays inside a worker process.

A malformed command (``/block`` without a number, ``/slow -1``, ``/nope``) is
answered with a reply that says what was wrong; it never fails the turn.
``N`` is seconds: ``0 < N <= 60`` for ``/block``, ``0 < N <= 3600`` for ``/slow``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from .._errors import InvalidPayload
from .._types import Limits
from ..testing import block_loop, hang, model_stream

if TYPE_CHECKING:
    from .. import Laneway, TurnContext

__all__ = [
    "BLOCK_MAX",
    "SLOW_MAX",
    "SLOW_STEP",
    "WORD_DELAY",
    "DemoCrash",
    "demo_turn",
    "demo_turn_without_block",
    "register_demo",
]

WORD_DELAY = 0.03  # seconds between streamed words of an ordinary reply
SLOW_STEP = 0.5  # seconds between words of /slow: well under any sane idle limit
BLOCK_MAX = 60.0
SLOW_MAX = 3600.0
STALL_WORDS = 3
ECHO_MAX_WORDS = 100

NOTHING = "You sent nothing. Type /help to see what I can do."
STALLED = "Let me think about that carefully and"
BLOCK_REFUSED = (
    "I refuse /block here: on a server with tokens, blocking the event loop would freeze "
    "every session. Send it with handler demo-isolated, which blocks only a worker process."
)
HELP = (
    "I am laneway's demo model. Send any text and I echo it back, word by word. "
    "These commands show what laneway survives: "
    "/hang never answers (the idle limit or deadline ends the turn); "
    "/stall streams a few words, then goes silent (the idle limit ends it); "
    "/block N blocks the event loop for N seconds (the watchdog reports it); "
    "/crash raises an error (the turn fails, after retries); "
    "/slow N takes N seconds while streaming steadily (no limit is hit); "
    "/help shows this."
)


class DemoCrash(RuntimeError):
    """Raised by ``/crash``: the job's failure reason is ``DemoCrash``."""


def register_demo(
    lw: Laneway,
    *,
    name: str = "demo",
    isolation: Literal["task", "process"] = "task",
    lanes: tuple[str, ...] = (),
    limits: Limits | None = None,
    allow_block: bool = True,
) -> None:
    """Register the demo model on ``lw`` as handler ``name``.

    With ``isolation="process"`` every turn runs in a worker process, so
    ``/block N`` blocks only that worker and is killed at the turn's limit.
    ``allow_block=False`` answers ``/block`` with a refusal instead of running it.
    """
    turn = demo_turn if allow_block else demo_turn_without_block
    lw.handler(name, isolation=isolation, lanes=lanes, limits=limits)(turn)


async def demo_turn(ctx: TurnContext, payload: dict[str, Any]) -> str:
    """One demo turn: ``payload`` is ``{"text": ...}``; returns the reply text."""
    text = _text_of(payload)
    command, _, arg = text.strip().partition(" ")
    if not command.startswith("/"):
        return await _say(ctx, _echo_words(text), WORD_DELAY)
    if command == "/help":
        return await _say(ctx, HELP.split(), WORD_DELAY)
    if command == "/hang":
        return await _hang()
    if command == "/stall":
        return await _stall(ctx)
    if command == "/crash":
        raise DemoCrash("the demo model crashed on purpose (/crash)")
    if command in ("/block", "/slow"):
        return await _timed(ctx, command, arg)
    return await _say(ctx, f"Unknown command {command}. {HELP}".split(), WORD_DELAY)


async def demo_turn_without_block(ctx: TurnContext, payload: dict[str, Any]) -> str:
    """``demo_turn``, except that ``/block`` is refused: no client may block the loop."""
    if _text_of(payload).strip().partition(" ")[0] == "/block":
        return await _say(ctx, BLOCK_REFUSED.split(), WORD_DELAY)
    return await demo_turn(ctx, payload)


def _text_of(payload: Any) -> str:
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise InvalidPayload('the demo model expects a payload {"text": "..."}')
    text: str = payload["text"]
    return text


def _echo_words(text: str) -> list[str]:
    said = text.split()
    if not said:
        return NOTHING.split()
    if len(said) > ECHO_MAX_WORDS:
        said = [*said[:ECHO_MAX_WORDS], "…"]
    return ["You", "said:", *said, "—", "type", "/help", "to", "see", "what", "I", "can", "do."]


async def _timed(ctx: TurnContext, command: str, arg: str) -> str:
    limit = BLOCK_MAX if command == "/block" else SLOW_MAX
    seconds = _seconds(arg, limit)
    if seconds is None:
        usage = f"{command} needs a number of seconds N with 0 < N <= {limit:g}, got {arg!r}."
        return await _say(ctx, usage.split(), WORD_DELAY)
    if command == "/block":
        block_loop(seconds)  # on purpose: this is the event-loop block the watchdog reports
        done = (
            f"I blocked my thread for {seconds:g} seconds: in task mode that is the event "
            "loop (the watchdog logged it), in a worker process only the worker."
        )
        return await _say(ctx, done.split(), WORD_DELAY)
    steps = max(1, math.ceil(seconds / SLOW_STEP))
    words = [f"[{min(seconds, (i + 1) * SLOW_STEP):g}s]" for i in range(steps)]
    return await _say(ctx, [*words, "done."], seconds / steps)


def _seconds(arg: str, limit: float) -> float | None:
    try:
        value = float(arg.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or not 0 < value <= limit:
        return None
    return value


async def _hang() -> NoReturn:
    await hang()  # returns only by cancellation
    raise AssertionError("unreachable")  # pragma: no cover


async def _stall(ctx: TurnContext) -> NoReturn:
    words = STALLED.split()
    await _relay(ctx, model_stream(words, delay=WORD_DELAY, stall_after=STALL_WORDS))
    raise AssertionError("unreachable: a stalled stream never ends")  # pragma: no cover


async def _say(ctx: TurnContext, words: Sequence[str], delay: float) -> str:
    """Stream ``words`` as deltas (``delay`` apart), then the whole reply as a message."""
    await _relay(ctx, _paced(words, delay))
    reply = " ".join(words)
    await ctx.emit("message", {"role": "assistant", "text": reply})
    return reply


async def _relay(ctx: TurnContext, source: AsyncIterable[str]) -> None:
    async for word in ctx.stream(source):
        await ctx.emit("delta", {"text": word + " "})


async def _paced(words: Sequence[str], delay: float) -> AsyncIterator[str]:
    for word in words:
        if delay:
            await asyncio.sleep(delay)
        yield word
