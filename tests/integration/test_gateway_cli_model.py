"""``laneway serve`` with ``LANEWAY_MODEL=cli``: a real server running the fake
agent CLI, its session resumed across turns and across a restart."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import httpx
import pytest

from laneway.gateway import SettingsError, load_settings
from laneway.testing import fake_agent_cli

from .conftest import LiveServer, read_events, start_server

pytestmark = pytest.mark.slow


def _serve(tmp_path: Path) -> LiveServer:
    state = tmp_path / "cli-state"
    state.mkdir(exist_ok=True)
    return start_server(
        LANEWAY_STORE=f"sqlite:///{tmp_path / 'laneway.db'}",
        LANEWAY_MODEL="cli",
        LANEWAY_CLI_COMMAND=shlex.join(fake_agent_cli("stream-json", state=state)),
        LANEWAY_CLI_FORMAT="stream-json",
        LANEWAY_CLI_RESUME_ARG="--resume {session_id}",
    )


def _say(client: httpx.Client, session: str, text: str) -> list[dict[str, Any]]:
    resp = client.post(f"/v1/sessions/{session}/messages", json={"text": text})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    return [e for e in read_events(client, session, until_job=job_id) if e["job_id"] == job_id]


def _message(events: list[dict[str, Any]]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [e["data"] for e in events if e["kind"] == "message"]
    assert len(messages) == 1
    assert events[-1]["kind"] == "job.succeeded"
    return messages[0]


def test_the_cli_session_survives_a_server_restart(tmp_path: Path) -> None:
    server = _serve(tmp_path)
    try:
        with server.client() as client:
            first = _message(_say(client, "alice", "hello"))
            events = _say(client, "alice", "remember me")
            second = _message(events)
    finally:
        server.stop()
    assert [first["text"], second["text"]] == ["turn 1: hello", "turn 2: remember me"]
    assert second["session_id"] == first["session_id"]
    tools = [e["data"]["type"] for e in events if e["kind"] == "tool"]
    assert tools == ["tool_use", "tool_result"]

    server = _serve(tmp_path)  # the same database: the id comes back from the event log
    try:
        with server.client() as client:
            third = _message(_say(client, "alice", "still there?"))
            fresh = _message(_say(client, "bob", "hi"))
    finally:
        server.stop()
    assert third == {
        "role": "assistant",
        "text": "turn 3: still there?",
        "session_id": first["session_id"],
    }
    assert fresh["text"] == "turn 1: hi"
    assert fresh["session_id"] != first["session_id"]


CLI = {"LANEWAY_MODEL": "cli", "LANEWAY_CLI_COMMAND": "sh -c 'exit 0'"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LANEWAY_MODEL": "cli"}, "LANEWAY_CLI_COMMAND"),
        ({**CLI, "LANEWAY_CLI_COMMAND": "claude 'oops"}, "cannot be split"),
        ({**CLI, "LANEWAY_CLI_FORMAT": "json"}, "cli_format"),
        (
            {**CLI, "LANEWAY_CLI_FORMAT": "stream-json", "LANEWAY_CLI_RESUME_ARG": "-r"},
            "{session_id}",
        ),
        ({**CLI, "LANEWAY_CLI_RESUME_ARG": "-r {session_id}"}, "needs format 'stream-json'"),
        ({**CLI, "LANEWAY_CLI_COMMAND": "no-such-agent-cli -p"}, "not an executable on PATH"),
    ],
)
def test_bad_cli_settings_are_named(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert message in str(err.value)
