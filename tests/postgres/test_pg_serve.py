"""Two ``laneway serve`` replicas on one database: POST to one, SSE from the
other, stop from either."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ..integration.conftest import LiveServer, start_server, wait_state


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[tuple[LiveServer, LiveServer]]:
    url = f"{postgres_url}&poll=200ms&lease=5s"
    servers: list[LiveServer] = []
    try:
        for _ in range(2):
            servers.append(start_server(LANEWAY_STORE=url))
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


@pytest.mark.slow
def test_post_to_one_replica_follow_and_stop_from_the_other(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    a, b = replicas
    with a.client() as ca, b.client() as cb:
        job = ca.post("/v1/sessions/r1/messages", json={"text": "/slow 30"}).json()["job_id"]
        kinds: list[str] = []
        with cb.stream("GET", "/v1/sessions/r1/events") as resp:
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    kinds.append(json.loads(line[5:])["kind"])
                if "delta" in kinds:
                    break
        assert kinds[:2] == ["job.queued", "job.started"]
        stopped = cb.post("/v1/sessions/r1/stop", json={}).json()
        assert stopped["cancelled"] == [job]
        assert wait_state(ca, job, "cancelled")["reason"] == "stopped"
        again = cb.post("/v1/sessions/r1/messages", json={"text": "/slow 30"}).json()["job_id"]
        wait_state(ca, again, "running")
        assert ca.post("/v1/sessions/r1/stop", json={}).json()["cancelled"] == [again]
        assert wait_state(cb, again, "cancelled")["reason"] == "stopped"
