"""The ``cli`` model: an agent CLI (Claude Code, Codex, Gemini CLI, aider) run per turn.

Each turn runs the configured command with the message text as an argument,
through ``ctx.stream_process``: every stdout line is progress for the idle
limit, and the CLI's process group is killed (TERM, grace, KILL) when the
turn ends, times out or is stopped, so a CLI that goes silent while alive
(seed 004) cannot hold its session.

- ``text``: each stdout line is a ``delta`` event; the lines joined are the
  ``message`` and the turn's result.
- ``stream-json``: line-delimited JSON as Claude Code writes it (see
  ``_stream_json``): text as ``delta``, tool calls and results as ``tool``,
  the final result as ``message``; a line that is not JSON is a ``delta``
  (logged once per turn).

Session continuity: the CLI's session id (from stream-json) is stored in the
turn's ``message`` event, so the event log carries it across restarts; the
next turn of the laneway session passes it back through ``resume_arg``.

Retries follow laneway's rule: a CLI that dies before its first line is
retried with backoff; one that already streamed is not run again.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from .._errors import ConfigError, InvalidPayload
from ._stream_json import StreamJson, is_session_id, parse_line

if TYPE_CHECKING:
    from .. import Laneway, Limits, TurnContext

__all__ = [
    "MESSAGE_MAX",
    "AgentCliError",
    "CliModel",
    "Format",
    "build_argv",
    "register_cli",
    "split_command",
]

log = logging.getLogger("laneway.handlers.cli")

Format = Literal["text", "stream-json"]
FORMATS: tuple[Format, ...] = ("text", "stream-json")

MESSAGE_MAX = 100_000  # characters of reply kept: even \uXXXX-escaped, well under 1 MiB an event
TEXT_LINE_MAX = 16_000  # a longer text line comes as several deltas
JSON_LINE_MAX = 16 * 1024 * 1024  # a stream-json line (a tool result can hold a whole file)
HISTORY_PAGE = 200
HISTORY_SCAN_MAX = 20_000  # events read back looking for the last session id


class AgentCliError(Exception):
    """The agent CLI reported that its turn failed (an error ``result``)."""


def split_command(command: str | Sequence[str], what: str = "the cli command") -> list[str]:
    """A command line split with shell rules (no shell runs it); ``ConfigError`` if bad."""
    if isinstance(command, str):
        try:
            words = shlex.split(command)
        except ValueError as exc:
            raise ConfigError(f"{what} cannot be split: {exc}") from None
    else:
        words = list(command)
    if not words or not all(isinstance(w, str) and w for w in words):
        raise ConfigError(f"{what} must be a non-empty command line, got {command!r}")
    return words


def build_argv(
    command: Sequence[str], text: str, resume: Sequence[str] = (), session_id: str | None = None
) -> list[str]:
    """The command for one turn.

    ``text`` replaces ``{text}`` wherever it appears, else it is the last
    argument. With a ``session_id``, the ``resume`` arguments (``{session_id}``
    replaced) go just before the text's argument, and before a ``--`` in
    front of it.
    """
    words = list(command)
    at = next((i for i, w in enumerate(words) if "{text}" in w), None)
    if at is None:
        words.append("{text}")
        at = len(words) - 1
    words = [w.replace("{text}", text) if "{text}" in w else w for w in words]
    if session_id is not None and resume:
        if at > 0 and words[at - 1] == "--":
            at -= 1
        words[at:at] = [w.replace("{session_id}", session_id) for w in resume]
    return words


class CliModel:
    """One configured agent CLI; ``turn`` is the handler."""

    def __init__(
        self,
        command: str | Sequence[str],
        *,
        format: str = "text",
        resume_arg: str | Sequence[str] | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if format not in FORMATS:
            raise ConfigError(f"the cli format must be 'text' or 'stream-json', got {format!r}")
        self.command = split_command(command)
        self.format: Format = "stream-json" if format == "stream-json" else "text"
        self.resume: list[str] = []
        if resume_arg is not None:
            self.resume = split_command(resume_arg, "the cli resume argument")
            if not any("{session_id}" in w for w in self.resume):
                raise ConfigError("the cli resume argument needs '{session_id}'")
            if self.format != "stream-json":
                raise ConfigError(
                    "a cli resume argument needs format 'stream-json': only its init line "
                    "reports the CLI's session id"
                )
        self.cwd = cwd
        self.env = env

    async def turn(self, ctx: TurnContext, payload: dict[str, Any]) -> str:
        """Run the CLI on ``payload["text"]``; returns the reply."""
        text = payload.get("text") if isinstance(payload, dict) else None
        if not isinstance(text, str):
            raise InvalidPayload('the cli model expects a payload {"text": "..."}')
        session_id = await last_session_id(ctx) if self.resume else None
        argv = build_argv(self.command, text, self.resume, session_id)
        if self.format == "text":
            return await self._text_turn(ctx, argv)
        return await self._json_turn(ctx, argv, session_id)

    def _lines(self, ctx: TurnContext, argv: list[str], max_line: int) -> AsyncGenerator[str, None]:
        return ctx.stream_process(*argv, cwd=self.cwd, env=self.env, max_line=max_line)

    async def _text_turn(self, ctx: TurnContext, argv: list[str]) -> str:
        reply = _Reply()
        lines = self._lines(ctx, argv, TEXT_LINE_MAX)
        async with contextlib.aclosing(lines):
            async for line in lines:
                await ctx.emit("delta", {"text": line + "\n"})
                reply.add(line, "\n")
        await ctx.emit("message", reply.event())
        return reply.text()

    async def _json_turn(self, ctx: TurnContext, argv: list[str], resumed: str | None) -> str:
        state = StreamJson(session_id=resumed)
        stray = 0
        lines = self._lines(ctx, argv, JSON_LINE_MAX)
        async with contextlib.aclosing(lines):
            async for line in lines:
                obj = parse_line(line)
                if obj is None:
                    stray += 1
                    if stray == 1:
                        log.warning("cli.not_json: %.200s", line, extra={"job_id": ctx.job_id})
                    for piece in _pieces(line + "\n", TEXT_LINE_MAX):
                        await ctx.emit("delta", {"text": piece})
                    continue
                for kind, data in state.feed(obj):
                    await ctx.emit(kind, data)
        if state.is_error:
            raise AgentCliError(state.reply()[:2000] or "the agent CLI reported an error")
        reply = _Reply()
        reply.add(state.reply(), "")
        await ctx.emit("message", reply.event(session_id=state.session_id))
        return reply.text()


class _Reply:
    """The reply text, kept up to ``MESSAGE_MAX`` characters."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.truncated = False

    def add(self, part: str, sep: str) -> None:
        if self.parts:
            part = sep + part
        room = MESSAGE_MAX - self.size
        if len(part) > room:
            part, self.truncated = part[: max(room, 0)], True
        self.parts.append(part)
        self.size += len(part)

    def text(self) -> str:
        return "".join(self.parts)

    def event(self, session_id: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"role": "assistant", "text": self.text()}
        if self.truncated:
            data["truncated"] = True
        if session_id is not None:
            data["session_id"] = session_id
        return data


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [text]


