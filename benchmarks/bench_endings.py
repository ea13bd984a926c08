"""Endings benchmark: how long a crash loop takes to quarantine its culprit, and
how long ``laneway serve`` takes from SIGTERM to exit.

Run: ``python benchmarks/bench_endings.py [--src DIR]``; ``--src`` points the
worker processes at another source tree (``DIR/src``) to measure the rule of
another revision with the same script (the baseline: ``git archive main``).

- crash loop: lane ``llm: 8``, ``poison_after=3``, 8 turns in flight (one
  culprit calling ``os._exit(3)`` 0.3 s into its turn, seven 0.5 s innocents),
  on a SQLite file; the process is restarted until a run exits cleanly.
  Reported: restarts, seconds, and how many innocents ended ``dead``.
- SIGTERM: a real ``laneway serve`` on SQLite, idle and with a ``/slow 3``
  turn streaming (default grace), seconds from the signal to the exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

WORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    from laneway import Laneway, Limits, Retry, TurnContext

    async def main() -> None:
        lw = Laneway(f"sqlite:///{sys.argv[1]}", lanes={"llm": 8}, poison_after=3,
                     retry=Retry(max_attempts=5, backoff=0.01),
                     limits=Limits(deadline=60, idle=None), watchdog_threshold=None)

        @lw.handler("turn", lanes=("llm",))
        async def turn(ctx: TurnContext, crash: bool) -> str:
            await asyncio.sleep(0.3 if crash else 0.5)
            if crash:
                os._exit(3)
            return "ok"

        await lw.start()
        if sys.argv[2:] == ["first"]:
            await lw.submit("culprit", "turn", True)
            for i in range(7):
                await lw.submit(f"innocent{i}", "turn", False)
        await lw.join()
        await lw.close()

    asyncio.run(main())
    """
)


def crash_loop(src: str) -> tuple[int, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        db, worker = Path(tmp) / "loop.db", Path(tmp) / "worker.py"
        worker.write_text(WORKER)
        env = {**os.environ, "PYTHONPATH": src}
        t0, restarts = time.monotonic(), 0
        args = [sys.executable, str(worker), str(db), "first"]
        while subprocess.run(args, env=env, check=False, timeout=120).returncode != 0:
            restarts += 1
            args = args[:3]
        took = time.monotonic() - t0
        with sqlite3.connect(db) as conn:
            rows = dict(conn.execute("SELECT session, state FROM jobs").fetchall())
    assert rows["culprit"] == "dead", rows
    return restarts, took, sum(state == "dead" for s, state in rows.items() if s != "culprit")


def sigterm(src: str, busy: bool) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": src, "LANEWAY_STORE": f"sqlite:///{tmp}/s.db"}
        env["LANEWAY_LOG_LEVEL"] = "warning"
        proc = subprocess.Popen(
            [sys.executable, "-m", "laneway", "serve", "--port", "0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[3]
        if busy:
            httpx.post(f"{url}/v1/sessions/b/messages", json={"text": "/slow 3"})
            time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        return time.monotonic() - t0, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", default=str(Path(__file__).parents[1]), help="source tree")
    src = str(Path(parser.parse_args().src) / "src")
    restarts, took, innocents = crash_loop(src)
    print(f"crash loop, 8 in flight: {restarts} restarts, {took:.1f}s, innocents dead: {innocents}")
    for busy in (False, True):
        took, code = sigterm(src, busy)
        print(f"SIGTERM {'busy (/slow 3)' if busy else 'idle'}: {took:.2f}s to exit, code {code}")


if __name__ == "__main__":
    main()
