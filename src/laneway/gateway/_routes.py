"""HTTP routes: messages, stop, job inspection and recovery, lanes, health, metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from .._errors import LanewayError, NotRequeueable, Overloaded, UnknownHandler
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
    RunningOut,
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
    handler, payload = body.handler or gw.handler, {"text": body.text}
    started = time.perf_counter()
    try:
        job_id = (
            await gw.lw.submit(key, handler, payload, idempotency_key=body.idempotency_key)
        ).id
    except Overloaded:
        # A retry of a message already accepted is answered even when the queue is full.
        earlier = await _accepted_before(gw, key, body.idempotency_key)
        if earlier is None:
            raise
        job_id = earlier.id
    gw.metrics.submit.observe(time.perf_counter() - started)
    state = JobState.QUEUED
    if body.idempotency_key is not None:  # may be an earlier job: say where it is
        info = await gw.lw.get(job_id)
        if info is not None and (info.handler, info.payload) != (handler, payload):
            raise ApiError(
                409,
                "idempotency_conflict",
                f"idempotency_key was used for another message (job {info.id})",
            )
        state = info.state if info is not None else state
    return Accepted(job_id=job_id, session=session, state=state)


#: How far back a retry's earlier job is looked for when the queue is full.
_RETRY_LOOKBACK_PAGES, _RETRY_PAGE = 5, 200


async def _accepted_before(gw: Gateway, key: str, idempotency_key: str | None) -> JobInfo | None:
    """The job of ``key`` accepted with ``idempotency_key``, among its newest jobs."""
    if idempotency_key is None:
        return None
    before = None
    for _ in range(_RETRY_LOOKBACK_PAGES):
        page = await gw.lw.jobs(session=key, before=before, limit=_RETRY_PAGE)
        for info in page:
            if info.idempotency_key == idempotency_key:
                return info
        if len(page) < _RETRY_PAGE:
            return None
        before = page[-1].id
    return None


_MESSAGE_BODY = {
    "required": True,
    "content": {"application/json": {"schema": MessageIn.model_json_schema()}},
}


B = TypeVar("B", bound=BaseModel)


async def read_body(request: Request, model: type[B], empty: bytes | None = None) -> B:
    """The body as JSON whatever its Content-Type (``empty`` stands in for no body);
    a bad one raises the usual 422."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw if raw or empty is None else empty)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


async def read_message(request: Request) -> MessageIn:
    return await read_body(request, MessageIn)


# The hot path: auth and body are read directly rather than through dependencies
# (a third of the request's cost at 1,000 messages/s); the schema is declared by hand.
@router.post(
    "/v1/sessions/{session}/messages",
    status_code=202,
    tags=["sessions"],
    response_model=Accepted,
    responses={
        **_ERRORS,
        409: {"description": "idempotency_key was used for another message"},
        429: {"description": "overloaded; see Retry-After"},
    },
    openapi_extra={"requestBody": _MESSAGE_BODY, "security": [{"HTTPBearer": []}]},
)
async def post_message(request: Request, session: SessionKey) -> JSONResponse:
    """Queue a message for the session; answers once the job is committed."""
    gw = gateway_of(request)
    who = principal_for(gw.secrets, bearer_secret(request.headers.get("authorization")))
    accepted = await submit(gw, who, session, await read_message(request))
    body: dict[str, Any] = {
        "job_id": accepted.job_id,
        "session": session,
        "state": accepted.state.value,
    }
    if (seq := gw.activity.queued_seq(accepted.job_id)) is not None:
        body["seq"] = seq  # its job.queued event: follow with ?after=seq-1
    return JSONResponse(body, 202)


@router.post(
    "/v1/sessions/{session}/stop",
    tags=["sessions"],
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": StopIn.model_json_schema()}},
        }
    },
)
async def stop_session(request: Request, session: SessionKey, who: Caller) -> StopOut:
    """End the running turn (within cancel_grace); optionally drop the queued ones."""
    gw = gateway_of(request)
    body = await read_body(request, StopIn, empty=b"{}")  # like messages: any Content-Type
    result = await gw.lw.stop(who.internal(session), drop_queued=body.drop_queued)
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
    before: Annotated[str | None, Query(max_length=128, description="a job id: older jobs")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobList:
    """This token's jobs, newest first, filtered by state and session (e.g. ``?state=dead``),
    in pages: ``next`` is the ``before`` of the following page."""
    gw = gateway_of(request)
    if before is not None:
        info = await gw.lw.get(before)
        if info is None or not who.owns(info.session):
            raise ApiError(422, "invalid_cursor", "before must be the id of one of your jobs")
    if session is not None:
        key = who.internal(session)
        infos = await gw.lw.jobs(state, session=key, before=before, limit=limit)
    else:  # the token's namespace, from its own index: other tokens' jobs are never read
        infos = await gw.lw.jobs(state, prefix=who.prefix or None, before=before, limit=limit)
    following = infos[-1].id if len(infos) == limit else None
    return JobList(jobs=[job_out(i, who) for i in infos], next=following)


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
    """What ``who`` may see: shared lanes (capacity and load, no session names), its own
    session lanes, zombies and job counts, and loop health."""
    lanes: list[LaneOut] = []
    mine: list[LaneOut] = []
    for lane in snap.lanes:
        name = lane.name
        if name.startswith("session:"):
            key = name[len("session:") :]
            if not who.owns(key):
                continue
            name = "session:" + who.external(key)
        out = LaneOut(
            name=name,
            limit=lane.limit,
            active=lane.active,
            queued=lane.queued,
            oldest_active_s=lane.oldest_active_s,
            oldest_queued_s=lane.oldest_queued_s,
            behind_session=lane.behind_session,
        )
        lanes.append(out)
        if name.startswith("session:"):
            mine.append(out)
    zombies = [
        ZombieOut(job_id=z.job_id, session=who.external(z.session), kind=z.kind, age_s=z.age_s)
        for z in snap.zombies
        if who.owns(z.session)
    ]
    running = [
        RunningOut(
            job_id=r.job_id,
            session=who.external(r.session),
            handler=r.handler,
            attempt=r.attempt,
            node=r.node,
            age_s=r.age_s,
        )
        for r in snap.running
        if who.owns(r.session)
    ]
    shared = who.name is None  # without tokens everything is the caller's
    return SnapshotOut(
        lanes=lanes,
        jobs_queued=snap.jobs_queued if shared else sum(lane.queued for lane in mine),
        jobs_running=snap.jobs_running if shared else sum(lane.active for lane in mine),
        zombies=zombies,
        loop_lag=snap.loop_lag,
        loop_blocks=snap.loop_blocks,
        node=snap.node,
        running=running,
    )


@router.get("/v1/lanes", tags=["lanes"], responses=_ERRORS)
async def lanes(request: Request, who: Caller) -> SnapshotOut:
    """Shared lanes' capacity and load; this token's busy session lanes, job counts and
    zombies; loop health."""
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