async def last_session_id(ctx: TurnContext) -> str | None:
    """The CLI session id of the session's latest answered turn, read from the log."""
    before: int | None = None
    scanned = 0
    while scanned < HISTORY_SCAN_MAX:
        page = await ctx.history(HISTORY_PAGE, before=before)
        for event in reversed(page):
            data = event.data
            if event.kind == "message" and isinstance(data, dict):
                sid = data.get("session_id")
                if is_session_id(sid):
                    return str(sid)
        if len(page) < HISTORY_PAGE:
            return None
        scanned += len(page)
        before = page[0].seq
    return None


def register_cli(
    lw: Laneway,
    *,
    name: str = "cli",
    command: str | Sequence[str],
    format: str = "text",
    resume_arg: str | Sequence[str] | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    lanes: tuple[str, ...] = (),
    limits: Limits | None = None,
) -> CliModel:
    """Register an agent CLI on ``lw`` as handler ``name``; returns the model.

    ``command`` is a command line (split with shell rules, never run by a
    shell) or an argv list; the message text replaces ``{text}`` or is
    appended. ``resume_arg`` (e.g. ``"--resume {session_id}"``) passes the
    CLI's session id of the previous turn back (``stream-json`` only).
    """
    model = CliModel(command, format=format, resume_arg=resume_arg, cwd=cwd, env=env)
    lw.handler(name, lanes=lanes, limits=limits)(model.turn)
    return model
