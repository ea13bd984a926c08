"""A throwaway PostgreSQL server for tests and benchmarks.

``PostgresServer.start()`` runs ``initdb`` and ``pg_ctl`` from the PATH (or
Debian's ``/usr/lib/postgresql/*/bin``) in a fresh temporary directory, on
127.0.0.1 and a free port, with its unix socket inside that directory.
``initdb`` refuses to run as root, so as root the cluster runs as the
``postgres`` user. ``stop()`` stops it and removes the directory; it also runs
at interpreter exit, so an interrupted run leaves no server behind.

The cluster trades durability for speed (``fsync=off``): tests kill client
processes, never the server's machine.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PASSWORD", "USER", "PostgresServer", "ServerMissing", "find_binaries"]

USER = "postgres"
PASSWORD = "laneway-test-secret"
_SETTINGS = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=300",
    "shared_buffers=64MB",
    "log_min_messages=fatal",
)


class ServerMissing(RuntimeError):
    """No PostgreSQL server binaries were found."""


def find_binaries() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    on_path = shutil.which("initdb")
    candidates = [str(Path(on_path).parent)] if on_path else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if all((Path(folder) / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    raise ServerMissing(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on the PATH or under "
        "/usr/lib/postgresql/*/bin; install Debian's 'postgresql' package"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One cluster in a temporary directory; ``dsn(db)`` names a database on it."""

    def __init__(self) -> None:
        self.bin = find_binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="laneway-pg-"))
        self.data = self.dir / "data"
        self.port = 0
        self._as_postgres = os.geteuid() == 0
        self._running = False
        atexit.register(self.stop)

    def _run(self, *argv: str) -> None:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", USER, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]}")

    def start(self) -> PostgresServer:
        pwfile = self.dir / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_postgres:
            entry = pwd.getpwnam(USER)
            for path in (self.dir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile),
            "-A", "scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        for _ in range(5):  # the free port may be taken between probe and bind
            self.port = _free_port()
            options = " ".join(
                [f"-c listen_addresses=127.0.0.1 -p {self.port}", f"-k {self.dir}"]
                + [f"-c {s}" for s in _SETTINGS]
            )
            try:
                self._run(
                    "pg_ctl", "start", "-D", str(self.data), "-w", "-t", "60",
                    "-l", str(self.dir / "server.log"), "-o", options,
                )  # fmt: skip
            except RuntimeError:
                continue
            self._running = True
            return self
        raise RuntimeError(f"PostgreSQL did not start; see {self.dir / 'server.log'}")

    def restart(self) -> None:
        """Stop the server (every connection is cut; commits kept) and start it again."""
        self._run(
            "pg_ctl", "restart", "-D", str(self.data), "-m", "fast", "-w", "-t", "60",
            "-l", str(self.dir / "server.log"),  # else the server holds our pipe open
        )  # fmt: skip

    def dsn(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server (at once) and remove its directory; safe to call twice."""
        if self._running:
            self._running = False
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        shutil.rmtree(self.dir, ignore_errors=True)
