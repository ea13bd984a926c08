"""The lanes view counts honestly: a busy session's later messages wait for
their own session's turn, not for the shared ``llm`` lane."""

from __future__ import annotations

import re

import httpx

from .conftest import laneway_env, run_cli, session_name, start_server, wait_state


def post(client: httpx.Client, session: str, text: str) -> str:
    resp = client.post(f"/v1/sessions/{session}/messages", json={"text": text})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["job_id"])


def test_jobs_behind_their_own_session_are_not_queued_on_the_shared_lane() -> None:
    server = start_server()
    try:
        s = session_name()
        with server.client() as client:
            hung = post(client, s, "/hang")
            wait_state(client, hung, "running")
            post(client, s, "one")
            post(client, s, "two")
            snap = client.get("/v1/lanes").json()
            lanes = {lane["name"]: lane for lane in snap["lanes"]}
            assert lanes["llm"]["active"] == 1
            assert lanes["llm"]["queued"] == 0  # 7 slots free: nobody waits for one
            assert lanes["llm"]["behind_session"] == 2
            assert lanes["llm"]["oldest_queued_s"] is None
            assert lanes[f"session:{s}"]["queued"] == 2
            assert snap["jobs_queued"] == 2
            assert snap["node"]  # the one node, by host and process id
            assert [(r["job_id"], r["node"]) for r in snap["running"]] == [(hung, snap["node"])]
            metrics = client.get("/metrics").text
            assert re.search(r'^laneway_lane_queued\{lane="llm"\} 0\.0$', metrics, re.M)
            assert re.search(r'^laneway_lane_behind_session\{lane="llm"\} 2\.0$', metrics, re.M)
            shown = run_cli("status", env=laneway_env(LANEWAY_URL=server.url, COLUMNS="100"))
            llm = next(line for line in shown.stdout.splitlines() if line.startswith("│ llm"))
            assert [c.strip() for c in llm.split("│")[2:5]] == [
                "1/8",
                "0",
                "2",
            ]  # active, waiting, behind
            client.post(f"/v1/sessions/{s}/stop", json={"drop_queued": True})
    finally:
        server.stop()
