"""Bearer tokens: every route but health and metrics needs one; tokens never share sessions."""

from __future__ import annotations

import pytest

from .conftest import LiveServer, read_events, session_name, wait_state


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/sessions/s1/messages"),
        ("GET", "/v1/sessions/s1/events"),
        ("POST", "/v1/sessions/s1/stop"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/x-1"),
        ("POST", "/v1/jobs/x-1/requeue"),
        ("GET", "/v1/lanes"),
    ],
)
def test_api_routes_need_a_known_token(token_server: LiveServer, method: str, path: str) -> None:
    with token_server.client() as client:
        for headers in ({}, {"Authorization": "Bearer wrong-secret"}, {"Authorization": "Basic x"}):
            resp = client.request(method, path, headers=headers, json={"text": "x"})
            assert resp.status_code == 401, resp.text
            assert resp.json()["error"]["code"] == "unauthorized"
            assert resp.headers["WWW-Authenticate"] == "Bearer"


def test_health_readiness_and_metrics_need_no_token(token_server: LiveServer) -> None:
    with token_server.client() as client:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200


def test_same_session_name_under_two_tokens_is_two_sessions(token_server: LiveServer) -> None:
    s = session_name()
    with token_server.client("alice") as alice, token_server.client("bob") as bob:
        a_job = alice.post(f"/v1/sessions/{s}/messages", json={"text": "from alice"}).json()
        b_job = bob.post(f"/v1/sessions/{s}/messages", json={"text": "from bob"}).json()
        assert a_job["session"] == b_job["session"] == s
        a_events = read_events(alice, s, until_job=a_job["job_id"])
        b_events = read_events(bob, s, until_job=b_job["job_id"])

        assert {e["job_id"] for e in a_events} == {a_job["job_id"]}
        assert {e["job_id"] for e in b_events} == {b_job["job_id"]}
        assert a_events[0]["seq"] == b_events[0]["seq"] == 1
        assert {e["session"] for e in a_events + b_events} == {s}
        assert "from alice" in a_events[-1]["data"]["result"]

        info = alice.get(f"/v1/jobs/{a_job['job_id']}").json()
        assert info["session"] == s
        assert bob.get(f"/v1/jobs/{a_job['job_id']}").status_code == 404
        assert bob.post(f"/v1/jobs/{a_job['job_id']}/requeue").status_code == 404
        bob_ids = {j["id"] for j in bob.get("/v1/jobs").json()["jobs"]}
        assert b_job["job_id"] in bob_ids
        assert a_job["job_id"] not in bob_ids


def test_a_token_cannot_stop_or_see_another_tokens_turn(token_server: LiveServer) -> None:
    s = session_name()
    with token_server.client("alice") as alice, token_server.client("bob") as bob:
        hung = alice.post(f"/v1/sessions/{s}/messages", json={"text": "/hang"}).json()["job_id"]
        wait_state(alice, hung, "running")
        assert bob.post(f"/v1/sessions/{s}/stop").json()["cancelled"] == []
        assert f"session:{s}" not in {lane["name"] for lane in bob.get("/v1/lanes").json()["lanes"]}
        alice_lanes = {lane["name"] for lane in alice.get("/v1/lanes").json()["lanes"]}
        assert f"session:{s}" in alice_lanes
        assert alice.post(f"/v1/sessions/{s}/stop").json()["cancelled"] == [hung]
