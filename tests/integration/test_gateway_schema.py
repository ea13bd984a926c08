"""Requests generated from the OpenAPI schema (valid and invalid) never get a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from .conftest import TOKENS, LiveServer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("tokens", [False, True], ids=["no-tokens", "with-a-token"])
def test_generated_requests_get_no_server_error(
    request: pytest.FixtureRequest, mode: GenerationMode, tokens: bool
) -> None:
    server: LiveServer = request.getfixturevalue("token_server" if tokens else "server")
    headers = {"Authorization": f"Bearer {TOKENS['alice']}"} if tokens else None
    loaded = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    # The event stream never ends by design; it has its own tests.
    schema = loaded.exclude(path="/v1/sessions/{session}/events")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 8

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=20,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error], timeout=10)

        try:
            check()
        except Unsatisfiable:  # nothing about it can be invalid (no parameters, no body)
            assert mode is GenerationMode.NEGATIVE
