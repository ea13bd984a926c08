"""The ``laneway`` client commands against a real server."""

from __future__ import annotations

import pytest

from .conftest import TOKENS, LiveServer, laneway_env, run_cli, session_name, wait_state


def test_send_follow_prints_the_reply_and_exits_0(server: LiveServer) -> None:
    done = run_cli(
        "send", session_name(), "streamed to the terminal", "--follow", "--url", server.url
    )
    assert done.returncode == 0, done.stderr
    assert "streamed to the terminal" in done.stdout
    assert done.stdout.endswith("\n")
    assert done.stdout.count("streamed to the terminal") == 1  # the message is not repeated


def test_send_follow_exits_1_when_the_turn_fails(server: LiveServer) -> None:
    done = run_cli("send", session_name(), "/crash", "--follow", "--url", server.url)
    assert done.returncode == 1
    assert "turn failed (DemoCrash)" in done.stderr


def test_send_jobs_requeue_status_and_top(server: LiveServer) -> None:
    s = session_name()
    env = laneway_env(LANEWAY_URL=server.url)
    sent = run_cli("send", s, "/crash", env=env)
    job = sent.stdout.strip()
    assert sent.returncode == 0
    with server.client() as client:
        wait_state(client, job, "failed")
    listed = run_cli("jobs", "--state", "failed", "--session", s, env=env)
    assert job in listed.stdout
    assert "DemoCrash" in listed.stdout
    requeued = run_cli("requeue", job, env=env)
    assert requeued.stdout.strip() == f"requeued {job} (session {s})"
    again = run_cli("requeue", "no-such-job", env=env)
    assert again.returncode == 1
    assert "job_not_found" in again.stderr
    for command in (["status"], ["top", "--once"]):
        shown = run_cli(*command, env=env)
        assert shown.returncode == 0, shown.stderr
        assert "llm" in shown.stdout
        assert "loop lag" in shown.stdout


def test_stop_and_token_from_the_environment(token_server: LiveServer) -> None:
    s = session_name()
    env = laneway_env(LANEWAY_URL=token_server.url, LANEWAY_TOKEN=TOKENS["alice"])
    with token_server.client("alice") as alice:
        hung = alice.post(f"/v1/sessions/{s}/messages", json={"text": "/hang"}).json()["job_id"]
        wait_state(alice, hung, "running")
        stopped = run_cli("stop", s, env=env)
        assert stopped.stdout.strip() == "cancelled 1 running, dropped 0 queued"
        assert alice.get(f"/v1/jobs/{hung}").json()["state"] == "cancelled"
    refused = run_cli("status", "--url", token_server.url)
    assert refused.returncode == 1
    assert "unauthorized" in refused.stderr


def test_unreachable_server_is_a_clear_error() -> None:
    done = run_cli("status", "--url", "http://127.0.0.1:9")
    assert done.returncode == 1
    assert "cannot reach laneway at http://127.0.0.1:9" in done.stderr


@pytest.mark.slow
def test_demo_small_run_exits_0_with_its_table() -> None:
    pytest.importorskip("laneway._chaos", reason="the chaos run ships with the models")
    done = run_cli("demo", "--sessions", "20", "--messages", "100", "--seed", "1", timeout=55)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lost (must be 0)" in done.stdout
    assert "held" in done.stdout
