"""Optional dependencies: which extra brings which import, and the one-line
error that names the extra when it is missing.

``pip install laneway`` is the library alone; the gateway and CLI, the openai
model, PostgreSQL and tracing each come with an extra.
"""

from __future__ import annotations

import importlib.util

from ._errors import ConfigError

__all__ = ["EXTRAS", "MissingExtra", "missing", "require"]

#: extra -> the top-level modules it installs (the ones laneway imports)
EXTRAS: dict[str, tuple[str, ...]] = {
    "server": (
        "fastapi",
        "fastapi_offline",
        "uvicorn",
        "pydantic_settings",
        "typer",
        "rich",
        "httpx",
        "prometheus_client",
    ),
    "openai": ("openai",),
    "postgres": ("asyncpg",),
    "otel": ("opentelemetry.sdk",),
}


class MissingExtra(ConfigError):
    """A feature was used whose optional dependencies are not installed."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    absent = []
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            absent.append(module)
    return absent


def require(extra: str, feature: str) -> None:
    """Raise ``MissingExtra`` naming ``extra`` unless all its modules import."""
    absent = missing(extra)
    if absent:
        raise MissingExtra(
            f"{feature} needs the '{extra}' extra ({absent[0]} is not installed): "
            f"pip install 'laneway[{extra}]'"
        )
