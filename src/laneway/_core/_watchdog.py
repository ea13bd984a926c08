"""The loop watchdog: a thread that notices when the event loop stops answering.

The loop side only stamps a heartbeat on a timer. The thread compares the
stamp with the wall clock; when the loop has not answered for ``threshold``
seconds it logs ``loop.blocked`` once per episode with the loop thread's
current stack (the blocking code), and counts it. With ``exit_after`` set, a
loop blocked that long makes the process exit with code 70 so a supervisor
restarts it and a durable store resumes the work (crash-only recovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
import traceback

__all__ = ["EXIT_CODE", "Watchdog"]

log = logging.getLogger("laneway.watchdog")

EXIT_CODE = 70  # EX_SOFTWARE


class Watchdog:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold: float,
        *,
        exit_after: float | None = None,
    ) -> None:
        self.threshold = threshold
        self.exit_after = exit_after
        self.interval = max(0.01, min(threshold / 4, 0.25))
        self.blocks = 0
        self.lag = 0.0  # seconds the last heartbeat ran late
        self.max_lag = 0.0
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._beat_at = time.monotonic()
        self._expected = self._beat_at + self.interval
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._blocked_since: float | None = None

    @property
    def blocked_for(self) -> float:
        """Seconds the loop has been unresponsive right now (0 when it answers)."""
        return max(0.0, time.monotonic() - self._beat_at - self.interval)

    def start(self) -> None:
        self._beat()
        self._thread = threading.Thread(target=self._watch, name="laneway-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def _beat(self) -> None:
        now = time.monotonic()
        self.lag = max(0.0, now - self._expected)
        self.max_lag = max(self.max_lag, self.lag)
        self._beat_at = now
        self._expected = now + self.interval
        self._handle = self._loop.call_later(self.interval, self._beat)

    def _stack(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "<loop thread has no frame>"
        return "".join(traceback.format_stack(frame))

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._look()
            except Exception:
                continue

    def _look(self) -> None:
        silent = time.monotonic() - self._beat_at
        if silent < self.threshold:
            if self._blocked_since is not None:
                self._blocked_since = None
                log.info("loop.unblocked", extra={"blocked_s": round(silent, 3)})
            return
        if self._blocked_since is None:
            self._blocked_since = self._beat_at
            self.blocks += 1
            stack = self._stack()
            log.warning(
                "loop.blocked: the event loop has not answered for %.2fs\n%s",
                silent,
                stack,
                extra={"blocked_s": round(silent, 3), "stack": stack},
            )
        if self.exit_after is not None and silent >= self.exit_after:
            self._exit(silent)

    def _exit(self, silent: float) -> None:
        stack = self._stack()
        with contextlib.suppress(Exception):  # exit even if the log pipeline is broken
            log.critical(
                "loop.blocked for %.2fs >= exit_after; exiting with code %d\n%s",
                silent,
                EXIT_CODE,
                stack,
                extra={"blocked_s": round(silent, 3), "stack": stack},
            )
            for handler in logging.getLogger().handlers + log.handlers:
                handler.flush()
            sys.stderr.flush()
        os._exit(EXIT_CODE)
