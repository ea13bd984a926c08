"""The HTTP API's request and response bodies (pydantic models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from .._types import JobState

__all__ = [
    "Accepted",
    "Health",
    "JobList",
    "JobOut",
    "LaneOut",
    "MessageIn",
    "RunningOut",
    "SnapshotOut",
    "StopIn",
    "StopOut",
    "ZombieOut",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MessageIn(_Strict):
    text: str = Field(min_length=1, description="the user's message")
    handler: str | None = Field(None, min_length=1, max_length=128)
    idempotency_key: str | None = Field(None, min_length=1, max_length=256)


class Accepted(BaseModel):
    job_id: str
    session: str
    state: JobState
    seq: int | None = Field(
        default=None, description="seq of the job's job.queued event (new jobs only)", exclude=True
    )


class JobOut(BaseModel):
    id: str
    session: str
    handler: str
    state: JobState
    attempts: int
    reason: str | None
    error: str | None
    result: Any
    payload: Any
    priority: int
    created_at: float
    updated_at: float


class JobList(BaseModel):
    jobs: list[JobOut]
    next: str | None = Field(description="pass as `before` for the next page; null on the last")


class StopIn(_Strict):
    drop_queued: StrictBool = False  # JSON true/false only: "false" or 0 must not drop a queue


class StopOut(BaseModel):
    session: str
    cancelled: list[str]
    dropped: list[str]


class LaneOut(BaseModel):
    name: str
    limit: int
    active: int
    queued: int = Field(description="jobs waiting for this lane's slots")
    oldest_active_s: float | None
    oldest_queued_s: float | None
    behind_session: int = Field(
        0, description="jobs that need this shared lane but wait for their own session's turn"
    )


class ZombieOut(BaseModel):
    job_id: str
    session: str
    kind: str
    age_s: float


class RunningOut(BaseModel):
    job_id: str
    session: str
    handler: str
    attempt: int
    node: str = Field(description="the node that runs it")
    age_s: float


class SnapshotOut(BaseModel):
    lanes: list[LaneOut]
    jobs_queued: int
    jobs_running: int
    zombies: list[ZombieOut]
    loop_lag: float
    loop_blocks: int
    node: str = Field("", description="the node that answered")
    running: list[RunningOut] = Field(
        default_factory=list,
        description="turns running now, oldest first, and the node of each: this node's"
        " and, on PostgreSQL, every node's as of its last poll",
    )


class Health(BaseModel):
    status: str
    loop_lag: float
    loop_blocks: int
