"""The ``laneway`` command: run the gateway, and talk to a running one.

``laneway serve`` starts the service; ``send``, ``status``, ``top``, ``jobs``,
``requeue`` and ``stop`` are clients of its HTTP API (``--url``, ``--token``,
or ``LANEWAY_URL`` / ``LANEWAY_TOKEN``); ``demo`` runs the in-process chaos run.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console, Group
from rich.table import Table

__all__ = ["app", "main"]

app = typer.Typer(
    name="laneway",
    help="Per-session FIFO lanes for LLM-agent turns that never wedge.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

Url = Annotated[str, typer.Option("--url", envvar="LANEWAY_URL", help="the gateway's address")]
Token = Annotated[
    str | None, typer.Option("--token", envvar="LANEWAY_TOKEN", help="bearer token secret")
]
DEFAULT_URL = "http://127.0.0.1:8787"


def main() -> None:
    app()


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def _client(url: str, token: str | None, read: float | None = 10.0) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx.Timeout(10.0, read=read)
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout) as client:
            yield client
    except httpx.TransportError as exc:
        _fail(f"cannot reach laneway at {url}: {exc or type(exc).__name__}")


def _check(resp: httpx.Response) -> Any:
    if resp.is_success:
        return resp.json()
    try:
        error = resp.json()["error"]
        detail = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        detail = resp.text[:200]
    _fail(f"HTTP {resp.status_code} {detail}")


# -- serve --------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="address to bind [LANEWAY_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port to bind [LANEWAY_PORT]")] = None,
    store: Annotated[str | None, typer.Option(help="store URL [LANEWAY_STORE]")] = None,
    config: Annotated[
        Path | None, typer.Option(help="settings file (default ./laneway.toml)")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="debug, info, warning, error")
    ] = None,
) -> None:
    """Run the gateway (embedded defaults: sqlite:///laneway.db, the demo model)."""
    from .gateway import SettingsError, load_settings
    from .gateway._serve import EXIT_BAD_CONFIG
    from .gateway._serve import serve as run
    from .gateway._startup import fail

    try:
        settings = load_settings(config, host=host, port=port, store=store, log_level=log_level)
    except SettingsError as exc:
        raise typer.Exit(fail(str(exc), EXIT_BAD_CONFIG)) from None
    raise typer.Exit(run(settings))


# -- send ---------------------------------------------------------------------


@app.command()
def send(
    session: str,
    text: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="print the reply live")] = False,
    handler: Annotated[str | None, typer.Option(help="handler (default: the model)")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Send a message; with --follow print the reply as it streams (exit 1 if the turn fails)."""
    body: dict[str, Any] = {"text": text}
    if handler:
        body["handler"] = handler
    with _client(url, token, read=None if follow else 10.0) as client:
        accepted = _check(client.post(f"/v1/sessions/{session}/messages", json=body))
        job_id = accepted["job_id"]
        if not follow:
            out.print(job_id, highlight=False)
            return
        code = _follow(client, session, job_id)
    raise typer.Exit(code)


def _follow(client: httpx.Client, session: str, job_id: str) -> int:
    """Print the job's deltas as they arrive; the exit code once its terminal event comes."""
    printer = _ReplyPrinter()
    with client.stream("GET", f"/v1/sessions/{session}/events", params={"after": 0}) as resp:
        if not resp.is_success:
            resp.read()
            _check(resp)
        for event in _sse_events(resp.iter_lines()):
            if event.get("job_id") == job_id and (code := printer.show(event)) is not None:
                return code
    _fail("the event stream ended before the turn finished")


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield json.loads("\n".join(data))
            data.clear()


class _ReplyPrinter:
    def __init__(self) -> None:
        self.streamed = False

    def show(self, event: dict[str, Any]) -> int | None:
        kind, data = event["kind"], event.get("data") or {}
        if kind == "delta" and isinstance(data, dict):
            sys.stdout.write(str(data.get("text", "")))
            sys.stdout.flush()
            self.streamed = True
        elif kind == "message" and isinstance(data, dict) and not self.streamed:
            sys.stdout.write(str(data.get("text", "")))
            self.streamed = True
        elif kind == "job.retry":
            err.print(f"\n[yellow]retrying[/yellow] ({data.get('reason')})", highlight=False)
            self.streamed = False
        elif kind.startswith("job.") and kind not in ("job.queued", "job.started", "job.requeued"):
            if self.streamed:
                sys.stdout.write("\n")
            sys.stdout.flush()
            if kind == "job.succeeded":
                return 0
            reason = f" ({data.get('reason')})" if data.get("reason") else ""
            error = f": {data.get('error')}" if data.get("error") else ""
            err.print(f"[red]turn {kind[4:]}[/red]{reason}{error}", highlight=False)
            return 1
        return None


# -- inspection -----------------------------------------------------------------


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def _lanes_view(snap: dict[str, Any]) -> Group:
    table = Table(title="lanes", title_justify="left")
    for col in ("lane", "active", "queued", "oldest active", "oldest queued"):
        table.add_column(col, justify="left" if col == "lane" else "right")
    for lane in snap["lanes"]:
        table.add_row(
            lane["name"],
            f"{lane['active']}/{lane['limit']}",
            str(lane["queued"]),
            _age(lane["oldest_active_s"]),
            _age(lane["oldest_queued_s"]),
        )
    summary = (
        f"jobs queued {snap['jobs_queued']}  running {snap['jobs_running']}  "
        f"zombies {len(snap['zombies'])}  loop lag {snap['loop_lag'] * 1000:.0f} ms  "
        f"loop blocks {snap['loop_blocks']}"
    )
    parts: list[Any] = [table, summary]
    if snap["zombies"]:
        zt = Table(title="zombies (abandoned, slots freed)", title_justify="left")
        for col in ("job", "session", "kind", "age"):
            zt.add_column(col)
        for z in snap["zombies"]:
            zt.add_row(z["job_id"], z["session"], z["kind"], _age(z["age_s"]))
        parts.append(zt)
    return Group(*parts)


@app.command()
def status(url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Lanes, queue depths, zombies and loop lag, once."""
    with _client(url, token) as client:
        out.print(_lanes_view(_check(client.get("/v1/lanes"))))


@app.command()
def top(
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between refreshes")] = 1.0,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """A live view of the lanes, refreshed every second (Ctrl-C to quit)."""
    from rich.live import Live

    with _client(url, token) as client:
        if once:
            out.print(_lanes_view(_check(client.get("/v1/lanes"))))
            return
        with Live(console=out, auto_refresh=False) as live:
            try:
                while True:
                    live.update(_lanes_view(_check(client.get("/v1/lanes"))), refresh=True)
                    time.sleep(interval)
            except KeyboardInterrupt:
                return


@app.command()
def jobs(
    state: Annotated[str | None, typer.Option(help="queued, running, failed, dead, ...")] = None,
    session: Annotated[str | None, typer.Option(help="only this session")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Jobs, newest first (e.g. --state dead for the quarantined ones)."""
    params: dict[str, Any] = {"limit": limit}
    if state:
        params["state"] = state
    if session:
        params["session"] = session
    with _client(url, token) as client:
        listing = _check(client.get("/v1/jobs", params=params))
    table = Table()
    for col in ("id", "session", "handler", "state", "attempts", "reason"):
        table.add_column(col, no_wrap=True)
    table.add_column("error", overflow="fold")
    for job in listing["jobs"]:
        error = (job["error"] or "")[:60]
        table.add_row(
            job["id"],
            job["session"],
            job["handler"],
            job["state"],
            str(job["attempts"]),
            job["reason"] or "",
            error,
        )
    out.print(table)


@app.command()
def requeue(job_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Send a failed, timed_out or dead job back to its session's queue."""
    with _client(url, token) as client:
        done = _check(client.post(f"/v1/jobs/{job_id}/requeue"))
    out.print(f"requeued {done['job_id']} (session {done['session']})", highlight=False)


@app.command()
def stop(
    session: str,
    drop_queued: Annotated[bool, typer.Option(help="also cancel queued messages")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """End the session's running turn (and with --drop-queued its queue)."""
    with _client(url, token) as client:
        result = _check(
            client.post(f"/v1/sessions/{session}/stop", json={"drop_queued": drop_queued})
        )
    out.print(
        f"cancelled {len(result['cancelled'])} running, dropped {len(result['dropped'])} queued",
        highlight=False,
    )


# -- demo -------------------------------------------------------------------------


@app.command()
def demo(
    sessions: Annotated[int, typer.Option(min=1, help="chat sessions")] = 300,
    messages: Annotated[int, typer.Option(min=1, help="messages in all")] = 3000,
    seed: Annotated[int | None, typer.Option(help="random seed (repeatable runs)")] = None,
) -> None:
    """An in-process chaos run: hangs, stalls, swallowed cancels, loop blocks, crashes."""
    import asyncio

    from rich.progress import Progress

    try:
        from ._chaos import run_chaos  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name != "laneway._chaos":
            raise
        _fail("laneway demo is not available in this build (laneway._chaos is missing)")
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("chaos", total=messages)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = asyncio.run(
            run_chaos(sessions=sessions, messages=messages, seed=seed, progress=advance)
        )
    out.print(_report_view(report))
    raise typer.Exit(0 if report.ok else 1)


def _report_view(report: Any) -> Table:
    table = Table(title="laneway demo", title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    for label, value in report.rows():
        table.add_row(label, value)
    return table
