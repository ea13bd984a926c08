"""``ProcessPool``: the settings of the worker processes behind ``isolation="process"``."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Literal

from .._errors import ConfigError

__all__ = ["ProcessPool", "StartMethod"]

StartMethod = Literal["forkserver", "spawn", "fork"]


def _methods() -> list[str]:
    import multiprocessing  # only when isolation is configured: it is a heavy import

    return multiprocessing.get_all_start_methods()


def _default_start_method() -> StartMethod:
    if sys.platform.startswith("linux") and "forkserver" in _methods():
        return "forkserver"
    return "spawn"


@dataclass(frozen=True, slots=True)
class ProcessPool:
    """Worker processes that run ``isolation="process"`` handlers.

    - ``size``: how many workers (default: the CPU count). Workers start on the
      first isolated job; the pool returns to this size after every death.
      An isolated job that finds every worker busy waits for one *while its
      limits run*: give such handlers a shared lane capped at ``size``
      (``lanes={"cpu": size}``) so the waiting happens in laneway's queue.
    - ``max_jobs``: a worker is replaced after this many jobs (``None``: never).
    - ``max_rss_mb``: a worker whose resident memory exceeds this after a job is
      replaced (``None``: never).
    - ``start_method``: how workers are started (``multiprocessing`` start
      methods); ``forkserver`` on Linux, ``spawn`` elsewhere.
    - ``start_timeout``: seconds a new worker may take to report ready.

    Each worker runs in its own session and process group; a deadline, idle
    limit, stop or cancel kills the whole group with SIGKILL, and with it every
    subprocess the handler started.
    """

    size: int | None = None
    max_jobs: int | None = 1_000
    max_rss_mb: float | None = None
    start_method: StartMethod | None = None
    start_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("size", "max_jobs"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"ProcessPool.{name} must be an int >= 1 or None, got {v!r}")
        for name in ("max_rss_mb", "start_timeout"):
            v = getattr(self, name)
            if v is None and name == "max_rss_mb":
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ConfigError(f"ProcessPool.{name} must be a number > 0, got {v!r}")
        method = self.start_method
        if method is not None and method not in _methods():
            raise ConfigError(
                f"ProcessPool.start_method must be one of {_methods()}, got {method!r}"
            )

    @property
    def workers(self) -> int:
        """The resolved pool size."""
        return self.size if self.size is not None else (os.cpu_count() or 1)

    @property
    def method(self) -> StartMethod:
        """The resolved start method."""
        return self.start_method if self.start_method is not None else _default_start_method()
