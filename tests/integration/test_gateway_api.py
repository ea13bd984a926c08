"""The HTTP API of a real ``laneway serve``: messages, SSE, stop, jobs, bad input."""

from __future__ import annotations

import time

import httpx

from .conftest import LiveServer, is_terminal, read_events, session_name, wait_state


def post(client: httpx.Client, session: str, text: str, **body: str) -> httpx.Response:
    return client.post(f"/v1/sessions/{session}/messages", json={"text": text, **body})


def test_message_is_accepted_and_streamed_to_completion(server: LiveServer) -> None:
    s = session_name()
    with server.client() as client:
        resp = post(client, s, "hello from the test")
        assert resp.status_code == 202
        accepted = resp.json()
        assert accepted["session"] == s
        assert accepted["state"] == "queued"
        events = read_events(client, s, until_job=accepted["job_id"])

    kinds = [e["kind"] for e in events]
    assert kinds[:2] == ["job.queued", "job.started"]
    assert kinds[-2:] == ["message", "job.succeeded"]
    assert set(kinds[2:-2]) == {"delta"}
    reply = events[-2]["data"]["text"]
    assert "hello from the test" in reply
    assert "".join(e["data"]["text"] for e in events if e["kind"] == "delta").strip() == reply
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["sse_id"] == str(e["seq"]) and e["sse_event"] == e["kind"] for e in events)
    assert sum(is_terminal(e) for e in events) == 1
    assert events[-1]["data"]["result"] == reply


def test_sse_replays_after_a_seq_and_from_last_event_id(server: LiveServer) -> None:
    s = session_name()
    with server.client() as client:
        job = post(client, s, "one two three").json()["job_id"]
        full = read_events(client, s, until_job=job)
        from_after = read_events(client, s, until_job=job, after=3)
        resumed = read_events(client, s, until_job=job, headers={"Last-Event-ID": "4"})
    assert [e["seq"] for e in from_after] == [e["seq"] for e in full[3:]]
    assert [e["seq"] for e in resumed] == [e["seq"] for e in full[4:]]


def test_sse_follows_live_and_sends_heartbeats_when_idle(server: LiveServer) -> None:
    s = session_name()
    seen: list[str] = []
    with server.client() as client, client.stream("GET", f"/v1/sessions/{s}/events") as resp:
        lines = resp.iter_lines()
        while ": ping" not in seen:  # the server's heartbeat is 0.3 s in these tests
            seen.append(next(lines))
        job = post(client, s, "live now").json()["job_id"]
        for line in lines:
            if line.startswith("data:") and '"job.succeeded"' in line and job in line:
                break
    assert seen[0] == "retry: 1000"


def test_stop_ends_a_hung_turn_and_the_next_message_runs(server: LiveServer) -> None:
    s = session_name()
    with server.client() as client:
        hung = post(client, s, "/hang").json()["job_id"]
        wait_state(client, hung, "running")
        nxt = post(client, s, "after the hang").json()["job_id"]
        resp = client.post(f"/v1/sessions/{s}/stop", json={})
        assert resp.status_code == 200
        assert resp.json() == {"session": s, "cancelled": [hung], "dropped": []}
        assert client.get(f"/v1/jobs/{hung}").json()["state"] == "cancelled"
        assert "after the hang" in wait_state(client, nxt, "succeeded")["result"]


def test_stop_with_drop_queued_cancels_the_queue(server: LiveServer) -> None:
    s = session_name()
    with server.client() as client:
        hung = post(client, s, "/hang").json()["job_id"]
        queued = post(client, s, "never runs").json()["job_id"]
        wait_state(client, hung, "running")
        result = client.post(f"/v1/sessions/{s}/stop", json={"drop_queued": True}).json()
        assert result["cancelled"] == [hung]
        assert result["dropped"] == [queued]
        assert client.get(f"/v1/jobs/{queued}").json()["state"] == "cancelled"


