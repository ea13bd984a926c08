"""What one token may see of the others: its whole job list, its lanes, no one's loop.

A server of its own (two tokens), so each listing holds exactly the jobs made here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import TOKENS, LiveServer, session_name, start_server, wait_state


@pytest.fixture(scope="module")
def tenants() -> Iterator[LiveServer]:
    srv = start_server(tokens=TOKENS, LANEWAY_MAX_QUEUED_PER_SESSION="100")
    yield srv
    srv.stop()


def post(client: httpx.Client, session: str, text: str) -> str:
    resp = client.post(f"/v1/sessions/{session}/messages", json={"text": text})
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]
    return job_id


def listing(client: httpx.Client, **params: Any) -> list[list[str]]:
    """Every page of ``GET /v1/jobs``, following ``next``."""
    pages: list[list[str]] = []
    while True:
        body = client.get("/v1/jobs", params=params).json()
        pages.append([job["id"] for job in body["jobs"]])
        if body["next"] is None:
            return pages
        params = {**params, "before": body["next"]}


def test_a_token_lists_all_its_jobs_in_pages_however_many_others_have(
    tenants: LiveServer,
) -> None:
    with tenants.client("alice") as alice, tenants.client("bob") as bob:
        mine = [post(alice, session_name(), "/crash") for _ in range(3)]
        theirs = [post(bob, session_name(), "/crash") for _ in range(25)]
        for job in mine:
            wait_state(alice, job, "failed")
        assert [j["id"] for j in alice.get("/v1/jobs?limit=1").json()["jobs"]] == mine[-1:]
        assert listing(alice, limit=2) == [mine[:0:-1], mine[:1]]
        assert listing(alice, state="failed", limit=2) == [mine[:0:-1], mine[:1]]
        bobs = listing(bob, limit=10)
        assert [len(page) for page in bobs] == [10, 10, 5]
        assert [job for page in bobs for job in page] == theirs[::-1]
        assert listing(alice, state="dead") == [[]]
        # A cursor is one of the caller's own jobs, never another token's.
        refused = alice.get("/v1/jobs", params={"before": theirs[0]})
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "invalid_cursor"


def test_lanes_show_shared_capacity_and_only_the_callers_sessions(tenants: LiveServer) -> None:
    secret_session = f"bob-private-{session_name()}"
    with tenants.client("alice") as alice, tenants.client("bob") as bob:
        hung = post(bob, secret_session, "/hang")
        wait_state(bob, hung, "running")
        seen_by_alice = alice.get("/v1/lanes").json()
        seen_by_bob = bob.get("/v1/lanes").json()
        bob.post(f"/v1/sessions/{secret_session}/stop")

    shared = {lane["name"]: lane for lane in seen_by_alice["lanes"]}
    assert set(shared) == {"llm"}  # no session lane of bob's
    assert shared["llm"]["active"] == 1  # but the capacity bob's turn takes is visible
    assert shared["llm"]["limit"] == 8
    assert (seen_by_alice["jobs_running"], seen_by_alice["jobs_queued"]) == (0, 0)
    assert "bob" not in json.dumps(seen_by_alice)
    assert seen_by_bob["jobs_running"] == 1
    assert f"session:{secret_session}" in {lane["name"] for lane in seen_by_bob["lanes"]}


def test_demo_refuses_to_block_the_loop_on_a_server_with_tokens(tenants: LiveServer) -> None:
    s = session_name()
    with tenants.client("alice") as alice:
        job = post(alice, s, "/block 3")
        info = wait_state(alice, job, "succeeded", timeout=2.0)  # not after a 3 s block
        health = alice.get("/healthz").json()
    assert "demo-isolated" in info["result"]
    assert health == {**health, "status": "ok", "loop_blocks": 0}
