"""Which module-level function a worker imports for a handler, checked at registration."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .._errors import ConfigError

__all__ = ["importable_target"]


def importable_target(name: str, fn: Callable[..., Any]) -> tuple[str, str]:
    """``(module, qualname)`` by which a worker finds ``fn``, or ``ConfigError``."""
    where = f"handler {name!r} cannot run with isolation='process'"
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise ConfigError(
            f"{where}: {fn!r} has no module and qualified name; workers import handlers "
            "by name, so register a module-level `async def`"
        )
    if "<lambda>" in qualname:
        raise ConfigError(f"{where}: it is a lambda; define it with `async def` at module level")
    if "<locals>" in qualname:
        raise ConfigError(
            f"{where}: {qualname} is defined inside a function (a closure or nested "
            "function); workers can only import module-level functions"
        )
    if module in ("__main__", "__mp_main__"):
        raise ConfigError(
            f"{where}: {qualname} is defined in the __main__ script, which a worker does "
            "not import under that name; move it into an importable module"
        )
    return module, _check_reachable(where, fn, module, qualname)


def _check_reachable(where: str, fn: Callable[..., Any], module: str, qualname: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:
        raise ConfigError(f"{where}: its module {module!r} cannot be imported: {exc}") from None
    if getattr(mod, "__spec__", None) is None:
        raise ConfigError(f"{where}: module {module!r} was not imported from a file or package")
    obj: Any = mod
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        if getattr(mod.__spec__, "_initializing", False):
            # Decorated while its module runs: the name is bound after this call.
            # The pool checks the binding again before the first turn.
            return qualname
        raise ConfigError(
            f"{where}: {module}.{qualname} does not exist; register a module-level function"
        ) from None
    if obj is not fn:
        raise ConfigError(
            f"{where}: {module}.{qualname} is {obj!r}, not the function being registered; "
            "register the module-level function itself (not a bound method, partial or copy)"
        )
    return qualname
