"""``laneway serve`` logs: one JSON object per line with the structured fields,
or text that shows them too; a timed-out attempt that is retried does not read
as the job's end."""

from __future__ import annotations

import json
import time
from typing import Any

from .conftest import LiveServer, session_name, start_server, wait_state


def _start(log_format: str = "text") -> LiveServer:
    """A /hang is timed out by the idle limit, retried once, then timed out for good."""
    return start_server(
        LANEWAY_MAX_ATTEMPTS="2",
        LANEWAY_IDLE="0.3",
        LANEWAY_LOG_LEVEL="info",
        LANEWAY_LOG_FORMAT=log_format,
    )


def _hang_twice(server: LiveServer) -> str:
    with server.client() as client:
        resp = client.post(f"/v1/sessions/{session_name()}/messages", json={"text": "/hang"})
        job = str(resp.json()["job_id"])
        wait_state(client, job, "timed_out")
    return job


def _wait_for_line(server: LiveServer, needle: str) -> None:
    deadline = time.monotonic() + 5
    while not any(needle in line for line in server.output):
        assert time.monotonic() < deadline, "".join(server.output)
        time.sleep(0.02)


def test_json_logs_carry_the_fields_and_tell_an_attempt_from_the_job() -> None:
    server = _start("json")
    try:
        job = _hang_twice(server)
        _wait_for_line(server, '"event": "job.timed_out"')
    finally:
        server.stop()
    records: list[dict[str, Any]] = []
    for line in server.output:
        if line.startswith("laneway listening"):
            continue
        records.append(json.loads(line))  # every log line is one JSON object
    mine = [r for r in records if r.get("job_id") == job]
    assert [(r["event"], r["attempt"]) for r in mine] == [
        ("attempt.timed_out", 1),
        ("job.retry", 1),
        ("attempt.timed_out", 2),
        ("job.timed_out", 2),
    ]
    assert all(r["reason"] == "idle" and r["session"] for r in mine)
    assert mine[-1]["state"] == "timed_out"
    assert {"at", "level", "logger", "message"} <= set(mine[0])


def test_text_logs_show_the_fields_too() -> None:
    server = _start()
    try:
        job = _hang_twice(server)
        _wait_for_line(server, "job.timed_out:")
    finally:
        server.stop()
    final = next(line for line in server.output if "job.timed_out:" in line)
    assert f"job_id='{job}'" in final
    assert "reason='idle'" in final
    assert "attempt=2" in final


def test_otel_variables_turn_on_traces_of_every_job() -> None:
    server = start_server(
        OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="gw-test", OTEL_BSP_SCHEDULE_DELAY="50"
    )
    try:
        with server.client() as client:
            resp = client.post(f"/v1/sessions/{session_name()}/messages", json={"text": "hi"})
            job = resp.json()["job_id"]
            wait_state(client, job, "succeeded")
        _wait_for_line(server, '"name": "laneway.job"')
    finally:
        server.stop()
    printed = "".join(server.output)
    assert '"name": "laneway.attempt"' in printed
    assert f'"laneway.job_id": "{job}"' in printed
    assert '"service.name": "gw-test"' in printed
