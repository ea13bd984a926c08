"""What ``pip install`` gives: a wheel that carries everything laneway reads at
run time, and a library-only install that runs jobs without any extra and names
the extra a missing feature needs."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _wheel(tmp_path: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("laneway-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_builds_and_ships_migrations_console_and_type_marker(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for backend in ("sqlite", "postgres"):
        folder = f"laneway/stores/migrations/{backend}/"
        shipped = {Path(n).name for n in names if n.startswith(folder)}
        on_disk = {p.name for p in (ROOT / "src" / folder).iterdir()}
        assert shipped >= {p for p in on_disk if p.endswith(".sql")}, backend
    assert "laneway/py.typed" in names
    static = {Path(n).name for n in names if n.startswith("laneway/gateway/static/")}
    assert {"console.js", "console.css"} <= static
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "laneway = laneway._launch:main" in zipfile.ZipFile(wheel).read(entry).decode()


LIBRARY_ONLY = """
import asyncio, importlib.util
import laneway
from laneway import Laneway

for heavy in ("fastapi", "uvicorn", "openai", "typer", "rich", "httpx", "pydantic"):
    assert importlib.util.find_spec(heavy) is None, heavy

async def main():
    async with Laneway("memory://", lanes={"llm": 2}) as lw:
        @lw.handler("chat", lanes=("llm",))
        async def chat(ctx, payload):
            return payload["text"].upper()
        job = await lw.submit("alice", "chat", {"text": "hi"})
        print(await job.result())
    try:
        from laneway.handlers import register_openai
    except laneway.ConfigError as exc:
        print(exc)

asyncio.run(main())
"""


@pytest.mark.slow
def test_the_library_alone_runs_jobs_and_names_missing_extras(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    ran = subprocess.run(
        [str(py), "-c", LIBRARY_ONLY], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "HI"
    assert "pip install 'laneway[openai]'" in lines[1]
    cli = subprocess.run(
        [str(env_dir / "bin" / "laneway"), "serve"], capture_output=True, text=True, timeout=60
    )
    assert cli.returncode == 1
    assert cli.stderr.strip().splitlines() == [
        "laneway: error: the laneway command needs the 'server' extra "
        "(fastapi is not installed): pip install 'laneway[server]'"
    ]
