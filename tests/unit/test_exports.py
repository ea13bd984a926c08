"""The public surface: ``laneway.__all__`` is pinned, every name imports, and
every error shares the one root."""

from __future__ import annotations

import importlib

import laneway

PUBLIC = {
    "ProcessFailed",
    "ProcessPool",
    "Closed",
    "ConfigError",
    "Event",
    "InvalidPayload",
    "InvalidSession",
    "Job",
    "JobCancelled",
    "JobDead",
    "JobError",
    "JobFailed",
    "JobInfo",
    "JobNotLive",
    "JobState",
    "JobTimedOut",
    "LaneStats",
    "Laneway",
    "LanewayError",
    "Limits",
    "NotRequeueable",
    "Outcome",
    "Overloaded",
    "ProcessResult",
    "Reason",
    "Retry",
    "RunningJob",
    "Snapshot",
    "StopResult",
    "Store",
    "StoreError",
    "TurnContext",
    "UnknownHandler",
    "UnknownJob",
    "Zombie",
}
ERRORS = {
    "Closed",
    "ConfigError",
    "InvalidPayload",
    "InvalidSession",
    "JobCancelled",
    "JobDead",
    "JobError",
    "JobFailed",
    "JobNotLive",
    "JobTimedOut",
    "NotRequeueable",
    "Overloaded",
    "ProcessFailed",
    "StoreError",
    "UnknownHandler",
    "UnknownJob",
}


def test_all_is_exactly_the_public_names() -> None:
    assert set(laneway.__all__) == PUBLIC
    assert len(laneway.__all__) == len(PUBLIC)


def test_every_public_name_imports() -> None:
    module = importlib.import_module("laneway")
    for name in PUBLIC:
        assert getattr(module, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from laneway import *", namespace)
    assert set(namespace) >= PUBLIC


def test_every_error_derives_from_the_root() -> None:
    for name in ERRORS:
        error = getattr(laneway, name)
        assert issubclass(error, laneway.LanewayError), name
    for name in ("JobFailed", "JobTimedOut", "JobCancelled", "JobDead"):
        assert issubclass(getattr(laneway, name), laneway.JobError)
    assert issubclass(laneway.LanewayError, Exception)
    others = PUBLIC - ERRORS - {"LanewayError"}
    assert not [
        n
        for n in others
        if isinstance(getattr(laneway, n), type) and issubclass(getattr(laneway, n), BaseException)
    ]


def test_the_testing_helpers_are_importable() -> None:
    from laneway import testing

    assert set(testing.__all__) == {
        "FakeOpenAI",
        "FakeRequest",
        "block_loop",
        "fake_agent_cli",
        "hang",
        "hang_ignoring_cancel",
        "model_stream",
    }
