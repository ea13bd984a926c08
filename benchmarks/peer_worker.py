"""A peer's worker process for ``bench_postgres_peers.py``, until killed.

    python peer_worker.py procrastinate URL LOG NAME --concurrency 32
    python peer_worker.py dbos URL LOG NAME --global-cap 64 --poll 1.0

Runs ``peer_apps``' task ``work``, logging each run to LOG; prints ``ready`` once
the worker is set up.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading

from dbos import DBOS

import peer_apps


async def run_procrastinate(args: argparse.Namespace) -> None:
    app, _ = peer_apps.procrastinate_app(args.url)
    async with app.open_async():
        print("ready", flush=True)
        await app.run_worker_async(
            queues=[peer_apps.QUEUE], concurrency=args.concurrency, name=args.name, wait=True
        )


def run_dbos(args: argparse.Namespace) -> None:
    DBOS(config=peer_apps.dbos_config(args.url, args.name))
    DBOS.launch()
    DBOS.register_queue(
        peer_apps.QUEUE,
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
    peer_apps.log_to(args.log)
    if args.kind == "procrastinate":
        asyncio.run(run_procrastinate(args))
    else:
        run_dbos(args)


if __name__ == "__main__":
    main()
