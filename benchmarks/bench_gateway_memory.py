"""Gateway memory under hostile clients: SSE replays, WebSocket subscriptions, big emits.

Three cases, each against a real ``laneway serve`` (or, for the emit, a real
Laneway in a subprocess), reporting the server's peak RSS (``VmHWM``) above
its idle RSS:

- ``sse``: a session of ``--session-mb`` MB of events, replayed by
  ``--streams`` clients that never read (the server must not hold the log
  once per stream);
- ``ws``: one WebSocket sending ``--frames`` ``subscribe`` frames for
  distinct sessions as fast as it can;
- ``emit``: one handler emitting ``--emit-mb`` MB of event data, into
  ``memory://`` and ``sqlite:///``.

``--src`` (repeatable) runs the cases against other source trees too, e.g. a
``git archive`` of the commit before a change, so "before" and "after" come
from the same run on the same machine::

    python benchmarks/bench_gateway_memory.py
    python benchmarks/bench_gateway_memory.py --src /tmp/before/src --src src
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

SRC = str(Path(__file__).resolve().parents[1] / "src")
TEXT_CHARS = 60_000
TOKEN = "bench-secret-1"


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


@contextmanager
def server(src: str, **env: str) -> Iterator[tuple[str, int]]:
    """A running ``laneway serve`` with a token; yields (url, pid)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("LANEWAY_")}
    full.update(
        PYTHONPATH=src,
        LANEWAY_MODEL="echo",
        LANEWAY_STORE="memory://",
        LANEWAY_LOG_LEVEL="error",
        LANEWAY_TOKENS=f"bench:{TOKEN}",
        LANEWAY_MAX_TEXT_CHARS=str(TEXT_CHARS),
        LANEWAY_MAX_BODY_BYTES=str(TEXT_CHARS + 4096),
        LANEWAY_MAX_QUEUED_PER_SESSION="10000",
    )
    full.update(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "laneway", "serve", "--port", "0"],
        env=full,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("laneway listening on "):
            raise SystemExit(f"server did not start: {line!r}")
        url = line.split()[3]
        for _ in range(300):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
            time.sleep(0.05)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def fill_session(url: str, session: str, megabytes: float) -> int:
    """Echo turns until the session's log holds about ``megabytes`` MB; returns jobs sent."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    jobs = max(1, int(megabytes * 1e6 / (2 * TEXT_CHARS)))  # text in `message` and in the result
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        last = ""
        for i in range(jobs):
            text = f"{i:08d} " + "x" * (TEXT_CHARS - 9)
            resp = client.post(f"/v1/sessions/{session}/messages", json={"text": text})
            resp.raise_for_status()
            last = resp.json()["job_id"]
        while client.get(f"/v1/jobs/{last}").json()["state"] != "succeeded":
            time.sleep(0.05)
    return jobs


def stalled_sse(url: str, session: str, count: int) -> list[socket.socket]:
    """``count`` SSE requests from sockets that never read their answer."""
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(
            f"GET /v1/sessions/{session}/events?after=0 HTTP/1.1\r\nHost: bench\r\n"
            f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        socks.append(sock)
    return socks


def case_sse(src: str, args: argparse.Namespace) -> dict[str, float]:
    # sqlite: every read decodes fresh objects (memory:// would share one copy of the log)
    with (
        tempfile.TemporaryDirectory() as tmp,
        server(src, LANEWAY_STORE=f"sqlite:///{tmp}/b.db") as (url, pid),
    ):
        fill_session(url, "big", args.session_mb)
        idle = rss_kb(pid, "VmRSS")
        socks = stalled_sse(url, "big", args.streams)
        time.sleep(args.settle)
        peak = rss_kb(pid, "VmHWM")
        status = [s.recv(64)[:12] for s in socks[:1]]
        for s in socks:
            s.close()
    grown = (peak - idle) / 1024
    return {
        "idle_mb": idle / 1024,
        "peak_mb": peak / 1024,
        "per_stream_mb": grown / args.streams,
        "first_status": float(b"200" in status[0]),
    }


async def _flood_subscriptions(url: str, frames: int, seconds: float) -> tuple[int, int, float]:
    """Send ``frames`` subscribe frames as fast as the socket takes them, for at most
    ``seconds``; count the answers and time ``/healthz`` meanwhile."""
    from websockets.asyncio.client import connect

    ws_url = url.replace("http://", "ws://") + "/v1/ws"
    counts = {"subscribed": 0, "error": 0}
    worst = 0.0

    async def flood(ws: Any) -> None:
        for i in range(frames):
            await ws.send(json.dumps({"type": "subscribe", "session": f"s{i}"}))

    async def answers(ws: Any) -> None:
        for _ in range(frames):
            kind = json.loads(await ws.recv()).get("type")
            counts[kind] = counts.get(kind, 0) + 1

    def probe() -> float:  # in a thread: this loop is busy flooding
        started = time.perf_counter()
        httpx.get(f"{url}/healthz", timeout=30)
        return time.perf_counter() - started

    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        tasks = [asyncio.ensure_future(flood(ws)), asyncio.ensure_future(answers(ws))]
        deadline = time.monotonic() + seconds
        while not tasks[1].done() and time.monotonic() < deadline:
            worst = max(worst, await asyncio.to_thread(probe))
            await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return counts["subscribed"], counts["error"], worst


def case_ws(src: str, args: argparse.Namespace) -> dict[str, float]:
    with server(src) as (url, pid):
        idle = rss_kb(pid, "VmRSS")
        flood = _flood_subscriptions(url, args.frames, args.ws_seconds)
        subscribed, errors, worst = asyncio.run(flood)
        peak = rss_kb(pid, "VmHWM")
    return {
        "idle_mb": idle / 1024,
        "peak_mb": peak / 1024,
        "subscribed": subscribed,
        "errors": errors,
        "healthz_worst_s": worst,
    }


EMIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, resource, sys
    from laneway import Laneway

    async def main(store, mb):
        lw = Laneway(store)

        @lw.handler("big")
        async def big(ctx, payload):
            await ctx.emit("blob", {"text": "x" * int(mb * 1e6)})

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        async with lw:
            outcome = await (await lw.submit("s", "big", {})).wait()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"state": outcome.state.value, "reason": outcome.reason,
                          "idle_kb": before, "peak_kb": peak}))

    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
    """
)


