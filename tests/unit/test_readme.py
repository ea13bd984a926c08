"""The README's library example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import laneway

README = Path(__file__).parents[2] / "README.md"


def test_the_library_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "async def main" in b and "lw.submit" in b)
    src = str(Path(laneway.__file__).parents[1])
    out = subprocess.run(
        [sys.executable, "-c", example],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout.splitlines()
    assert out[0] == "hello from laneway"
    kinds = [line.split()[1] for line in out[1:]]
    assert kinds == [
        "job.queued",
        "job.started",
        "delta",
        "delta",
        "delta",
        "message",
        "job.succeeded",
    ]
