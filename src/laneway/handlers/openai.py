"""The ``openai`` model: any OpenAI-compatible chat endpoint, streamed.

One turn sends the session's transcript, rebuilt from its event log, plus the
new user text to ``/chat/completions`` with ``stream=True`` through the
official ``openai`` SDK, and relays each content delta as a ``delta`` event
through ``ctx.stream`` (so the idle limit applies per chunk), then one
``message`` event with the whole reply.

The SDK's own retries are off (``max_retries=0``): laneway retries, and only
an attempt that emitted nothing (DESIGN.md, guarantee 5). An API error is
raised as the SDK's exception, so the job's failure reason is its type name
(``RateLimitError``, ``InternalServerError``, ...).

The transcript: each earlier turn of the session that ended with a
``message`` event contributes its user text (from its ``job.queued`` event)
and the assistant's reply. Turns with no reply (failed, timed out, stopped,
or still queued) are left out, so the model never sees a question twice
without an answer in between.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from .._errors import ConfigError, InvalidPayload

if TYPE_CHECKING:
    from .. import Event, Laneway, TurnContext

__all__ = ["OpenAIModel", "register_openai"]

HISTORY_PAGE = 500  # events read per page while rebuilding the transcript
HISTORY_SCAN_MAX = 20_000  # stop paging back after this many events (long delta streams)


def register_openai(
    lw: Laneway,
    *,
    name: str = "openai",
    base_url: str | None,
    model: str,
    api_key: str | None,
    lanes: tuple[str, ...] = (),
    system_prompt: str | None = None,
    max_history: int = 50,
) -> None:
    """Register an OpenAI-compatible chat model on ``lw`` as handler ``name``.

    ``api_key`` falls back to ``OPENAI_API_KEY``; a custom ``base_url`` (a
    local server) may need none. ``max_history`` caps the earlier messages
    sent (user and assistant each count one). The client is closed when
    ``lw`` closes.
    """
    if not isinstance(model, str) or not model:
        raise ConfigError("the openai model needs a model name (e.g. 'gpt-4o-mini')")
    if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 0:
        raise ConfigError(f"max_history must be an int >= 0, got {max_history!r}")
    register = lw.handler(name, lanes=lanes)  # validates the name and lanes first
    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        if base_url is None:
            raise ConfigError(
                "the openai model needs an API key: pass api_key or set OPENAI_API_KEY"
            )
        key = "unused"  # local OpenAI-compatible servers usually take any key
    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)
    lw.on_close(client.close)
    register(OpenAIModel(client, model, system_prompt, max_history).turn)


class OpenAIModel:
    """One configured endpoint and model; ``turn`` is the handler."""

    def __init__(
        self, client: AsyncOpenAI, model: str, system_prompt: str | None, max_history: int
    ) -> None:
        self.client = client
        self.model = model
        self.system_prompt = system_prompt
        self.max_history = max_history

    async def turn(self, ctx: TurnContext, payload: dict[str, Any]) -> str:
        """Stream one reply to ``payload["text"]``; returns the reply text."""
        text = payload.get("text") if isinstance(payload, dict) else None
        if not isinstance(text, str):
            raise InvalidPayload('the openai model expects a payload {"text": "..."}')
        messages: list[ChatCompletionMessageParam] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages += await transcript(ctx, self.max_history)
        messages.append({"role": "user", "content": text})
        stream = await self.client.chat.completions.create(
            model=self.model, messages=messages, stream=True
        )
        parts: list[str] = []
        async with stream:
            async for chunk in ctx.stream(stream):
                piece = _content(chunk)
                if piece:
                    parts.append(piece)
                    await ctx.emit("delta", {"text": piece})
        reply = "".join(parts)
        await ctx.emit("message", {"role": "assistant", "text": reply})
        return reply


def _content(chunk: ChatCompletionChunk) -> str | None:
    if not chunk.choices:  # e.g. a trailing usage-only chunk
        return None
    return chunk.choices[0].delta.content


async def transcript(ctx: TurnContext, max_history: int) -> list[ChatCompletionMessageParam]:
    """The session's earlier answered turns as chat messages, oldest first.

    Pages back through the log until ``max_history`` messages are found (or
    ``HISTORY_SCAN_MAX`` events were read: replies stream as many deltas)."""
    if max_history <= 0:
        return []
    turns = _Turns(ctx.job_id)
    before: int | None = None
    scanned = 0
    while True:
        page = await ctx.history(HISTORY_PAGE, before=before)
        turns.add(page)
        scanned += len(page)
        if len(page) < HISTORY_PAGE or scanned >= HISTORY_SCAN_MAX:
            break
        if 2 * turns.answered() >= max_history:
            break
        before = page[0].seq
    messages = turns.messages()[-max_history:]
    if messages and messages[0]["role"] == "assistant":
        messages = messages[1:]  # never open on a reply whose question was cut off
    return messages


class _Turns:
    """User texts and assistant replies of a session's jobs, keyed by job id."""

    def __init__(self, current_job: str) -> None:
        self.current = current_job
        self.asked: dict[str, tuple[int, str]] = {}  # job id -> (seq of job.queued, text)
        self.replies: dict[str, tuple[int, str]] = {}  # job id -> (seq of message, text)

    def add(self, events: list[Event]) -> None:
        for ev in events:
            if ev.job_id is None or ev.job_id == self.current or not isinstance(ev.data, dict):
                continue
            if ev.kind == "job.queued" or ev.kind == "job.requeued":
                payload = ev.data.get("payload")
                text = payload.get("text") if isinstance(payload, dict) else None
                if isinstance(text, str):
                    _keep_latest(self.asked, ev.job_id, ev.seq, text)
            elif ev.kind == "message" and ev.data.get("role", "assistant") == "assistant":
                text = ev.data.get("text")
                if isinstance(text, str):
                    _keep_latest(self.replies, ev.job_id, ev.seq, text)

    def answered(self) -> int:
        return len(self.asked.keys() & self.replies.keys())

    def messages(self) -> list[ChatCompletionMessageParam]:
        out: list[ChatCompletionMessageParam] = []
        for job_id, (_seq, question) in sorted(self.asked.items(), key=lambda kv: kv[1][0]):
            reply = self.replies.get(job_id)
            if reply is not None:
                out.append({"role": "user", "content": question})
                out.append({"role": "assistant", "content": reply[1]})
        return out


def _keep_latest(into: dict[str, tuple[int, str]], job_id: str, seq: int, text: str) -> None:
    # A requeued job has a job.requeued too; a reply counts from its latest message.
    held = into.get(job_id)
    if held is None or held[0] < seq:
        into[job_id] = (seq, text)
