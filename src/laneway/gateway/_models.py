"""Which model handler the gateway serves: the one place that wires settings to handlers.

``demo``, ``openai`` and ``cli`` live in ``laneway.handlers`` and are imported lazily,
so the OpenAI SDK is only loaded when that model is chosen. ``echo`` answers
at once with the text it got (smoke tests, gateway benchmarks).
"""

from __future__ import annotations

from typing import Any

from .. import Laneway, TurnContext
from .._types import Limits
from .settings import Settings

__all__ = ["register_model"]


def register_model(lw: Laneway, settings: Settings) -> str:
    """Register the configured model on ``lw``; return its handler name."""
    if settings.model == "demo":
        _register_demo(lw, settings)
        return "demo"
    if settings.model == "openai":
        return _register_openai(lw, settings)
    if settings.model == "cli":
        return _register_cli(lw, settings)
    _register_echo(lw)
    return "echo"


#: The demo's own limits, so a newcomer sees /stall and /hang recover in seconds
#: rather than after the production defaults; explicit settings still win.
DEMO_LIMITS = {"deadline": 60.0, "idle": 5.0}


def _register_demo(lw: Laneway, settings: Settings) -> None:
    from ..handlers.demo import register_demo

    chosen = {k: v for k, v in DEMO_LIMITS.items() if k not in settings.model_fields_set}
    limits = Limits(**chosen) if chosen else None
    lanes = ("llm",) if "llm" in lw.lanes else ()
    # With tokens the clients are not the operator: none may block the loop for all.
    register_demo(lw, name="demo", lanes=lanes, limits=limits, allow_block=not settings.tokens)
    # The same model in a worker process: /block N there cannot touch other sessions.
    register_demo(lw, name="demo-isolated", isolation="process", lanes=lanes, limits=limits)


def _register_openai(lw: Laneway, settings: Settings) -> str:
    from .._extras import require

    require("openai", "LANEWAY_MODEL=openai")
    from ..handlers.openai import (  # type: ignore[import-not-found,unused-ignore]
        register_openai,
    )

    key = settings.openai_api_key
    assert settings.openai_model, "checked by Settings"
    register_openai(
        lw,
        name="openai",
        base_url=settings.openai_base_url,
        model=settings.openai_model,
        api_key=key.get_secret_value() if key is not None else None,
        lanes=("llm",),
        system_prompt=settings.openai_system_prompt,
        max_history=settings.openai_history,
    )
    return "openai"


def _register_cli(lw: Laneway, settings: Settings) -> str:
    from ..handlers.cli import register_cli

    assert settings.cli_command, "checked by Settings"
    register_cli(
        lw,
        name="cli",
        command=settings.cli_command,
        format=settings.cli_format,
        resume_arg=settings.cli_resume_arg,
        lanes=("llm",),
    )
    return "cli"


def _register_echo(lw: Laneway) -> None:
    lanes = ("llm",) if "llm" in lw.lanes else ()

    @lw.handler("echo", lanes=lanes)
    async def echo(ctx: TurnContext, payload: Any) -> str:
        text = payload.get("text", "") if isinstance(payload, dict) else str(payload)
        await ctx.emit("message", {"role": "assistant", "text": text})
        return str(text)
