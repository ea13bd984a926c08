"""A program that ends badly on purpose, for the endings tests: one run of it.

``python _endings_worker.py DB MODE [first]``: with ``first`` it submits the
mode's jobs, then it runs until idle (exit 0) or until its mode ends it:
- ``poison``: lane ``llm: 8``, ``poison_after=2``; ``BYSTANDERS`` innocents
  (0.5 s turns) and one culprit that calls ``os._exit(3)`` 0.3 s into its turn.
- ``interrupt``: three turns hang; it prints ``running`` once all three run and
  waits for Ctrl-C (SIGINT), without ever calling ``close()``.
- ``exit``: three turns hang; a fourth raises ``SystemExit(2)`` once they run.
A run without ``first`` recovers what the last one left; its hanging turns
return at once.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from laneway import Laneway, Limits, Retry, TurnContext

DB, MODE = sys.argv[1], sys.argv[2]
FIRST = sys.argv[3:] == ["first"]
BYSTANDERS = int(os.environ.get("BYSTANDERS", "4"))


def make() -> Laneway:
    return Laneway(
        f"sqlite:///{DB}",
        lanes={"llm": 8},
        poison_after=2,
        retry=Retry(max_attempts=1 if MODE == "exit" else 3, backoff=0.01),
        limits=Limits(deadline=60, idle=None, cancel_grace=1),
        watchdog_threshold=None,
    )


async def main() -> None:
    lw = make()
    running: set[str] = set()
    all_running = asyncio.Event()

    @lw.handler("turn", lanes=("llm",))
    async def turn(ctx: TurnContext, p: dict[str, Any]) -> str:
        running.add(ctx.job_id)
        if p["crash"]:
            await asyncio.sleep(0.3)  # its neighbours are in flight
            os._exit(3)
        if MODE == "poison":  # in flight at every crash that comes while it runs
            await asyncio.sleep(0.5)
            return str(p["name"])
        if not FIRST:
            return str(p["name"])
        if len(running) == 3:
            all_running.set()
        await asyncio.sleep(3600)
        return "never"

    @lw.handler("quit", lanes=("llm",))
    async def quit_(ctx: TurnContext, p: dict[str, Any]) -> str:
        await all_running.wait()
        raise SystemExit(2)  # an argparse error in a tool, say

    await lw.start()
    if FIRST:
        await submit_all(lw)
    if FIRST and MODE == "interrupt":
        await all_running.wait()
        print("running", flush=True)
        await asyncio.Event().wait()  # until Ctrl-C; close() is never called
    await lw.join()
    await lw.close()


async def submit_all(lw: Laneway) -> None:
    if MODE == "poison":
        await lw.submit("culprit", "turn", {"name": "culprit", "crash": True})
        for i in range(BYSTANDERS):
            await lw.submit(f"innocent{i}", "turn", {"name": f"innocent{i}", "crash": False})
        return
    for i in range(3):
        await lw.submit(f"n{i}", "turn", {"name": f"n{i}", "crash": False})
    if MODE == "exit":
        await lw.submit("quitter", "quit", {"name": "quitter", "crash": False})


if __name__ == "__main__":
    asyncio.run(main())
