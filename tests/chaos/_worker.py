"""A laneway worker for the crash tests: run as ``python _worker.py DB LOG MODE``.

It opens a Laneway on the SQLite file ``DB``, submits ``JOBS`` jobs to each of
``SESSIONS`` sessions (idempotency key = the job's number, so a restarted
worker re-submitting them gets the same jobs), appends ``id session n`` to
``LOG`` once each submit has returned, and exits 0 when every job is done.
Each handler start writes a ``ran`` event. Mode ``poison`` also submits one
job whose handler kills its own process.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from typing import Any

from laneway import Laneway, Retry, TurnContext

SESSIONS = int(os.environ.get("CHAOS_SESSIONS", "20"))
JOBS = int(os.environ.get("CHAOS_JOBS", "60"))
WORK = (
    float(os.environ.get("CHAOS_WORK_MIN", "0.05")),
    float(os.environ.get("CHAOS_WORK_MAX", "0.2")),
)
POISON_AFTER = int(os.environ.get("CHAOS_POISON_AFTER", "3"))
POISON_DELAY = 0.3


def build(db: str) -> Laneway:
    lw = Laneway(
        f"sqlite:///{db}",
        watchdog_threshold=None,
        # Crashes, not handler errors, are under test: retry lost turns even
        # after their `ran` event, as often as it takes.
        retry=Retry(max_attempts=1_000, backoff=0.0, retry_after_output=True),
        poison_after=POISON_AFTER,
    )

    @lw.handler("work")
    async def work(ctx: TurnContext, payload: dict[str, Any]) -> int:
        await ctx.emit("ran", {"n": payload["n"], "attempt": ctx.attempt})
        await asyncio.sleep(random.uniform(*WORK))
        return int(payload["n"])

    @lw.handler("poison")
    async def poison(ctx: TurnContext, payload: Any) -> None:
        await asyncio.sleep(POISON_DELAY)  # let the innocent sessions move on first
        os.kill(os.getpid(), signal.SIGKILL)

    return lw


async def produce(lw: Laneway, session: str, log_fd: int) -> None:
    for n in range(JOBS):
        job = await lw.submit(session, "work", {"n": n}, idempotency_key=str(n))
        os.write(log_fd, f"{job.id} {session} {n}\n".encode())


async def main(db: str, log_path: str, mode: str) -> None:
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    lw = build(db)
    async with lw:
        print("ready", flush=True)
        if mode == "poison":
            job = await lw.submit("poison", "poison", None, idempotency_key="poison")
            os.write(log_fd, f"{job.id} poison 0\n".encode())
        await asyncio.gather(*(produce(lw, f"s{i}", log_fd) for i in range(SESSIONS)))
        await lw.join()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
