"""A peer's worker process for ``bench_postgres_peers.py``.

    python peer_worker.py procrastinate URL LOG NAME --concurrency 32
    python peer_worker.py dbos URL LOG NAME --global-cap 64 --poll 1.0

Runs the no-op task ``work(job, session, i)`` until killed. Each run appends
``S``/``E`` lines (job, session, index, attempt 0, wall time) to LOG, the format
laneway's cluster nodes write, so one parser replays every system's runs. Prints
``ready`` once the worker is set up.

- procrastinate: ``App`` on ``PsycopgConnector``, task in queue ``bench``; the
  submitter defers each job with ``lock=session``, so a session's jobs run one at
  a time in id order. ``--concurrency`` is this worker's own limit: procrastinate
  has no limit shared across workers.
- DBOS Transact: workflow ``work`` on queue ``bench``, registered with
  ``partition_concurrency=1`` (the submitter's partition key is the session) and
  ``global_concurrency`` (shared by every worker) unless ``--global-cap 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
import time

POOL = 10  # connections per process, as laneway's ``pool`` default


def _line(fd: int, mark: str, job: str, session: str, i: int) -> None:
    os.write(fd, f"{mark} {job} {session} {i} 0 {time.time()}\n".encode())


async def run_procrastinate(args: argparse.Namespace, fd: int) -> None:
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=args.url, min_size=1, max_size=POOL)
    )

    @app.task(name="work", queue="bench")
    async def work(job: str, session: str, i: int) -> None:
        _line(fd, "S", job, session, i)
        _line(fd, "E", job, session, i)

    async with app.open_async():
        print("ready", flush=True)
        await app.run_worker_async(
            queues=["bench"], concurrency=args.concurrency, name=args.name, wait=True
        )


def run_dbos(args: argparse.Namespace, fd: int) -> None:
    from dbos import DBOS, DBOSConfig

    @DBOS.workflow(name="work")
    async def work(job: str, session: str, i: int) -> None:
        _line(fd, "S", job, session, i)
        _line(fd, "E", job, session, i)

    config: DBOSConfig = {
        "name": "bench",
        "system_database_url": args.url,
        "executor_id": args.name,
        "application_version": "bench",
        "sys_db_pool_size": POOL,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    DBOS.register_queue(
        "bench",
        partition_concurrency=1,
        global_concurrency=args.global_cap or None,
        polling_interval_sec=args.poll,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    DBOS.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["procrastinate", "dbos"])
    parser.add_argument("url")
    parser.add_argument("log")
    parser.add_argument("name")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--global-cap", type=int, default=64)
    parser.add_argument("--poll", type=float, default=1.0)
    args = parser.parse_args()
    fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    if args.kind == "procrastinate":
        asyncio.run(run_procrastinate(args, fd))
    else:
        run_dbos(args, fd)


if __name__ == "__main__":
    main()
