"""Module-level handlers for the isolation tests: workers import them by name."""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from typing import Any

from laneway import ProcessFailed, TurnContext
from laneway.handlers.cli import CliModel
from laneway.testing import model_stream


async def noop(ctx: TurnContext, payload: Any) -> Any:
    return payload


async def whoami(ctx: TurnContext, payload: Any) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "job_id": ctx.job_id,
        "session": ctx.session,
        "handler": ctx.handler,
        "attempt": ctx.attempt,
        "payload": ctx.payload,
    }


async def sleep_blocking(ctx: TurnContext, payload: dict[str, Any]) -> str:
    await ctx.emit("pid", os.getpid())
    time.sleep(payload["seconds"])  # blocks the worker's loop, not the gateway's
    return "woke"


async def busy_loop(ctx: TurnContext, payload: dict[str, Any]) -> int:
    await ctx.emit("pid", os.getpid())
    n = 0
    while True:  # pure CPU, never yields
        n += 1


async def segfault(ctx: TurnContext, payload: Any) -> None:
    await ctx.emit("pid", os.getpid())
    ctypes.string_at(0)


async def hard_exit(ctx: TurnContext, payload: Any) -> None:
    os._exit(3)


async def wait_to_be_killed(ctx: TurnContext, payload: Any) -> str:
    await ctx.emit("pid", os.getpid())
    await asyncio.sleep(30)
    return "survived"


async def spawn_sleep(ctx: TurnContext, payload: Any) -> None:
    await ctx.emit("pid", os.getpid())
    await ctx.run_process("sleep", "1000")


async def crash_first(ctx: TurnContext, payload: Any) -> str:
    if ctx.attempt == 1:
        os._exit(3)
    return f"attempt {ctx.attempt}"


async def segfault_quietly(ctx: TurnContext, payload: Any) -> None:
    ctypes.string_at(0)


async def chatty(ctx: TurnContext, payload: dict[str, Any]) -> str:
    source = model_stream(
        payload["words"], delay=payload["delay"], stall_after=payload.get("stall")
    )
    async for word in ctx.stream(source):
        await ctx.emit("delta", {"text": word})
    ctx.progress()
    before = await ctx.history(10)
    return " ".join(str(e.kind) for e in before)


async def emit_forever(ctx: TurnContext, payload: Any) -> None:
    await ctx.emit("pid", os.getpid())
    i = 0
    while True:
        i += 1
        await ctx.emit("tick", i)


async def fails(ctx: TurnContext, payload: Any) -> None:
    raise KeyError("no such thing")


async def bad_result(ctx: TurnContext, payload: Any) -> Any:
    return {1, 2}


async def bad_emit(ctx: TurnContext, payload: Any) -> str:
    errors = []
    for kind, data in (("job.fake", 1), ("ok", {1, 2}), ("", 1)):
        try:
            await ctx.emit(kind, data)
        except ValueError as exc:
            errors.append(type(exc).__name__)
    return ",".join(errors)


async def run_tools(ctx: TurnContext, payload: Any) -> dict[str, Any]:
    res = await ctx.run_process("sh", "-c", "cat; echo err >&2", input=b"hello")
    value = await ctx.run_sync(sum, [1, 2, 3])
    return {
        "out": res.stdout.decode(),
        "err": res.stderr.decode(),
        "rc": res.returncode,
        "sum": value,
    }


async def agent_cli(ctx: TurnContext, payload: dict[str, Any]) -> str:
    """The built-in cli model, configured by the payload (workers import handlers by name)."""
    model = CliModel(payload["command"], format=payload["format"], resume_arg=payload.get("resume"))
    return await model.turn(ctx, payload)


async def stream_lines(ctx: TurnContext, payload: dict[str, Any]) -> dict[str, Any]:
    """The first ``payload["take"]`` lines (all if None) and how the stream ended."""
    got: list[str] = []
    try:
        async for line in ctx.stream_process(*payload["argv"], max_line=payload["max_line"]):
            got.append(line)
            if len(got) == payload["take"]:
                break  # abandoned: the stream kills the group here, in the worker
    except ProcessFailed as exc:
        return {"lines": got, "returncode": exc.returncode, "stderr": exc.stderr}
    return {"lines": got, "returncode": 0}


async def emit_sized(ctx: TurnContext, payload: dict[str, Any]) -> str:
    """Emit ``size`` characters; report what the emit raised, if anything."""
    try:
        await ctx.emit("blob", "x" * payload["size"])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "emitted"
