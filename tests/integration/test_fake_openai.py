"""FakeOpenAI itself: what users' tests rely on besides streaming."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from laneway.testing import FakeOpenAI


async def test_non_streaming_requests_get_a_whole_completion() -> None:
    async with FakeOpenAI(model="tiny") as fake:
        fake.reply("all at once")
        async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as c:
            scripted = await c.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}]
            )
            echoed = await c.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "say this"}]
            )
    assert scripted.choices[0].message.content == "all at once"
    assert echoed.choices[0].message.content == "echo: say this"  # nothing scripted: echo
    assert [r.messages[-1]["content"] for r in fake.requests] == ["hi", "say this"]


async def test_closing_releases_a_request_that_hangs() -> None:
    fake = FakeOpenAI()
    await fake.start()
    fake.hang()
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as c:
        call = asyncio.create_task(
            c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
        async with asyncio.timeout(5):
            await fake.wait_for_requests(1)
        assert not call.done()
        started = time.monotonic()
        await fake.close()
        assert time.monotonic() - started < 3
        with pytest.raises(openai.APIError):
            async with asyncio.timeout(5):
                await call
    with pytest.raises(RuntimeError, match="not started"):
        _ = FakeOpenAI().base_url


async def test_the_gateway_sends_the_configured_system_prompt_and_history() -> None:
    from .conftest import session_name, start_server, wait_state

    async with FakeOpenAI() as fake:
        server = start_server(
            LANEWAY_MODEL="openai",
            LANEWAY_OPENAI_BASE_URL=fake.base_url,
            LANEWAY_OPENAI_MODEL=fake.model,
            LANEWAY_OPENAI_API_KEY="unused",
            LANEWAY_OPENAI_SYSTEM_PROMPT="Be brief.",
            LANEWAY_OPENAI_HISTORY="2",
        )
        try:
            s = session_name()
            with server.client() as client:
                for text in ("first", "second", "third"):
                    resp = client.post(f"/v1/sessions/{s}/messages", json={"text": text})
                    wait_state(client, resp.json()["job_id"], "succeeded")
        finally:
            server.stop()
    sent = [[(m["role"], m["content"]) for m in r.messages] for r in fake.requests]
    assert sent[2][1:3] == [("user", "second"), ("assistant", "echo: second")]  # only 2 kept
    assert sent[:2] == [
        [("system", "Be brief."), ("user", "first")],
        [
            ("system", "Be brief."),
            ("user", "first"),
            ("assistant", "echo: first"),
            ("user", "second"),
        ],
    ]
