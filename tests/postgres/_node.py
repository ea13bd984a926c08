"""A node that dies mid-attempt: ``python _node.py URL SESSION``.

Opens a store, accepts one job in SESSION, starts it and emits one event,
prints the job id and its epoch, then waits to be killed.
"""

from __future__ import annotations

import asyncio
import sys

from laneway.stores._postgres import PostgresStore


async def main(url: str, session: str) -> None:
    store = PostgresStore(url)
    await store.open()
    info, _ = await store.add_job(
        job_id=f"{session}-dying", session=session, handler="h", payload=None, priority=0,
        idempotency_key=None,
    )  # fmt: skip
    await store.start_attempt(info.id, 1)
    await store.append_event(session, info.id, "delta", {}, attempt=1)
    print(info.id, store.epoch, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
