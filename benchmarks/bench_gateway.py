"""Gateway load: 500 open SSE streams while messages arrive at 1,000/s.

Starts a real ``laneway serve`` (the ``echo`` model: the handler costs
nothing, so the figures are the gateway's) for each store, and as the
baseline a bare FastAPI app on the same uvicorn stack that accepts the same
POST and fans the same number of events out to the same SSE streams through
in-memory queues (no laneway). Each configuration runs ``--repeat`` times;
the table shows medians.

The load generator is this process: raw asyncio sockets speaking HTTP/1.1
(keep-alive POST connections paced open-loop at the target rate; latency is
measured from each message's scheduled send time, so a stalled server cannot
hide its backlog), plus one socket per SSE stream counting ``event:`` lines.

    python benchmarks/bench_gateway.py                      # memory:// vs bare FastAPI
    python benchmarks/bench_gateway.py --store sqlite:///{tmp}/bench.db
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

EVENTS_PER_MESSAGE = 4  # job.queued, job.started, message, job.succeeded
SRC = str(Path(__file__).resolve().parents[1] / "src")


# -- the baseline app -------------------------------------------------------------


def bare_app() -> FastAPI:
    """FastAPI without laneway: same routes, same fan-out, events kept in memory."""
    app = FastAPI()
    subscribers: dict[str, set[asyncio.Queue[bytes]]] = {}
    seqs: dict[str, int] = {}
    counter = iter(range(1, 1 << 62))

    def publish(session: str, job_id: str, kind: str, data: Any) -> None:
        seq = seqs[session] = seqs.get(session, 0) + 1
        event = {"seq": seq, "session": session, "job_id": job_id, "kind": kind, "data": data}
        frame = f"id: {seq}\nevent: {kind}\ndata: {json.dumps(event)}\n\n".encode()
        for queue in subscribers.get(session, ()):
            queue.put_nowait(frame)

    async def turn(session: str, job_id: str, text: str) -> None:
        publish(session, job_id, "job.started", {"attempt": 1})
        publish(session, job_id, "message", {"role": "assistant", "text": text})
        publish(session, job_id, "job.succeeded", {"state": "succeeded", "result": text})

    @app.post("/v1/sessions/{session}/messages", status_code=202)
    async def post(session: str, request: Request) -> JSONResponse:
        body = await request.json()
        job_id = f"bare-{next(counter)}"
        publish(session, job_id, "job.queued", {"payload": body})
        asyncio.get_running_loop().create_task(turn(session, job_id, body["text"]))
        return JSONResponse({"job_id": job_id, "session": session, "state": "queued"}, 202)

    @app.get("/v1/sessions/{session}/events")
    async def events(session: str) -> StreamingResponse:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        subscribers.setdefault(session, set()).add(queue)

        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 1000\n\n"
                while True:
                    yield await queue.get()
            finally:
                subscribers[session].discard(queue)

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def serve_bare(port: int) -> None:
    import uvicorn

    print(f"laneway listening on http://127.0.0.1:{port} (bare FastAPI)", flush=True)
    uvicorn.run(bare_app(), host="127.0.0.1", port=port, log_level="warning")


# -- servers --------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def server(store: str | None, src: str) -> Iterator[int]:
    """A running server (``store=None``: the bare baseline); yields its port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANEWAY_")}
    env.update(PYTHONPATH=src, LANEWAY_MODEL="echo", LANEWAY_LOG_LEVEL="warning")
    # All streams come from one (tokenless) client here: lift the per-token stream cap.
    env.update(LANEWAY_MAX_STREAMS_PER_TOKEN="100000")
    if store is None:
        argv = [sys.executable, __file__, "--serve-bare", str(port)]
    else:
        argv = [sys.executable, "-m", "laneway", "serve", "--port", str(port), "--store", store]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("server never became ready")


# -- the load generator -----------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> int:
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


