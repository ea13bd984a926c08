"""Process isolation: ``@lw.handler(..., isolation="process")`` runs turns in workers.

A handler that blocks its event loop, spins on the CPU, leaks memory or
crashes its interpreter does it in a worker process, where a deadline, idle
limit, stop or cancel kills it (and everything it started), not in the
gateway's loop. Workers import handlers by module and qualified name, so a
handler must be a module-level ``async def`` a fresh process can import; that
is checked when the handler is registered (``_targets``).

This package plugs into the core as the runner of ``isolation="process"``
(``_core._runner.register_runner``); the core never imports it. The worker
side lives in ``_worker``, the pool in ``_pool`` (imported only when a
process handler is registered: ``multiprocessing`` is a heavy import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._core._config import Config
from .._core._runner import register_runner
from .._types import ProcessPool, StartMethod
from ._targets import importable_target

if TYPE_CHECKING:
    from ._pool import ProcessRunner

__all__ = ["ProcessPool", "StartMethod", "importable_target", "process_runner"]


def process_runner(config: Config) -> ProcessRunner:
    """The runner of ``isolation="process"`` handlers, for a Laneway's config."""
    from ._pool import ProcessRunner

    return ProcessRunner(config.process_pool or ProcessPool())


register_runner("process", process_runner)
