"""WebSocket frames in: parsed and validated as strictly as HTTP bodies.

A frame is one JSON object with a ``type``; each type has a model with the
same rules (and the same concise error messages) as the HTTP route it
mirrors. Input that is not JSON (``NaN``, nesting too deep for the parser)
is refused as ``invalid_json`` rather than echoed or dropping the socket.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from ._errors import ApiError, describe_invalid
from ._schemas import MessageIn, StopIn

__all__ = ["Frame", "frame_id", "load", "parse_frame"]

#: A request id the client may attach; it is echoed in the reply, so it must be plain JSON.
_ID_LENGTH = 128
FrameId = (
    Annotated[StrictStr, Field(max_length=_ID_LENGTH)]
    | Annotated[StrictInt, Field(ge=-(2**53), le=2**53)]
    | None
)


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session: str
    id: FrameId = None


class SubscribeFrame(_Frame):
    type: Literal["subscribe"]
    after: Annotated[StrictInt, Field(ge=0, lt=2**63)] = 0


class UnsubscribeFrame(_Frame):
    type: Literal["unsubscribe"]


class SendFrame(MessageIn, _Frame):
    type: Literal["send"]


class StopFrame(StopIn, _Frame):
    type: Literal["stop"]


Frame = SubscribeFrame | UnsubscribeFrame | SendFrame | StopFrame
_MODELS: dict[str, type[Frame]] = {
    "subscribe": SubscribeFrame,
    "unsubscribe": UnsubscribeFrame,
    "send": SendFrame,
    "stop": StopFrame,
}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load(raw: str) -> Any:
    """The frame's JSON; ``ApiError(invalid_json)`` for anything that is not strict JSON."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "frames are JSON objects") from None


def frame_id(frame: Any) -> str | int | None:
    """The frame's ``id`` if it is one that may be echoed (a short string or a safe int)."""
    value = frame.get("id") if isinstance(frame, dict) else None
    if isinstance(value, str) and len(value) <= _ID_LENGTH:
        return value
    if type(value) is int and abs(value) <= 2**53:
        return value
    return None


def parse_frame(frame: Any) -> Frame:
    """The frame as its model; ``ApiError`` (``invalid_frame``) if it is not one."""
    model = _MODELS.get(str(frame.get("type"))) if isinstance(frame, dict) else None
    if model is None:
        raise ApiError(422, "invalid_frame", "type must be subscribe, unsubscribe, send or stop")
    try:
        return model.model_validate(frame)
    except ValidationError as exc:
        message, _detail = describe_invalid(exc.errors(include_url=False, include_input=False))
        raise ApiError(422, "invalid_frame", message) from None
