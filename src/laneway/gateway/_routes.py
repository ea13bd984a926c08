"""HTTP routes: messages, stop, job inspection and recovery, lanes, health, metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from .._errors import LanewayError, NotRequeueable, UnknownHandler
from .._types import JobInfo, JobState, Snapshot
from ._auth import SESSION_PATTERN, Caller, Principal, bearer_secret, principal_for
from ._errors import ApiError, error_body
from ._gateway import Gateway
from ._schemas import (
    Accepted,
    Health,
    JobList,
    JobOut,
    LaneOut,
    MessageIn,
    SnapshotOut,
    StopIn,
    StopOut,
    ZombieOut,
)

__all__ = ["router"]

router = APIRouter()

SessionKey = Annotated[
    str, Path(pattern=SESSION_PATTERN, max_length=128, description="the session key")
]
JobId = Annotated[str, Path(max_length=128, description="a job id")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or unknown bearer token"},
    422: {"description": "bad input: `error.code` says what"},
}


def gateway_of(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def job_out(info: JobInfo, who: Principal) -> JobOut:
    return JobOut(
        id=info.id,
        session=who.external(info.session),
        handler=info.handler,
        state=info.state,
        attempts=info.attempts,
        reason=info.reason,
        error=info.error,
        result=info.result,
        payload=info.payload,
        priority=info.priority,
        created_at=info.created_at,
        updated_at=info.updated_at,
    )


async def submit(gw: Gateway, who: Principal, session: str, body: MessageIn) -> Accepted:
    """Accept one message: shared by the HTTP route and the WebSocket ``send`` frame."""
    key = who.internal(session)
    if len(body.text) > gw.settings.max_text_chars:
        raise ApiError(
            422, "text_too_long", f"text is limited to {gw.settings.max_text_chars} characters"
        )
    started = time.perf_counter()
    job = await gw.lw.submit(
        key, body.handler or gw.handler, {"text": body.text}, idempotency_key=body.idempotency_key
    )
    gw.metrics.submit.observe(time.perf_counter() - started)
    state = JobState.QUEUED
    if body.idempotency_key is not None:  # may be an earlier job: say where it is
        info = await gw.lw.get(job.id)
        state = info.state if info is not None else state
    return Accepted(job_id=job.id, session=session, state=state)


_MESSAGE_BODY = {
    "required": True,
    "content": {"application/json": {"schema": MessageIn.model_json_schema()}},
}


async def read_message(request: Request) -> MessageIn:
    """The body as a ``MessageIn``; a bad one raises the usual 422."""
    try:
        return MessageIn.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


# The hot path: auth and body are read directly rather than through dependencies
# (a third of the request's cost at 1,000 messages/s); the schema is declared by hand.
@router.post(
    "/v1/sessions/{session}/messages",
    status_code=202,
    tags=["sessions"],
    response_model=Accepted,
    responses={**_ERRORS, 429: {"description": "overloaded; see Retry-After"}},
    openapi_extra={"requestBody": _MESSAGE_BODY, "security": [{"HTTPBearer": []}]},
)
async def post_message(request: Request, session: SessionKey) -> JSONResponse:
    """Queue a message for the session; answers once the job is committed."""
    gw = gateway_of(request)
    who = principal_for(gw.secrets, bearer_secret(request.headers.get("authorization")))
    accepted = await submit(gw, who, session, await read_message(request))
    return JSONResponse(
        {"job_id": accepted.job_id, "session": session, "state": accepted.state.value}, 202
    )


@router.post("/v1/sessions/{session}/stop", tags=["sessions"], responses=_ERRORS)
async def stop_session(
    request: Request,
    session: SessionKey,
    who: Caller,
    body: Annotated[StopIn | None, Body()] = None,
) -> StopOut:
    """End the running turn (within cancel_grace); optionally drop the queued ones."""
    gw = gateway_of(request)
    result = await gw.lw.stop(who.internal(session), drop_queued=bool(body and body.drop_queued))
    return StopOut(session=session, cancelled=result.cancelled, dropped=result.dropped)


async def _owned_job(gw: Gateway, who: Principal, job_id: str) -> JobInfo:
    info = await gw.lw.get(job_id)
    if info is None or not who.owns(info.session):
        raise ApiError(404, "job_not_found", f"no job {job_id!r}")
    return info


@router.get("/v1/jobs/{job_id}", tags=["jobs"], responses={**_ERRORS, 404: {}})
async def get_job(request: Request, job_id: JobId, who: Caller) -> JobOut:
    """One job: state, attempts, error, result."""
    return job_out(await _owned_job(gateway_of(request), who, job_id), who)


@router.get("/v1/jobs", tags=["jobs"], responses=_ERRORS)
async def list_jobs(
    request: Request,
    who: Caller,
    state: JobState | None = None,
    session: Annotated[str | None, Query(pattern=SESSION_PATTERN, max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobList:
    """Jobs, newest first, filtered by state and session (e.g. ``?state=dead``)."""
    gw = gateway_of(request)
    if session is not None:
        infos = await gw.lw.jobs(state, session=who.internal(session), limit=limit)
    elif who.name is None:
        infos = await gw.lw.jobs(state, limit=limit)
    else:  # other tokens' jobs are filtered out of a wider window
        wide = await gw.lw.jobs(state, limit=min(limit * 20, 10_000))
        infos = [i for i in wide if who.owns(i.session)][:limit]
    return JobList(jobs=[job_out(i, who) for i in infos])


@router.post("/v1/jobs/{job_id}/requeue", tags=["jobs"], responses={**_ERRORS, 404: {}, 409: {}})
async def requeue_job(request: Request, job_id: JobId, who: Caller) -> Accepted:
    """Send a failed, timed_out or dead job back to its session's queue."""
    gw = gateway_of(request)
    info = await _owned_job(gw, who, job_id)
    try:
        await gw.lw.requeue(job_id)
    except UnknownHandler as exc:
        raise ApiError(409, "unknown_handler", str(exc)) from None
    except LookupError:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}") from None
    except NotRequeueable as exc:
        raise ApiError(409, "not_requeueable", str(exc)) from None
    return Accepted(job_id=job_id, session=who.external(info.session), state=JobState.QUEUED)


