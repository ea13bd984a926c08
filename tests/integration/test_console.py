"""The web console at ``/ui`` in a real headless Chromium against a real
``laneway serve``: it shows a running turn and the ``llm`` lane within 2 s,
follows the turn's end, and its requeue and stop buttons work. A screenshot
and the measured times are left in ``artifacts/``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser

from ._browser import ARTIFACTS, chromium
from .conftest import TOKENS, LiveServer, session_name, start_server, wait_state

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def console_server() -> Iterator[LiveServer]:
    srv = start_server()
    yield srv
    srv.stop()


def send(client: httpx.Client, session: str, text: str) -> str:
    resp = client.post(f"/v1/sessions/{session}/messages", json={"text": text})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["job_id"])


def terminal_events(client: httpx.Client, session: str, job_id: str, want: int) -> list[str]:
    """The job's terminal events from the session's log, once ``want`` arrived (or 5 s)."""
    ends: list[str] = []
    give_up = time.monotonic() + 5
    with client.stream("GET", f"/v1/sessions/{session}/events") as resp:
        for line in resp.iter_lines():  # idle streams get a ping every 0.3 s
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event["job_id"] == job_id and event["kind"] in ("job.failed", "job.succeeded"):
                    ends.append(event["kind"])
            if len(ends) >= want or time.monotonic() > give_up:
                break
    return ends


def test_the_console_shows_turns_and_lanes_live_and_its_buttons_work(
    browser: Browser, console_server: LiveServer
) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    s = session_name()
    with console_server.client() as client:
        job = send(client, s, "/slow 3")
        wait_state(client, job, "running")
        opened = time.monotonic()
        page.goto(console_server.url + "/ui")
        page.locator(f'#turns tr[data-session="{s}"]').wait_for(timeout=2000)
        page.locator('#shared tr[data-lane="llm"]').wait_for(timeout=2000)
        first_render = time.monotonic() - opened
        assert page.locator(f'#sessions tr[data-session="{s}"]').count() == 1
        assert "1/8" in page.locator('#shared tr[data-lane="llm"]').inner_text()

        page.locator(f'#turns tr[data-session="{s}"]').wait_for(state="detached", timeout=10_000)
        seen_end = time.time()
        ended_at = wait_state(client, job, "succeeded")["updated_at"]
        reflect = seen_end - ended_at
        assert reflect < 2.0

        crashed = send(client, session_name(), "/crash")
        wait_state(client, crashed, "failed")
        row = page.locator(f'#failed tr[data-job="{crashed}"]')
        row.wait_for(timeout=3000)
        row.locator("button.requeue").click()
        page.locator("#requeue-result").filter(has_text=f"requeued {crashed}").wait_for()
        info = client.get(f"/v1/jobs/{crashed}").json()
        assert terminal_events(client, info["session"], crashed, 2) == ["job.failed", "job.failed"]

        hung_session = session_name()
        hung = send(client, hung_session, "/hang")
        wait_state(client, hung, "running")
        page.goto(f"{console_server.url}/ui#session={hung_session}")
        page.locator(f'#transcript [data-job="{hung}"]').wait_for(timeout=3000)
        worry = page.locator(f'#turns tr[data-job="{hung}"] td.worry')
        worry.filter(has_text="of idle limit 5s").wait_for(timeout=6000)  # quiet 3 s of 5
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
        page.locator("#stop").click()
        page.locator(f'#transcript [data-job="{hung}"][data-state="cancelled"]').wait_for(
            timeout=3000
        )
        assert client.get(f"/v1/jobs/{hung}").json()["state"] == "cancelled"

        send(client, session_name(), "/block 1.5")
        report = page.locator("#blocks details summary").filter(has_text="loop.blocked")
        report.first.wait_for(timeout=8000)
        stack = page.locator("#blocks pre").first.text_content() or ""
        assert "block_loop" in stack  # the blocking code, from the watchdog's report
    timings = {"first_render_s": round(first_render, 3), "finished_turn_shown_s": round(reflect, 3)}
    (ARTIFACTS / "console-timings.json").write_text(json.dumps(timings) + "\n")
    print("console timings", timings)
    page.close()


def test_with_tokens_the_console_asks_for_one_and_shows_only_that_tenant(
    browser: Browser,
) -> None:
    server = start_server(tokens=TOKENS)
    page = browser.new_page()
    try:
        mine, theirs = session_name(), session_name()
        with server.client("alice") as alice, server.client("bob") as bob:
            a = send(alice, mine, "/hang")
            b = send(bob, theirs, "/hang")
            wait_state(alice, a, "running")
            wait_state(bob, b, "running")
            page.goto(server.url + "/ui")
            page.locator("#token-form").wait_for(state="visible", timeout=3000)
            page.fill("#token", TOKENS["alice"])
            page.click("#token-form button")
            page.locator(f'#turns tr[data-session="{mine}"]').wait_for(timeout=3000)
            page.locator('#shared tr[data-lane="llm"]').wait_for()
            assert "2/8" in page.locator('#shared tr[data-lane="llm"]').inner_text()
            shown = page.locator("#turns tbody").inner_text()
            shown += page.locator("#sessions").inner_text()
            assert theirs not in shown
            assert "bob" not in shown
            alice.post(f"/v1/sessions/{mine}/stop")
            bob.post(f"/v1/sessions/{theirs}/stop")
    finally:
        page.close()
        server.stop()


def test_docs_and_the_index_load_nothing_from_outside(
    browser: Browser, console_server: LiveServer
) -> None:
    page = browser.new_page()
    outside: list[str] = []
    page.on(
        "request",
        lambda req: None if req.url.startswith(console_server.url) else outside.append(req.url),
    )
    page.goto(console_server.url + "/")
    page.click("text=Console")
    page.locator('#shared tr[data-lane="llm"]').wait_for(timeout=3000)
    page.goto(console_server.url + "/docs")
    page.locator(".swagger-ui .info .title").wait_for(timeout=5000)
    assert "laneway" in page.locator(".swagger-ui .info .title").inner_text()
    page.get_by_text("/v1/sessions/{session}/messages").first.wait_for()
    assert outside == []
    page.close()
