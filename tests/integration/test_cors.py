"""A chat page on another origin uses the API from headless Chromium:
``LANEWAY_CORS_ORIGINS`` lets its ``fetch`` POST through, and its
``EventSource`` streams the reply and, across a server restart, reconnects by
itself and resumes from ``Last-Event-ID`` with no event lost or repeated."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ._browser import chromium
from .conftest import LiveServer, read_events, session_name, start_server

pytestmark = pytest.mark.slow

CHAT_PAGE = """<!doctype html><meta charset="utf-8"><title>chat</title>
<script>
const API = "__API__", SESSION = "__SESSION__";
window.events = [];
window.send = async (text) => {
  const r = await fetch(API + "/v1/sessions/" + SESSION + "/messages", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({text}),
  });
  return {status: r.status, body: await r.json()};
};
const source = new EventSource(API + "/v1/sessions/" + SESSION + "/events");
for (const kind of ["job.queued", "job.started", "delta", "message", "job.succeeded"]) {
  source.addEventListener(kind, (e) => {
    const ev = JSON.parse(e.data);
    window.events.push({id: Number(e.lastEventId), kind: ev.kind, job: ev.job_id});
  });
}
</script>"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def page_server(html: str) -> Iterator[str]:
    """Serve ``html`` at ``/`` from a second loopback origin."""
    body = html.encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _serve(port: int, db: Path, origin: str) -> LiveServer:
    return start_server(
        "--port", str(port), LANEWAY_STORE=f"sqlite:///{db}", LANEWAY_CORS_ORIGINS=origin
    )


def test_other_origins_are_refused_by_default() -> None:
    server = start_server()
    try:
        with server.client() as client:
            pre = client.options(
                "/v1/sessions/x/messages",
                headers={"Origin": "http://127.0.0.1:1", "Access-Control-Request-Method": "POST"},
            )
            assert "access-control-allow-origin" not in pre.headers
    finally:
        server.stop()


def test_a_page_on_another_origin_posts_and_streams_across_a_restart(tmp_path: Path) -> None:
    port, db, s = free_port(), tmp_path / "cors.db", session_name()
    html = CHAT_PAGE.replace("__API__", f"http://127.0.0.1:{port}").replace("__SESSION__", s)
    with page_server(html) as origin, chromium() as browser:
        server = _serve(port, db, origin)
        try:
            page = browser.new_page()
            page.goto(origin)
            first = page.evaluate("send('hello across origins')")
            assert first["status"] == 202
            page.wait_for_function(_succeeded(first["body"]["job_id"]), timeout=10_000)
        finally:
            server.stop()  # the stream breaks; the page keeps only its last event id
        server = _serve(port, db, origin)
        try:
            with server.client() as client:  # sent before the page reconnects
                resp = client.post(f"/v1/sessions/{s}/messages", json={"text": "while away"})
                job2 = resp.json()["job_id"]
                page.wait_for_function(_succeeded(job2), timeout=15_000)
                log = read_events(client, s, until_job=job2)
            seen = page.evaluate("window.events")
            assert [e["id"] for e in seen] == [e["seq"] for e in log]  # none lost, none twice
            assert [e["kind"] for e in seen] == [e["kind"] for e in log]
            assert len({e["job"] for e in seen}) == 2
            page.close()
        finally:
            server.stop()


def _succeeded(job_id: str) -> str:
    return f"window.events.some(e => e.kind === 'job.succeeded' && e.job === {job_id!r})"
