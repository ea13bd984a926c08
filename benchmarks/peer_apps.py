"""The peers' applications for ``bench_postgres_peers.py``: one no-op task each.

Imported by the benchmark (to enqueue) and by ``peer_worker.py`` (to run), so both
sides name the same task, queue and limits, and neither peer sees its app defined
in a ``__main__`` module. ``work(job, session, i)`` appends ``S``/``E`` lines (job,
session, index, attempt 0, wall time) to the file ``log_to`` opened, the format
laneway's cluster nodes write, so one parser replays every system's runs.

- procrastinate: ``App`` on ``PsycopgConnector``, task ``work`` in queue
  ``bench``; jobs are deferred with ``lock=session``, so a session's jobs run one
  at a time in id order. Its concurrency is per worker: there is no limit shared
  across workers.
- DBOS Transact: workflow ``work`` on queue ``bench`` with
  ``partition_concurrency=1`` (partition key = session) and, unless 0,
  ``global_concurrency`` shared by every worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Coroutine
from typing import Any, TypeAlias

import procrastinate
from dbos import DBOS, DBOSConfig
from procrastinate.tasks import Task

POOL = 10  # connections per process, as laneway's ``pool`` default
QUEUE = "bench"
WORK = "work"  # the task's and the workflow's name
APP = "bench"  # DBOS's application name and version: workers dequeue only their version
_log: list[int] = []


def log_to(path: str) -> None:
    _log.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))


def _line(mark: str, job: str, session: str, i: int) -> None:
    for fd in _log:
        os.write(fd, f"{mark} {job} {session} {i} 0 {time.time()}\n".encode())


async def _work(job: str, session: str, i: int) -> None:
    _line("S", job, session, i)
    _line("E", job, session, i)


WorkTask: TypeAlias = Task[[str, str, int], Coroutine[Any, Any, None], [str, str, int]]


def procrastinate_app(url: str) -> tuple[procrastinate.App, WorkTask]:
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=POOL)
    )
    return app, app.task(name=WORK, queue=QUEUE)(_work)


dbos_work = DBOS.workflow(name=WORK)(_work)


def dbos_config(url: str, executor: str) -> DBOSConfig:
    return {
        "name": APP,
        "system_database_url": url,
        "executor_id": executor,
        "application_version": APP,
        "sys_db_pool_size": POOL,
        "log_level": "WARNING",
    }
