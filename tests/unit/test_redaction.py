"""The log scrubber: secrets, ``token=`` values and credentials never survive a record."""

from __future__ import annotations

import logging

import pytest

from laneway.gateway._redaction import Redactor, install_redaction


@pytest.mark.parametrize(
    ("line", "clean"),
    [
        (
            '"WebSocket /v1/ws?token=s3cret-value" [accepted]',
            '"WebSocket /v1/ws?token=***" [accepted]',
        ),
        ("GET /v1/ws?a=1&token=abc&b=2 HTTP/1.1", "GET /v1/ws?a=1&token=***&b=2 HTTP/1.1"),
        ("< authorization: Bearer abc.def", "< authorization: Bearer ***"),
        ("< Authorization: Basic dXNlcjpwYXNz", "< Authorization: Basic ***"),
        ("{'authorization': 'Bearer abc'}", "{'authorization': 'Bearer ***'}"),
        ("header bearer abc", "header bearer ***"),
        ("the key is a-long-secret here", "the key is *** here"),
        ("nothing to hide", "nothing to hide"),
    ],
)
def test_a_line_is_scrubbed(line: str, clean: str) -> None:
    assert Redactor(["a-long-secret"])(line) == clean


def test_records_are_scrubbed_whichever_logger_and_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    undo = install_redaction(["a-long-secret"])
    try:
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("websockets.server").debug("< %s", "x-token: a-long-secret")
            logging.getLogger("uvicorn.error").info('"WebSocket %s"', "/v1/ws?token=zzz")
    finally:
        undo()
    assert caplog.messages == ["< x-token: ***", '"WebSocket /v1/ws?token=***"']
