"""Agent CLIs' line-delimited JSON (Claude Code's ``--output-format stream-json``) as events.

One JSON object per line: a ``system``/``init`` with the CLI's session id,
``assistant`` messages whose content blocks are ``text``, ``thinking`` or
``tool_use``, ``user`` messages carrying ``tool_result`` blocks, and one final
``result`` (the answer, ``is_error``, the session id again). ``StreamJson``
turns each line into the events the ``cli`` model emits: text as ``delta``,
tool calls and results as ``tool``; it keeps the session id and the result.

With ``--include-partial-messages`` Claude Code also writes ``stream_event``
lines (the API's ``message_start``, ``content_block_delta`` with a
``text_delta``, ...) before each whole ``assistant`` message: their text is
streamed as it comes, and the whole message then adds only its tool calls.
Other line types (hooks, usage) are skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TOOL_TEXT_MAX", "StreamJson", "is_session_id", "parse_line"]

TOOL_TEXT_MAX = 16_000  # characters of a tool's input or output kept in its event

_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")

Emitted = tuple[str, dict[str, Any]]


def is_session_id(value: object) -> bool:
    """A value safe to pass back on a command line: no option, no spaces."""
    return isinstance(value, str) and _SESSION_ID.match(value) is not None


@dataclass
class StreamJson:
    """The state of one turn's stream: session id, texts, the final result."""

    session_id: str | None = None
    result: str | None = None
    is_error: bool = False
    texts: list[str] = field(default_factory=list)
    streamed: set[str] = field(default_factory=set)  # ids of messages whose text came in parts
    new_block: bool = False  # the next text part opens a paragraph

    def feed(self, obj: dict[str, Any]) -> list[Emitted]:
        """The events one parsed line stands for."""
        sid = obj.get("session_id")
        if is_session_id(sid):
            self.session_id = sid
        kind = obj.get("type")
        if kind == "stream_event":
            event = obj.get("event")
            return self._part(event) if isinstance(event, dict) else []
        if kind == "assistant":
            message = obj.get("message")
            mid = message.get("id") if isinstance(message, dict) else None
            return self._assistant(_content(obj), text=mid not in self.streamed)
        if kind == "user":
            return [_tool_result(b) for b in _content(obj) if b.get("type") == "tool_result"]
        if kind == "result":
            result = obj.get("result")
            self.result = result if isinstance(result, str) else None
            self.is_error = bool(obj.get("is_error")) or obj.get("subtype", "success") != "success"
        return []

    def reply(self) -> str:
        """The turn's answer: the ``result`` line's text, else the streamed text."""
        return self.result if self.result is not None else "".join(self.texts)

    def _assistant(self, blocks: list[dict[str, Any]], *, text: bool) -> list[Emitted]:
        out: list[Emitted] = []
        for block in blocks:
            kind = block.get("type")
            if kind == "text" and text and isinstance(block.get("text"), str) and block["text"]:
                # Each text block is a paragraph: deltas concatenate to the whole reply.
                out.append(self._text(("\n\n" if self.texts else "") + block["text"]))
            elif kind == "tool_use":
                out.append(("tool", _tool_use(block)))
        return out

    def _part(self, event: dict[str, Any]) -> list[Emitted]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            mid = message.get("id") if isinstance(message, dict) else None
            if isinstance(mid, str):
                self.streamed.add(mid)
        elif kind == "content_block_start":
            self.new_block = True
        elif kind == "content_block_delta":
            delta = event.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            piece = delta.get("text")
            if isinstance(piece, str) and piece and delta.get("type") == "text_delta":
                opens = self.new_block and bool(self.texts)
                self.new_block = False
                return [self._text(("\n\n" if opens else "") + piece)]
        return []

    def _text(self, text: str) -> Emitted:
        self.texts.append(text)
        return ("delta", {"text": text})


def parse_line(line: str) -> dict[str, Any] | None:
    """The line's JSON object, or None if it is not one."""
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _content(obj: dict[str, Any]) -> list[dict[str, Any]]:
    message = obj.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict)]


def _tool_use(block: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"type": "tool_use", "id": block.get("id"), "name": block.get("name")}
    tool_input = block.get("input")
    text = json.dumps(tool_input, ensure_ascii=False)
    if len(text) > TOOL_TEXT_MAX:
        data["input"] = {"truncated": text[:TOOL_TEXT_MAX]}
    else:
        data["input"] = tool_input
    return data


def _tool_result(block: dict[str, Any]) -> Emitted:
    content = block.get("content")
    if isinstance(content, list):  # blocks: text parts joined, others named
        content = "\n".join(
            str(b.get("text", "")) if b.get("type") == "text" else f"[{b.get('type')}]"
            for b in content
            if isinstance(b, dict)
        )
    text = content if isinstance(content, str) else json.dumps(content)
    data: dict[str, Any] = {
        "type": "tool_result",
        "id": block.get("tool_use_id"),
        "content": text[:TOOL_TEXT_MAX],
        "is_error": bool(block.get("is_error")),
    }
    if len(text) > TOOL_TEXT_MAX:
        data["truncated"] = True
    return ("tool", data)