class Stream:
    """One SSE stream on a raw socket, counting the events it receives."""

    def __init__(self, port: int, session: str) -> None:
        self.port = port
        self.session = session
        self.events = 0
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        writer.write(
            f"GET /v1/sessions/{self.session}/events HTTP/1.1\r\nHost: bench\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        tail = b""
        try:
            while chunk := await reader.read(65536):
                data = tail + chunk
                self.events += data.count(b"\nevent: ")
                tail = data[-8:]
                # a split "\nevent: " is counted once: drop what was counted from the tail
                self.events -= tail.count(b"\nevent: ")
                if not self.ready.is_set() and b"retry:" in data:
                    self.ready.set()
        finally:
            writer.close()


@dataclass
class Result:
    label: str
    sent: int
    accepted: int
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    streams_complete: int
    streams: int
    events: int
    events_expected: int


async def drive(port: int, label: str, rate: float, duration: float, n_streams: int) -> Result:
    sessions = [f"bench{i}" for i in range(n_streams)]
    streams = [Stream(port, s) for s in sessions]
    for stream in streams:
        stream.task = asyncio.create_task(stream.run())
    async with asyncio.timeout(30):
        await asyncio.gather(*(s.ready.wait() for s in streams))

    total = int(rate * duration)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    work: asyncio.Queue[tuple[float, str, int]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def poster() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                due, session, n = await work.get()
                body = json.dumps({"text": f"message {n}"}).encode()
                head = (
                    f"POST /v1/sessions/{session}/messages HTTP/1.1\r\nHost: bench\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body)
                status = await read_response(reader)
                latencies.append(loop.time() - due)
                statuses[status] = statuses.get(status, 0) + 1
                work.task_done()
        finally:
            writer.close()

    posters = [asyncio.create_task(poster()) for _ in range(64)]
    start = loop.time() + 0.05
    for n in range(total):
        due = start + n / rate
        if (wait := due - loop.time()) > 0.001:
            await asyncio.sleep(wait)
        work.put_nowait((due, sessions[n % n_streams], n))
    await work.join()
    elapsed = loop.time() - start
    for task in posters:
        task.cancel()

    accepted = statuses.get(202, 0)
    expected = {s.session: 0 for s in streams}
    for n in range(total):
        expected[sessions[n % n_streams]] += EVENTS_PER_MESSAGE
    deadline = loop.time() + 60
    while loop.time() < deadline and any(s.events < expected[s.session] for s in streams):
        await asyncio.sleep(0.1)
    for stream in streams:
        assert stream.task is not None
        stream.task.cancel()
    await asyncio.gather(*posters, *(s.task for s in streams if s.task), return_exceptions=True)

    latencies.sort()
    return Result(
        label=label,
        sent=total,
        accepted=accepted,
        rate=accepted / elapsed,
        p50_ms=latencies[len(latencies) // 2] * 1000,
        p99_ms=latencies[int(len(latencies) * 0.99)] * 1000,
        max_ms=latencies[-1] * 1000,
        streams_complete=sum(s.events >= expected[s.session] for s in streams),
        streams=len(streams),
        events=sum(s.events for s in streams),
        events_expected=sum(expected.values()),
    )


def median_result(runs: list[Result]) -> Result:
    first = runs[0]

    def med(name: str) -> float:
        return float(statistics.median(float(getattr(r, name)) for r in runs))

    return Result(
        label=first.label,
        sent=first.sent,
        accepted=min(r.accepted for r in runs),
        rate=med("rate"),
        p50_ms=med("p50_ms"),
        p99_ms=med("p99_ms"),
        max_ms=med("max_ms"),
        streams_complete=min(r.streams_complete for r in runs),
        streams=first.streams,
        events=min(r.events for r in runs),
        events_expected=first.events_expected,
    )


def run_config(label: str, store: str | None, args: argparse.Namespace) -> Result:
    runs = []
    for i in range(args.repeat):
        # A fresh database per run: the streams connect without ?after=, so a
        # reused one would also replay every earlier run's events under load.
        url = store.replace(".db", f"-run{i}.db") if store and store.startswith("sqlite") else store
        with server(url, args.src) as port:
            result = asyncio.run(drive(port, label, args.rate, args.duration, args.streams))
        print(
            f"  {label} run {i + 1}: {result.rate:.0f} msg/s, p50 {result.p50_ms:.1f} ms, "
            f"p99 {result.p99_ms:.1f} ms, streams complete {result.streams_complete}/"
            f"{result.streams}",
            flush=True,
        )
        runs.append(result)
    return median_result(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load per run")
    parser.add_argument("--streams", type=int, default=500, help="open SSE streams")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration")
    parser.add_argument(
        "--store", action="append", help="laneway store URL(s); {tmp} is a temp dir"
    )
    parser.add_argument("--src", default=SRC, help="laneway source tree the server imports")
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return

    print(
        f"load generator: this process (asyncio, raw HTTP/1.1 sockets), {args.streams} SSE "
        f"streams (one socket each, one session each), 64 keep-alive POST connections paced "
        f"open-loop at {args.rate:.0f} msg/s for {args.duration:.0f} s, messages round-robin "
        f"over the sessions; latency from each message's scheduled send time to its 202; "
        f"{args.repeat} runs per configuration, medians shown; server and generator share "
        f"this machine's {os.cpu_count()} cores."
    )
    with tempfile.TemporaryDirectory() as tmp:
        stores = [s.replace("{tmp}", tmp) for s in (args.store or ["memory://"])]
        results = [run_config("bare FastAPI", None, args)]
        for i, store in enumerate(stores):
            label = f"laneway {store.split('://')[0]}"
            store_url = store.replace(".db", f"{i}.db") if store.startswith("sqlite") else store
            results.append(run_config(label, store_url, args))
    report(results)


def report(results: list[Result]) -> None:
    base = results[0]
    print()
    print(
        f"{'':16} {'msg/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'streams ok':>11} {'events':>15} {'p99 vs bare':>11}"
    )
    for r in results:
        print(
            f"{r.label:16} {r.rate:7.0f} {r.p50_ms:7.1f} {r.p99_ms:7.1f} {r.max_ms:7.1f} "
            f"{r.streams_complete:>5}/{r.streams:<5} {r.events:>7}/{r.events_expected:<7} "
            f"{r.p99_ms / base.p99_ms:10.2f}x"
        )
    for r in results[1:]:
        ok = r.rate >= 0.97 * base.rate and r.p99_ms <= 50 and r.streams_complete == r.streams
        print(
            f"{r.label}: {'meets' if ok else 'MISSES'} the goal (rate kept, submit p99 <= 50 ms, "
            "every stream got every event)"
        )


if __name__ == "__main__":
    main()
