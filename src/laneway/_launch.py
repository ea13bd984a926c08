"""The ``laneway`` command's entry point: checks the ``server`` extra is there
before importing the CLI, so a library-only install gets one line naming it
instead of a traceback."""

from __future__ import annotations

import sys

from ._extras import MissingExtra, require

__all__ = ["main"]


def main() -> None:
    try:
        require("server", "the laneway command")
    except MissingExtra as exc:
        print(f"laneway: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    from .cli import main as cli_main

    cli_main()
