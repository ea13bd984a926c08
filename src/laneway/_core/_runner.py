"""How an attempt is run: the ``Runner`` contract, and the in-process ``TaskRunner``.

A handler's ``isolation`` names its runner. ``"task"`` runs the handler as
an asyncio task on the runtime's loop; other isolations register a factory
here (``_isolation`` registers ``"process"`` when laneway is imported), so the
core never imports them. Whatever the runner, the dispatcher owns the limits:
it cancels the task that awaits ``run()``, and a runner must stop the turn
when that happens (the process runner kills its worker).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from .._errors import ConfigError
from ._config import Config, Handler
from ._context import TurnContext, TurnHost

__all__ = [
    "AttemptHook",
    "Runner",
    "RunnerFactory",
    "TaskRunner",
    "around_attempt",
    "register_runner",
    "runner_factory",
]


class Runner(Protocol):
    """Runs the attempts of the handlers registered with it."""

    def register(self, name: str, fn: Handler) -> None:
        """Accept handler ``name``; raise ``ConfigError`` if this runner cannot run it."""

    def run(self, turn: TurnHost, ctx: TurnContext) -> Awaitable[Any]:
        """Run one attempt of ``turn``'s handler; its result, or the handler's error."""

    async def close(self) -> None:
        """Release what the runner holds (workers, connections)."""


RunnerFactory = Callable[[Config], Runner]

#: ``Laneway.add_attempt_hook``: a context manager around each attempt's handler call.
AttemptHook = Callable[[TurnContext], contextlib.AbstractContextManager[object]]


def around_attempt(
    hooks: Sequence[AttemptHook], ctx: TurnContext
) -> contextlib.AbstractContextManager[object]:
    """Every hook entered around one attempt; a hook that fails to enter unwinds the others."""
    with contextlib.ExitStack() as stack:
        for hook in list(hooks):
            stack.enter_context(hook(ctx))
        return stack.pop_all()


class TaskRunner:
    """Handlers as coroutines on the runtime's own loop."""

    def __init__(self, config: Config | None = None) -> None:
        self._fns: dict[str, Handler] = {}

    def register(self, name: str, fn: Handler) -> None:
        self._fns[name] = fn

    def run(self, turn: TurnHost, ctx: TurnContext) -> Awaitable[Any]:
        # The handler's own coroutine: no wrapper frame per turn.
        result: Awaitable[Any] = self._fns[turn.handler](ctx, turn.payload)
        return result

    async def close(self) -> None:
        return None


_FACTORIES: dict[str, RunnerFactory] = {"task": TaskRunner}


def register_runner(isolation: str, factory: RunnerFactory) -> None:
    """Make ``isolation=<name>`` handlers run on runners made by ``factory``."""
    _FACTORIES[isolation] = factory


def runner_factory(isolation: str) -> RunnerFactory:
    factory = _FACTORIES.get(isolation)
    if factory is None:
        raise ConfigError(f"isolation {isolation!r} is not available")
    return factory
