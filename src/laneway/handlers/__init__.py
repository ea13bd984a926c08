"""Built-in handlers: the ``demo`` model, the ``openai`` model and the ``cli`` model.

Nothing is registered at import: call ``register_demo(lw)``,
``register_openai(lw, ...)`` or ``register_cli(lw, command=...)`` on the
Laneway that should run them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cli import register_cli
from .demo import register_demo

if TYPE_CHECKING:
    from .openai import register_openai

__all__ = ["register_cli", "register_demo", "register_openai"]


def __getattr__(name: str) -> object:
    # The openai SDK is heavy to import; load it only for users of the openai model.
    if name == "register_openai":
        from .._extras import require

        require("openai", "the openai model")
        from .openai import register_openai

        return register_openai
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
