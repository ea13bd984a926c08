"""The README's table of demo failures tells the truth: each row's time is what
the gateway's demo limits and retries give, replayed here in virtual time."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from laneway import JobState, Limits, Retry
from laneway.gateway import load_settings
from laneway.gateway._models import DEMO_LIMITS
from laneway.handlers import register_demo

from ..conftest import MakeLaneway

pytestmark = pytest.mark.looptime

README = (Path(__file__).parents[2] / "README.md").read_text()


def claimed_seconds(command: str) -> float:
    """The ``~N s`` the README's demo table gives for ``command``."""
    row = next(line for line in README.splitlines() if line.startswith(f"| `{command}` |"))
    found = re.search(r"~(\d+(?:\.\d+)?) s", row)
    assert found, row
    return float(found.group(1))


@pytest.mark.parametrize(
    ("command", "state"),
    [("/hang", JobState.TIMED_OUT), ("/stall", JobState.TIMED_OUT), ("/crash", JobState.FAILED)],
)
async def test_the_readme_demo_times_match_the_demo_limits(
    make_laneway: MakeLaneway,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    command: str,
    state: JobState,
) -> None:
    monkeypatch.chdir(tmp_path)  # no laneway.toml
    for name in list(os.environ):
        if name.startswith("LANEWAY_"):
            monkeypatch.delenv(name)
    settings = load_settings(store="memory://")  # what `laneway serve` runs with by default
    lw = make_laneway(
        lanes={"llm": settings.llm_lane},
        limits=settings.limits(),
        retry=Retry(max_attempts=settings.max_attempts),
    )
    # as laneway serve registers it (demo-isolated, its process twin, is left out:
    # worker processes do not run in virtual time)
    register_demo(lw, name="demo", lanes=("llm",), limits=Limits(**DEMO_LIMITS))
    await lw.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await (await lw.submit("s", "demo", {"text": command})).wait()
    took = loop.time() - started
    assert outcome.state is state
    assert took == pytest.approx(claimed_seconds(command), abs=1.5)  # backoff has jitter
