"""Settings: laneway.toml and the environment; bad values exit 2 before binding."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from laneway.gateway import Settings, SettingsError, load_settings

from .conftest import laneway_env, run_cli, session_name, start_server, wait_state


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "70000"], {}, "port (LANEWAY_PORT)"),
        (["--host", "0.0.0.0"], {}, "refusing to bind '0.0.0.0' without tokens"),
        ([], {"LANEWAY_TOKENS": "alice"}, "name:secret"),
    ],
)
def test_bad_settings_exit_2_with_a_clear_message(
    args: list[str], env: dict[str, str], message: str
) -> None:
    done = run_cli("serve", "--store", "memory://", *args, env=laneway_env(**env))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "listening" not in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LANEWAY_DEADLINE": "-1"}, "deadline (LANEWAY_DEADLINE): Input should be greater than 0"),
        ({"LANEWAY_MODEL": "gpt"}, "model (LANEWAY_MODEL)"),
        ({"LANEWAY_STORE": "redis://x"}, "store (LANEWAY_STORE)"),
        ({"LANEWAY_TOKENS": "a:short"}, "shorter than 8"),
        ({"LANEWAY_TOKENS": "a:same-secret,b:same-secret"}, "share a secret"),
        ({"LANEWAY_HOST": "::", "LANEWAY_TOKENS": ""}, "refusing to bind"),
        ({"LANEWAY_MODEL": "openai"}, "LANEWAY_OPENAI_MODEL"),
        ({"LANEWAY_CANCEL_GRACE": "nan"}, "cancel_grace"),
        ({"LANEWAY_CORS_ORIGINS": "https://a.example/app"}, "cors_origins (LANEWAY_CORS_ORIGINS)"),
        ({"LANEWAY_LOG_FORMAT": "xml"}, "log_format (LANEWAY_LOG_FORMAT)"),
    ],
)
def test_each_bad_setting_is_named(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert message in str(err.value)


def test_settings_layers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "laneway.toml").write_text("port = 9000\nllm_lane = 2\ndeadline = 30\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LANEWAY_PORT", "9001")
    monkeypatch.setenv("LANEWAY_TOKENS", "alice:secret-one, bob:secret-two")
    monkeypatch.setenv("LANEWAY_IDLE", "none")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    s = load_settings(port=9002)
    assert (s.port, s.llm_lane, s.deadline, s.idle) == (9002, 2, 30.0, None)
    assert s.secret_of() == {"secret-one": "alice", "secret-two": "bob"}
    assert s.openai_api_key is not None
    assert s.openai_api_key.get_secret_value() == "sk-test"
    assert "sk-test" not in repr(s)
    assert load_settings().port == 9001
    monkeypatch.delenv("LANEWAY_PORT")
    assert load_settings().port == 9000
    assert Settings().store == "sqlite:///laneway.db"  # type: ignore[call-arg]


def test_unknown_key_in_the_config_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "laneway.toml").write_text('store = "memory://"\nprot = 1\n')
    done = run_cli("serve", "--config", str(tmp_path / "laneway.toml"))
    assert done.returncode == 2
    assert "prot" in done.stderr


def test_config_file_is_read_and_flags_override_it(tmp_path: Path) -> None:
    (tmp_path / "laneway.toml").write_text(
        'store = "sqlite:///does-not-matter.db"\nmodel = "echo"\nmax_text_chars = 5\n'
    )
    srv = start_server(  # reads ./laneway.toml
        "--store", "memory://", cwd=tmp_path, LANEWAY_STORE="", LANEWAY_MAX_TEXT_CHARS=""
    )
    try:
        with srv.client() as client:
            assert (
                client.post("/v1/sessions/a/messages", json={"text": "123456"}).status_code == 422
            )
            job = client.post("/v1/sessions/a/messages", json={"text": "12345"}).json()
            info = wait_state(client, job["job_id"], "succeeded")
        assert info["handler"] == "echo"
        assert "store memory://" in "".join(srv.output)
    finally:
        srv.stop()


@pytest.mark.slow
def test_healthz_fails_after_the_loop_was_blocked() -> None:
    srv = start_server(LANEWAY_WATCHDOG_THRESHOLD="0.2", LANEWAY_UNHEALTHY_AFTER_BLOCK="1.0")
    try:
        with srv.client() as client:
            assert client.get("/healthz").status_code == 200
            job = client.post(
                f"/v1/sessions/{session_name()}/messages", json={"text": "/block 0.6"}
            )
            wait_state(client, job.json()["job_id"], "succeeded")
            sick = client.get("/healthz")
            assert sick.status_code == 503
            assert sick.json()["status"] == "blocked"
            assert sick.json()["loop_blocks"] >= 1
            assert "laneway_loop_blocks_total 1.0" in client.get("/metrics").text
            time.sleep(1.1)
            assert client.get("/healthz").status_code == 200
        assert "loop.blocked" in "".join(srv.output)  # logged with the blocking stack
        assert "block_loop" in "".join(srv.output)
    finally:
        srv.stop()


def test_server_stops_cleanly_with_open_event_streams() -> None:
    srv = start_server(LANEWAY_LOG_LEVEL="info")
    with (
        httpx.Client(base_url=srv.url, timeout=10) as client,
        client.stream("GET", "/v1/sessions/held/events") as resp,
    ):
        lines = resp.iter_lines()
        next(lines)
        started = time.monotonic()
        srv.proc.terminate()
        for _line in lines:  # the server ends the stream instead of waiting for the client
            pass
    srv.proc.wait(timeout=10)  # uvicorn re-raises SIGTERM after its graceful shutdown
    assert time.monotonic() - started < 3
    srv.stop()
    assert "Application shutdown complete" in "".join(srv.output)
