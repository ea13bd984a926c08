"""The gateway's drain: what SIGTERM and SIGINT do to a serving gateway.

The first signal starts the drain at once: ``/readyz`` answers 503 and
submits are refused with 503 ``shutting_down`` while the listeners stay open
(so clients get an answer, not a refused connection), and running turns get
``shutdown_grace`` to finish (``Laneway.close()``). A second signal ends the
grace at once; turns are then cancelled with reason ``shutdown`` under the
same rules. When the drain is over the server stops the usual way and the
process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from .. import Laneway

__all__ = ["Drain"]

log = logging.getLogger("laneway.gateway")


class Drain:
    """Turns exit signals into one drain of ``lw``, then calls ``done()``."""

    def __init__(self, done: Callable[[], None]) -> None:
        self._done = done
        self._lw: Laneway | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.signals = 0

    def attach(self, lw: Laneway) -> None:
        """The runtime to drain; signals before this stop the server at once."""
        self._lw = lw
        self._loop = asyncio.get_running_loop()

    def on_signal(self, sig: int) -> None:
        """From the signal handler (main thread, between two bytecodes of the loop)."""
        self.signals += 1
        loop = self._loop
        if loop is None or loop.is_closed():
            self._done()
            return
        loop.call_soon_threadsafe(self._step, sig)

    def _step(self, sig: int) -> None:
        lw = self._lw
        assert lw is not None
        name = signal.Signals(sig).name
        if self._task is None:
            log.warning(
                "gateway.draining: %s; refusing new work, %d turns running get %.1fs to finish",
                name,
                lw.snapshot().jobs_running,
                lw.config.shutdown_grace,
                extra={"signal": name, "grace": lw.config.shutdown_grace},
            )
            self._task = asyncio.get_running_loop().create_task(self._drain(lw))
        else:
            log.warning(
                "gateway.drain_cut: %s again; cancelling running turns now (reason shutdown)",
                name,
                extra={"signal": name},
            )
            lw.drain_now()

    async def _drain(self, lw: Laneway) -> None:
        try:
            await lw.close()
        except Exception:
            log.exception("gateway.drain_failed")
        finally:
            self._done()
