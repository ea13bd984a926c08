"""The operator's web console: ``GET /ui``, its static files, its JSON feed and
the index page at ``/``.

The page is plain HTML with one small script (``static/console.js``) that polls
the public API and ``/ui/state`` and follows a session's events; everything it
loads is served from here, so it works on machines without internet. With
tokens the page asks for one and every call carries it, so it shows only that
token's sessions.
"""

from __future__ import annotations

import asyncio
import html
import time
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from .. import __version__
from ._activity import Activity, Turn
from ._auth import Caller, Principal
from ._gateway import Gateway

__all__ = ["install_console"]

STATIC = Path(__file__).parent / "static"
#: a turn this close to a limit (share of it used) is flagged in the console
WORRY_SHARE = 0.6

console_router = APIRouter(include_in_schema=False)


class TurnOut(BaseModel):
    job_id: str
    session: str
    handler: str | None
    attempt: int
    age_s: float
    quiet_s: float
    idle_s: float | None
    deadline_s: float | None
    worry: list[str]


class BlockOut(BaseModel):
    at: float
    blocked_s: float
    stack: str


class ConsoleState(BaseModel):
    version: str
    tokens: bool
    turns: list[TurnOut]
    blocks: list[BlockOut]


def _page(name: str, **values: str) -> HTMLResponse:
    text = (STATIC / name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value))
    return HTMLResponse(text, headers={"Cache-Control": "no-store"})


@console_router.get("/")
async def index() -> HTMLResponse:
    """Where to go: the console, the API docs, health and metrics."""
    return _page("index.html", version=__version__)


@console_router.get("/ui")
async def console() -> HTMLResponse:
    """The console's page; its data comes from the API, with the caller's token."""
    return _page("console.html", version=__version__)


def _worries(turn: TurnOut, zombie: bool) -> list[str]:
    worry = []
    if zombie:
        worry.append("zombie: ignored cancellation, slots freed")
    if turn.idle_s and turn.quiet_s >= WORRY_SHARE * turn.idle_s:
        worry.append(f"quiet {turn.quiet_s:.0f}s of idle limit {turn.idle_s:.0f}s")
    if turn.deadline_s and turn.age_s >= WORRY_SHARE * turn.deadline_s:
        worry.append(f"{turn.age_s:.0f}s of deadline {turn.deadline_s:.0f}s")
    if turn.attempt > 1:
        worry.append(f"attempt {turn.attempt}")
    return worry


async def _turn_out(gw: Gateway, who: Principal, turn: Turn, now: float) -> TurnOut:
    info = await gw.lw.get(turn.job_id)
    handler = info.handler if info is not None else None
    spec = gw.lw.handlers.get(handler) if handler is not None else None
    deadline, idle = (spec.resolved.deadline, spec.resolved.idle) if spec else (None, None)
    return TurnOut(
        job_id=turn.job_id,
        session=who.external(turn.session),
        handler=handler,
        attempt=turn.attempt,
        age_s=max(0.0, now - turn.started_at),
        quiet_s=max(0.0, now - turn.last_output_at),
        idle_s=idle,
        deadline_s=deadline,
        worry=[],
    )


@console_router.get("/ui/state")
async def state(request: Request, who: Caller) -> ConsoleState:
    """Running turns (age, time since output, what to worry about) and recent loop blocks."""
    gw: Gateway = request.app.state.gateway
    activity: Activity = request.app.state.activity
    now = time.time()
    mine = [t for t in list(activity.turns.values()) if who.owns(t.session)][:200]
    turns = await asyncio.gather(*(_turn_out(gw, who, t, now) for t in mine))
    zombies = {z.job_id for z in gw.lw.snapshot().zombies}
    for turn in turns:
        turn.worry = _worries(turn, turn.job_id in zombies)
    turns.sort(key=lambda t: -t.age_s)
    blocks = [BlockOut(at=b.at, blocked_s=b.blocked_s, stack=b.stack) for b in activity.blocks]
    return ConsoleState(
        version=__version__, tokens=bool(gw.secrets), turns=turns, blocks=blocks[::-1]
    )


def install_console(app: FastAPI, activity: Activity) -> None:
    """Serve the console on ``app``; ``activity`` must watch the app's Laneway."""
    app.state.activity = activity
    app.include_router(console_router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="console-static")
