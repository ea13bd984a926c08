"""A handler a worker cannot import is refused when it is registered."""

from __future__ import annotations

import functools
import types
from typing import Any

import pytest

from laneway import ConfigError, Laneway, ProcessPool, TurnContext
from laneway._isolation import importable_target

from . import handlers


def _refused(lw: Laneway, fn: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        lw.handler("h", isolation="process")(fn)
    assert "h" not in lw.handlers


def test_lambda_closure_and_main_are_refused() -> None:
    lw = Laneway(watchdog_threshold=None)

    async def nested(ctx: TurnContext, payload: Any) -> None:
        return None

    with pytest.raises(ConfigError, match="lambda"):
        importable_target("h", lambda ctx, payload: None)
    # An async callable named like a lambda gets past the async check to this one.
    lam = types.FunctionType(handlers.noop.__code__, {}, "<lambda>")
    lam.__qualname__ = "<lambda>"
    _refused(lw, lam, "lambda")
    _refused(lw, nested, "inside a function")

    in_main = types.FunctionType(handlers.noop.__code__, {}, "noop")
    in_main.__module__ = "__main__"
    _refused(lw, in_main, "__main__")


def test_copies_partials_and_bound_methods_are_refused() -> None:
    lw = Laneway(watchdog_threshold=None)
    copy = types.FunctionType(handlers.noop.__code__, handlers.__dict__, "noop")
    copy.__qualname__ = "noop"
    copy.__module__ = handlers.__name__
    _refused(lw, copy, "not the function being registered")

    part = functools.partial(handlers.noop)
    with pytest.raises(ConfigError):
        lw.handler("h", isolation="process")(part)

    class Box:
        async def method(self, ctx: TurnContext, payload: Any) -> None:
            return None

    _refused(lw, Box().method, "inside a function")

    ghost = types.FunctionType(handlers.noop.__code__, {}, "ghost")
    ghost.__module__ = "laneway_no_such_module_here"
    _refused(lw, ghost, "cannot be imported")

    missing = types.FunctionType(handlers.noop.__code__, {}, "missing")
    missing.__qualname__ = "missing"
    missing.__module__ = handlers.__name__
    _refused(lw, missing, "does not exist")


def test_module_level_handler_is_accepted_and_task_mode_is_unchecked() -> None:
    lw = Laneway(watchdog_threshold=None)
    lw.handler("ok", isolation="process")(handlers.noop)

    async def local(ctx: TurnContext, payload: Any) -> None:
        return None

    lw.handler("task")(local)  # task mode runs in this process: anything goes
    assert set(lw.handlers) == {"ok", "task"}


def test_process_pool_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        ProcessPool(size=0)
    with pytest.raises(ConfigError):
        ProcessPool(max_jobs=-1)
    with pytest.raises(ConfigError):
        ProcessPool(max_rss_mb=0)
    with pytest.raises(ConfigError):
        ProcessPool(start_method="teleport")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Laneway(process_pool={"size": 2})  # type: ignore[arg-type]
    assert ProcessPool(size=3).workers == 3
    assert ProcessPool().workers >= 1