def snapshot_out(snap: Snapshot, who: Principal) -> SnapshotOut:
    lanes = []
    for lane in snap.lanes:
        name = lane.name
        if name.startswith("session:"):
            key = name[len("session:") :]
            if not who.owns(key):
                continue
            name = "session:" + who.external(key)
        lanes.append(
            LaneOut(
                name=name,
                limit=lane.limit,
                active=lane.active,
                queued=lane.queued,
                oldest_active_s=lane.oldest_active_s,
                oldest_queued_s=lane.oldest_queued_s,
            )
        )
    zombies = [
        ZombieOut(job_id=z.job_id, session=who.external(z.session), kind=z.kind, age_s=z.age_s)
        for z in snap.zombies
        if who.owns(z.session)
    ]
    return SnapshotOut(
        lanes=lanes,
        jobs_queued=snap.jobs_queued,
        jobs_running=snap.jobs_running,
        zombies=zombies,
        loop_lag=snap.loop_lag,
        loop_blocks=snap.loop_blocks,
    )


@router.get("/v1/lanes", tags=["lanes"], responses=_ERRORS)
async def lanes(request: Request, who: Caller) -> SnapshotOut:
    """Shared lanes, this caller's busy session lanes, zombies, loop health."""
    return snapshot_out(gateway_of(request).lw.snapshot(), who)


@router.get("/healthz", tags=["ops"], responses={503: {"model": Health}})
async def healthz(request: Request) -> JSONResponse:
    """Liveness: fails while the event loop is (or was just) blocked."""
    gw = gateway_of(request)
    snap = gw.lw.snapshot()
    bad = gw.recently_blocked()
    body = Health(
        status="blocked" if bad else "ok", loop_lag=snap.loop_lag, loop_blocks=snap.loop_blocks
    )
    return JSONResponse(body.model_dump(), 503 if bad else 200)


@router.get("/readyz", tags=["ops"], responses={503: {}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the store answers."""
    gw = gateway_of(request)
    if gw.lw.closing:
        return JSONResponse(error_body("shutting_down", "the gateway is shutting down"), 503)
    if not gw.lw.running:
        return JSONResponse(error_body("not_ready", "the gateway is not running"), 503)
    try:
        async with asyncio.timeout(2.0):
            await gw.lw.store.ping()
    except (LanewayError, TimeoutError, OSError) as exc:
        return JSONResponse(error_body("not_ready", str(exc) or "store timed out"), 503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", tags=["ops"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    data = generate_latest(gateway_of(request).metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
