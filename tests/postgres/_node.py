"""A node that dies mid-attempt: ``python _node.py URL SESSION``.

Opens a store, accepts one job in SESSION, claims it (taking the one slot of
lane ``llm``) and emits one event, prints the job id and its epoch, then waits
to be killed.
"""

from __future__ import annotations

import asyncio
import sys

from laneway.stores._postgres import PostgresStore


async def main(url: str, session: str) -> None:
    store = PostgresStore(url)
    await store.open()
    await store.set_lanes({"llm": 1})
    info, _ = await store.add_job(
        job_id=f"{session}-dying", session=session, handler="llm", payload=None, priority=0,
        idempotency_key=None,
    )  # fmt: skip
    [claimed] = await store.claim(1, {"llm": ["llm"]})
    assert claimed.job.id == info.id
    await store.append_event(session, info.id, "delta", {}, attempt=1)
    print(info.id, store.epoch, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
