"""A laneway node for the cluster tests: ``python _cluster_node.py URL LOG CAP LIMIT``.

Runs handler ``work`` (lane ``llm`` capped at CAP, ``session_limit`` LIMIT) until
SIGTERM. Each attempt appends ``S``/``E`` lines (job, session, index, attempt,
wall time) to LOG, so the test can replay what every node ran and when. Prints
``ready`` once it claims.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

from laneway import Laneway, TurnContext


def _line(fd: int, mark: str, ctx: TurnContext, payload: Any) -> None:
    os.write(
        fd,
        f"{mark} {ctx.job_id} {ctx.session} {payload['i']} {ctx.attempt} {time.time()}\n".encode(),
    )


async def main(url: str, log_path: str, cap: int, limit: int) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    lw = Laneway(url, lanes={"llm": cap}, session_limit=limit, watchdog_threshold=None)

    @lw.handler("work", lanes=("llm",))
    async def work(ctx: TurnContext, payload: Any) -> None:
        _line(fd, "S", ctx, payload)
        await asyncio.sleep(payload["ms"] / 1000)
        if payload.get("emit"):
            await ctx.emit("delta", {"text": "x"})
        _line(fd, "E", ctx, payload)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with lw:
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
