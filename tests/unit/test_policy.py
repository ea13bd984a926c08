"""The policy: one verdict per ended attempt, the same for live endings and recovery."""

from __future__ import annotations

import pytest

from laneway import JobState, Reason, Retry
from laneway._core._policy import Ended, Happened, Rules, Verdict, blame, decide

RULES = Rules(
    Retry(max_attempts=3, backoff=2.0, max_backoff=60.0), poison_after=3, jitter=lambda: 0.5
)


def happened(
    ended: Ended = Ended.RETURNED,
    reason: Reason | None = None,
    *,
    output: bool = False,
    attempts: int = 1,
    lost: int = 0,
    no_retry: bool = False,
    recovered: bool = False,
) -> Happened:
    error = None if ended is Ended.RETURNED else "boom"
    kind = None if error is None else "ValueError"
    return Happened(ended, reason, kind, error, output, attempts, lost, no_retry, recovered)


def test_a_returned_attempt_succeeds() -> None:
    assert decide(happened(), RULES) == Verdict(JobState.SUCCEEDED)


def test_an_error_retries_at_the_head_after_a_jittered_backoff_then_fails() -> None:
    first = decide(happened(Ended.RAISED), RULES)
    assert (first.state, first.reason, first.error) == (JobState.QUEUED, "ValueError", "boom")
    assert first.delay == pytest.approx(1.5)  # base 2 s, half of it jittered by 0.5
    assert decide(happened(Ended.RAISED, attempts=2), RULES).delay == pytest.approx(3.0)
    last = decide(happened(Ended.RAISED, attempts=3), RULES)
    assert (last.state, last.reason) == (JobState.FAILED, "ValueError")


def test_no_retry_after_output_unless_allowed() -> None:
    assert decide(happened(Ended.RAISED, output=True), RULES).state is JobState.FAILED
    lenient = Rules(Retry(retry_after_output=True), 3, lambda: 0.0)
    assert decide(happened(Ended.RAISED, output=True), lenient).state is JobState.QUEUED


def test_limits_time_out_and_a_later_stop_forbids_the_retry() -> None:
    timed = decide(happened(Ended.CANCELLED, Reason.DEADLINE), RULES)
    assert (timed.state, timed.reason) == (JobState.QUEUED, Reason.DEADLINE)
    final = decide(happened(Ended.CANCELLED, Reason.IDLE, no_retry=True), RULES)
    assert (final.state, final.reason, final.error) == (
        JobState.TIMED_OUT,
        Reason.IDLE,
        "idle limit exceeded",
    )


def test_a_limit_outranks_a_result_that_came_too_late() -> None:
    assert decide(happened(Ended.RETURNED, Reason.DEADLINE), RULES).state is JobState.QUEUED
    assert decide(happened(Ended.RETURNED, Reason.STOPPED), RULES).state is JobState.CANCELLED


def test_stop_and_foreign_cancellations_cancel_and_shutdown_goes_back_to_queued() -> None:
    assert decide(happened(Ended.CANCELLED, Reason.STOPPED), RULES) == Verdict(
        JobState.CANCELLED, Reason.STOPPED
    )
    assert decide(happened(Ended.CANCELLED), RULES).state is JobState.CANCELLED
    shutdown = decide(happened(Ended.CANCELLED, Reason.SHUTDOWN), RULES)
    assert (shutdown.state, shutdown.reason, shutdown.delay) == (
        JobState.QUEUED,
        Reason.SHUTDOWN,
        0.0,
    )


def test_losses_count_toward_poison_and_recovery_retries_at_once() -> None:
    live = decide(happened(Ended.LOST), RULES)
    assert (live.state, live.reason, live.lost) == (JobState.QUEUED, Reason.LOST, True)
    assert live.delay > 0
    recovered = decide(happened(Ended.LOST, recovered=True), RULES)
    assert (recovered.state, recovered.delay, recovered.lost) == (JobState.QUEUED, 0.0, True)
    dead = decide(happened(Ended.LOST, attempts=1, lost=2), RULES)
    assert (dead.state, dead.reason, dead.lost) == (JobState.DEAD, Reason.LOST, True)
    spent = decide(happened(Ended.LOST, attempts=3, lost=1), RULES)
    assert (spent.state, spent.lost) == (JobState.FAILED, True)


# -- endings laneway did not decide ------------------------------------------------


def test_a_shutdown_gives_back_a_turn_without_output_uncounted() -> None:
    verdict = decide(happened(Ended.CANCELLED, Reason.SHUTDOWN, no_retry=True), RULES)
    assert (verdict.state, verdict.reason, verdict.counts_attempt) == (
        JobState.QUEUED,
        Reason.SHUTDOWN,
        False,
    )
    assert verdict.delay == 0.0
    # Even with no attempt left: an interrupted attempt is not one of its attempts.
    assert decide(happened(Ended.CANCELLED, Reason.SHUTDOWN, attempts=3), RULES).state is (
        JobState.QUEUED
    )


def test_a_shutdown_never_replays_output_unless_allowed() -> None:
    ended = happened(Ended.CANCELLED, Reason.SHUTDOWN, output=True)
    assert decide(ended, RULES)[:2] == (JobState.FAILED, Reason.SHUTDOWN)
    replay = Rules(Retry(retry_after_output=True), poison_after=3)
    assert decide(ended, replay)[:2] == (JobState.QUEUED, Reason.SHUTDOWN)


def test_a_cancellation_laneway_did_not_issue_is_a_shutdown_not_a_stop() -> None:
    verdict = decide(happened(Ended.TORN_DOWN), RULES)
    assert (verdict.state, verdict.reason, verdict.counts_attempt) == (
        JobState.QUEUED,
        Reason.SHUTDOWN,
        False,
    )
    assert decide(happened(Ended.TORN_DOWN, output=True), RULES).state is JobState.FAILED
    # A cancellation laneway issued is still a stop.
    assert decide(happened(Ended.CANCELLED), RULES).state is JobState.CANCELLED


def test_blame_falls_on_an_attempt_alone_or_on_the_one_suspect_among_many() -> None:
    assert blame([]) is None
    assert blame([("a", False)]) == "a"
    assert blame([("a", False), ("b", False)]) is None
    assert blame([("a", False), ("s", True), ("b", False)]) == "s"
    assert blame([("s", True), ("t", True)]) is None


def test_a_crash_bystander_is_a_suspect_given_back_uncounted_never_dead() -> None:
    last_chance = Happened(
        Ended.LOST, None, "WorkerLost", "died", False, 3, 2, recovered=True, blamed=False
    )
    verdict = decide(last_chance, RULES)
    assert (verdict.state, verdict.reason, verdict.lost, verdict.counts_attempt) == (
        JobState.QUEUED,
        Reason.SUSPECT,
        False,
        False,
    )
    streamed = last_chance._replace(output=True)
    assert decide(streamed, RULES)[:2] == (JobState.FAILED, Reason.LOST)
    culprit = last_chance._replace(blamed=True)
    assert decide(culprit, RULES)[:2] == (JobState.DEAD, Reason.LOST)


def test_an_attempt_cancelled_for_a_lost_lease_is_left_to_its_new_owner() -> None:
    verdict = decide(happened(Ended.CANCELLED, Reason.LOST), RULES)
    assert (verdict.state, verdict.lost) == (JobState.RUNNING, False)
