"""The ``laneway`` command: run the gateway, and talk to a running one.

``laneway serve`` starts the service; ``send``, ``tail``, ``status``, ``top``,
``jobs``, ``job``, ``requeue`` and ``stop`` are clients of its HTTP API
(``--url``, ``--token``, or ``LANEWAY_URL`` / ``LANEWAY_TOKEN``); ``demo`` runs
the in-process chaos run; ``fake-openai`` serves a fake OpenAI-compatible model.
The clients that watch (``top``, ``send --follow``, ``tail``) keep going through
a blocked loop, a slow answer or a server restart.
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
from rich.console import Console

from . import __version__
from ._cli_views import event_line, job_view, jobs_table, lanes_view, report_view
from ._sse_client import GaveUp, HttpError, follow, url_part

__all__ = ["app", "main"]

app = typer.Typer(
    name="laneway",
    help="Per-session FIFO lanes for LLM-agent turns that never wedge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

Url = Annotated[str, typer.Option("--url", envvar="LANEWAY_URL", help="the gateway's address")]
Token = Annotated[
    str | None, typer.Option("--token", envvar="LANEWAY_TOKEN", help="bearer token secret")
]
AsJson = Annotated[bool, typer.Option("--json", help="print the answer as JSON")]
DEFAULT_URL = "http://127.0.0.1:8787"
#: a stream stays open through 15 s heartbeats; silence past this means a dead connection
STREAM_READ_TIMEOUT = 60.0


def main() -> None:
    app()


def _show_version(value: bool) -> None:
    if value:
        out.print(f"laneway {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """Per-session FIFO lanes for LLM-agent turns that never wedge."""


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


def _error_detail(resp: httpx.Response) -> str:
    try:
        error = resp.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return resp.text[:200]


def _check(resp: httpx.Response) -> Any:
    if resp.is_success:
        return resp.json()
    _fail(f"HTTP {resp.status_code} {_error_detail(resp)}")


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


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


# -- send, tail -------------------------------------------------------------------


@app.command()
def send(
    session: str,
    text: str,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="print the reply live")] = False,
    handler: Annotated[str | None, typer.Option(help="handler (default: the model)")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="a retried send with the same key is the same job")
    ] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Send a message; with --follow print the reply as it streams (exit 1 if the turn fails)."""
    body: dict[str, Any] = {"text": text}
    if handler:
        body["handler"] = handler
    if idempotency_key:
        body["idempotency_key"] = idempotency_key
    with _client(url, token, read=STREAM_READ_TIMEOUT if follow_ else 10.0) as client:
        accepted = _check(client.post(f"/v1/sessions/{url_part(session)}/messages", json=body))
        if not follow_:
            _print_json(accepted) if as_json else out.print(accepted["job_id"], highlight=False)
            return
        after = max(0, int(accepted.get("seq") or 1) - 1)  # from the job's own first event
        code = _follow_job(client, session, accepted["job_id"], after, as_json)
    raise typer.Exit(code)


def _reconnecting(reason: str) -> None:
    err.print(f"[yellow]reconnecting[/yellow] ({reason})", highlight=False)


def _events(client: httpx.Client, session: str, after: int) -> Iterator[dict[str, Any]]:
    try:
        yield from follow(client, session, after, on_reconnect=_reconnecting)
    except GaveUp as exc:
        _fail(f"gave up reconnecting to laneway: {exc}")
    except HttpError as exc:
        _fail(f"HTTP {exc.response.status_code} {_error_detail(exc.response)}")


def _follow_job(client: httpx.Client, session: str, job_id: str, after: int, as_json: bool) -> int:
    """Print the job's events as they arrive; the exit code once its terminal event comes."""
    printer = _ReplyPrinter()
    for event in _events(client, session, after):
        if event.get("job_id") != job_id:
            continue
        if as_json:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
        code = printer.show(event, quiet=as_json)
        if code is not None:
            return code
    return 1  # unreachable: _events only ends by failing


class _ReplyPrinter:
    def __init__(self) -> None:
        self.streamed = False

    def _write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        self.streamed = True

    def show(self, event: dict[str, Any], quiet: bool = False) -> int | None:
        kind, data = event["kind"], event.get("data") or {}
        if not isinstance(data, dict):
            data = {}
        # the whole message only when no delta streamed it already
        shows_text = kind == "delta" or (kind == "message" and not self.streamed)
        if shows_text and not quiet:
            self._write(str(data.get("text", "")))
        elif kind == "job.retry":
            err.print(f"\n[yellow]retrying[/yellow] ({data.get('reason')})", highlight=False)
            self.streamed = False
        elif kind.startswith("job.") and kind not in ("job.queued", "job.started", "job.requeued"):
            return self._end(kind, data, quiet)
        return None

    def _end(self, kind: str, data: dict[str, Any], quiet: bool) -> int:
        if self.streamed and not quiet:
            sys.stdout.write("\n")
        sys.stdout.flush()
        if kind == "job.succeeded":
            return 0
        reason = f" ({data.get('reason')})" if data.get("reason") else ""
        error = f": {data.get('error')}" if data.get("error") else ""
        err.print(f"[red]turn {kind[4:]}[/red]{reason}{error}", highlight=False)
        return 1


