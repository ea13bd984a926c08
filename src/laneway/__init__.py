"""laneway: per-session FIFO lanes for LLM-agent turns that never wedge.

Public names are re-exported here explicitly; everything else is private.
"""

from ._core._context import TurnContext as TurnContext
from ._core._runtime import Job as Job
from ._core._runtime import Laneway as Laneway
from ._errors import Closed as Closed
from ._errors import ConfigError as ConfigError
from ._errors import InvalidPayload as InvalidPayload
from ._errors import InvalidSession as InvalidSession
from ._errors import JobCancelled as JobCancelled
from ._errors import JobDead as JobDead
from ._errors import JobError as JobError
from ._errors import JobFailed as JobFailed
from ._errors import JobNotLive as JobNotLive
from ._errors import JobTimedOut as JobTimedOut
from ._errors import LanewayError as LanewayError
from ._errors import NotRequeueable as NotRequeueable
from ._errors import Overloaded as Overloaded
from ._errors import ProcessFailed as ProcessFailed
from ._errors import StoreError as StoreError
from ._errors import UnknownHandler as UnknownHandler
from ._errors import UnknownJob as UnknownJob

# Importing _isolation also registers the runner of isolation="process" handlers.
from ._isolation import ProcessPool as ProcessPool
from ._types import Event as Event
from ._types import JobInfo as JobInfo
from ._types import JobState as JobState
from ._types import LaneStats as LaneStats
from ._types import Limits as Limits
from ._types import Outcome as Outcome
from ._types import ProcessResult as ProcessResult
from ._types import Reason as Reason
from ._types import Retry as Retry
from ._types import RunningJob as RunningJob
from ._types import Snapshot as Snapshot
from ._types import StopResult as StopResult
from ._types import Zombie as Zombie
from .stores import Store as Store

__version__ = "0.1.0.dev0"

__all__ = [
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
    "ProcessFailed",
    "ProcessPool",
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
]
