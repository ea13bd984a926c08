"""The README's library example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from .._helpers import run_python

README = Path(__file__).parents[2] / "README.md"


def test_the_library_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "async def main" in b and "lw.submit" in b)
    proc = run_python(example, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "hello from laneway"
    kinds = [line.split()[1] for line in out[1:]]
    deltas = ["delta"] * 3
    assert kinds == ["job.queued", "job.started", *deltas, "message", "job.succeeded"]