@app.command()
def tail(
    session: str,
    after: Annotated[int, typer.Option(min=0, help="start after this seq (0: the whole log)")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON event per line")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Print a session's events, then follow it live (Ctrl-C to quit)."""
    with _client(url, token, read=STREAM_READ_TIMEOUT) as client:
        try:
            for event in _events(client, session, after):
                line = json.dumps(event) if as_json else event_line(event)
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
        except KeyboardInterrupt:
            return


# -- inspection -----------------------------------------------------------------


@app.command()
def status(as_json: AsJson = False, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Lanes, queue depths, zombies and loop lag, once."""
    with _client(url, token) as client:
        snap = _check(client.get("/v1/lanes"))
    _print_json(snap) if as_json else out.print(lanes_view(snap))


class _Watch:
    """One frame of ``top`` at a time; through failures it shows the last one, marked stale."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.last: dict[str, Any] | None = None
        self.down_since: float | None = None

    def frame(self) -> tuple[Any, str | None]:
        """The view to show and, while the gateway does not answer, why."""
        problem = self._poll()
        if problem is None:
            self.down_since = None
        elif self.down_since is None:
            self.down_since = time.monotonic()
        note = None
        if problem is not None:
            since = time.monotonic() - self.down_since if self.down_since else 0.0
            note = f"reconnecting: {problem} (for {since:.0f}s; showing the last answer)"
        if self.last is None:
            return (note or "waiting for the first answer"), problem
        return lanes_view(self.last, note), problem

    def _poll(self) -> str | None:
        try:
            resp = self.client.get("/v1/lanes")
        except httpx.TransportError as exc:
            return str(exc) or type(exc).__name__
        if resp.status_code == 401:
            _fail(f"HTTP 401 {_error_detail(resp)}")
        if not resp.is_success:
            return f"HTTP {resp.status_code}"
        self.last = resp.json()
        return None


@app.command()
def top(
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between refreshes")] = 1.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait for an answer")] = 5.0,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """A live view of the lanes (Ctrl-C to quit); it rides out restarts and slow answers."""
    with _client(url, token, read=timeout) as client:
        if once:
            out.print(lanes_view(_check(client.get("/v1/lanes"))))
            return
        try:
            _top_loop(_Watch(client), interval)
        except KeyboardInterrupt:
            return


def _top_loop(watch: _Watch, interval: float) -> None:
    if not out.is_terminal:  # a pipe or a log: frames one after another, no redraws
        shown: str | None = "start"
        while True:
            view, problem = watch.frame()
            if problem is None or problem != shown:
                out.print(view)
                sys.stdout.flush()
            shown = problem
            time.sleep(interval)
    from rich.live import Live

    with Live(console=out, auto_refresh=False) as live:
        while True:
            live.update(watch.frame()[0], refresh=True)
            time.sleep(interval)


@app.command()
def jobs(
    state: Annotated[str | None, typer.Option(help="queued, running, failed, dead, ...")] = None,
    session: Annotated[str | None, typer.Option(help="only this session")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: AsJson = False,
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
    _print_json(listing) if as_json else out.print(jobs_table(listing["jobs"]))


@app.command()
def job(job_id: str, as_json: AsJson = False, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """One job: state, attempts, reason, error, payload and result."""
    with _client(url, token) as client:
        info = _check(client.get(f"/v1/jobs/{url_part(job_id)}"))
    _print_json(info) if as_json else out.print(job_view(info))


@app.command()
def requeue(job_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Send a failed, timed_out or dead job back to its session's queue."""
    with _client(url, token) as client:
        done = _check(client.post(f"/v1/jobs/{url_part(job_id)}/requeue"))
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
            client.post(f"/v1/sessions/{url_part(session)}/stop", json={"drop_queued": drop_queued})
        )
    out.print(
        f"cancelled {len(result['cancelled'])} running, dropped {len(result['dropped'])} queued",
        highlight=False,
    )


# -- demo, fake-openai --------------------------------------------------------------


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
    out.print(report_view(report))
    raise typer.Exit(0 if report.ok else 1)


@app.command("fake-openai")
def fake_openai(
    port: Annotated[int, typer.Option(min=0, max=65535, help="port on 127.0.0.1 (0: any)")] = 0,
) -> None:
    """A fake OpenAI-compatible model on loopback, to try LANEWAY_MODEL=openai offline."""
    import asyncio

    from .testing import FakeOpenAI

    async def run() -> None:
        async with FakeOpenAI(port=port) as fake:
            print(f"fake OpenAI endpoint on {fake.base_url} (Ctrl-C to stop). Try:", flush=True)
            print(
                f"  LANEWAY_MODEL=openai LANEWAY_OPENAI_BASE_URL={fake.base_url} "
                f"LANEWAY_OPENAI_MODEL={fake.model} LANEWAY_OPENAI_API_KEY=unused laneway serve",
                flush=True,
            )
            await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return
    except OSError as exc:
        _fail(f"cannot serve on port {port}: {exc}")
