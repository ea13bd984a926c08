"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by
Playwright (no browser download), and where the tests leave their artifacts."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

#: screenshots and timings, kept after the run (gitignored)
ARTIFACTS = Path(__file__).parents[2] / "artifacts"


@contextmanager
def chromium() -> Iterator[Browser]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("the browser tests need Chromium: apt-get install chromium (.ci/run does)")
    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