def case_emit(src: str, args: argparse.Namespace) -> dict[str, float | str]:
    results: dict[str, float | str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for store in ("memory://", f"sqlite:///{tmp}/emit.db"):
            done = subprocess.run(
                [sys.executable, "-c", EMIT_SCRIPT, store, str(args.emit_mb)],
                env={**os.environ, "PYTHONPATH": src},
                capture_output=True,
                text=True,
                check=True,
                timeout=300,
            )
            got = json.loads(done.stdout)
            name = store.split(":")[0]
            results[f"{name}_state"] = f"{got['state']} ({got['reason']})"
            results[f"{name}_peak_mb"] = got["peak_kb"] / 1024
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", help="laneway source tree (repeatable)")
    parser.add_argument("--case", action="append", choices=["sse", "ws", "emit"])
    parser.add_argument("--session-mb", type=float, default=28.0, help="size of the replayed log")
    parser.add_argument("--streams", type=int, default=60, help="stalled SSE replays")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before sampling RSS")
    parser.add_argument("--frames", type=int, default=100_000, help="subscribe frames sent")
    parser.add_argument("--ws-seconds", type=float, default=60.0, help="longest flood")
    parser.add_argument("--emit-mb", type=float, default=100.0, help="size of the one emit")
    args = parser.parse_args()
    cases: dict[str, Callable[[str, argparse.Namespace], Mapping[str, float | str]]] = {
        "sse": case_sse,
        "ws": case_ws,
        "emit": case_emit,
    }
    for src in args.src or [SRC]:
        for name in args.case or list(cases):
            figures = cases[name](src, args)
            shown = "  ".join(
                f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
            )
            print(f"{name:5} {src}: {shown}", flush=True)


if __name__ == "__main__":
    main()
