"""`pip install .` must produce a wheel that carries everything laneway reads at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_the_wheel_builds_and_ships_migrations_and_type_marker(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("laneway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for backend in ("sqlite", "postgres"):
        folder = f"laneway/stores/migrations/{backend}/"
        shipped = {Path(n).name for n in names if n.startswith(folder)}
        on_disk = {p.name for p in (ROOT / "src" / folder).iterdir()}
        assert shipped >= {p for p in on_disk if p.endswith(".sql")}, backend
    assert "laneway/py.typed" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "laneway = laneway.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