def test_failed_job_is_listed_and_can_be_requeued(server: LiveServer) -> None:
    s = session_name()
    with server.client() as client:
        job = post(client, s, "/crash").json()["job_id"]
        info = wait_state(client, job, "failed")
        assert info["reason"] == "DemoCrash"
        assert info["session"] == s
        failed = client.get("/v1/jobs", params={"state": "failed", "session": s}).json()
        assert [j["id"] for j in failed["jobs"]] == [job]

        resp = client.post(f"/v1/jobs/{job}/requeue")
        assert resp.status_code == 200
        assert resp.json() == {"job_id": job, "session": s, "state": "queued"}
        events = read_events(client, s, until_job=job, after=3)
        assert events[0]["kind"] == "job.requeued"  # a new run of the same job
        assert events[-1]["kind"] == "job.failed"  # it crashes again, on purpose

        ok = post(client, s, "fine").json()["job_id"]
        wait_state(client, ok, "succeeded")
        refused = client.post(f"/v1/jobs/{ok}/requeue")
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "not_requeueable"
        missing = client.get("/v1/jobs/nope-1")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "job_not_found"


def test_lanes_snapshot_shows_busy_sessions(server: LiveServer) -> None:
    s = session_name()
    with server.client() as client:
        hung = post(client, s, "/hang").json()["job_id"]
        wait_state(client, hung, "running")
        snap = client.get("/v1/lanes").json()
        lanes = {lane["name"]: lane for lane in snap["lanes"]}
        assert lanes[f"session:{s}"]["active"] == 1
        assert lanes["llm"]["limit"] == 8
        assert snap["jobs_running"] >= 1
        client.post(f"/v1/sessions/{s}/stop")


def test_bad_input_gets_json_errors_with_stable_codes(server: LiveServer) -> None:
    with server.client() as client:
        cases = [
            (post(client, "bad key!", "x"), 422, "invalid_session"),
            (post(client, "ok", "x" * 201), 422, "text_too_long"),
            (post(client, "ok", "x", handler="nope"), 422, "unknown_handler"),
            (client.post("/v1/sessions/ok/messages", json={"txt": "x"}), 422, "invalid_request"),
            (
                client.post(
                    "/v1/sessions/ok/messages",
                    content=b'{"text": ',
                    headers={"content-type": "application/json"},
                ),
                422,
                "invalid_json",
            ),
            (client.post("/v1/sessions/ok/messages", content=b"x" * 5000), 413, "body_too_large"),
            (client.get("/v1/jobs", params={"state": "bogus"}), 422, "invalid_request"),
            (
                client.get("/v1/sessions/ok/events", headers={"Last-Event-ID": "abc"}),
                422,
                "invalid_last_event_id",
            ),
            (client.get("/v1/nowhere"), 404, "not_found"),
            (client.delete("/v1/lanes"), 405, "method_not_allowed"),
        ]
    for resp, status, code in cases:
        assert resp.status_code == status, (code, resp.text)
        assert resp.headers["content-type"] == "application/json"
        assert resp.json()["error"]["code"] == code


def test_overload_answers_429_with_retry_after_and_loses_nothing(server: LiveServer) -> None:
    s = session_name()
    with server.client() as client:
        hung = post(client, s, "/hang").json()["job_id"]
        wait_state(client, hung, "running")
        accepted = [post(client, s, f"m{i}").json()["job_id"] for i in range(3)]
        refused = post(client, s, "one too many")
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "overloaded"
        client.post(f"/v1/sessions/{s}/stop")
        for job in accepted:
            wait_state(client, job, "succeeded")


def test_idempotency_key_returns_the_same_job(server: LiveServer) -> None:
    s = session_name()
    with server.client() as client:
        first = post(client, s, "once", idempotency_key="k1").json()
        wait_state(client, first["job_id"], "succeeded")
        again = post(client, s, "once", idempotency_key="k1").json()
    assert again == {**first, "state": "succeeded"}


def test_health_readiness_metrics_and_docs(server: LiveServer) -> None:
    with server.client() as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/readyz").json() == {"status": "ready"}
        s = session_name()
        job = post(client, s, "count me").json()["job_id"]
        wait_state(client, job, "succeeded")
        time.sleep(0.05)
        text = client.get("/metrics").text
        assert "/v1/sessions/{session}/messages" in client.get("/openapi.json").text
        assert client.get("/docs").status_code == 200
    assert 'laneway_jobs_finished_total{state="succeeded"}' in text
    assert "laneway_submit_seconds_count" in text
    assert 'laneway_lane_active{lane="llm"}' in text
    assert "laneway_loop_lag_seconds" in text
    assert 'laneway_zombies{kind="task"}' in text
