"""A fake agent CLI, for testing gateways that run agent CLIs as their model.

Run as a script (it imports nothing from laneway, so it starts fast);
``laneway.testing.fake_agent_cli()`` returns the command line. The message
is the last argument; commands in it make the CLI misbehave:

- ``/stream N S``: N lines, S seconds apart.
- ``/long N``: one line of N characters, then ``end``.
- ``/hang``: start a child, print ``pid P`` and ``child C``, then block on a
  socket forever; both ignore SIGTERM (seed 004: only SIGKILL ends them).
- ``/fail CODE``: print one line, write an error to stderr, exit CODE.
- ``/crash``: die before any output (a traceback on stderr, exit 1).
- ``/crash-once``: crash the first time (needs ``--state``), answer after.
- anything else: answer it (text: one word a line; stream-json: a short
  agent turn with a tool call and its result).

``--format text|stream-json`` (Claude Code's ``--output-format stream-json``
shape). ``--state DIR`` keeps each session's turn count there, so a resumed
session (``--resume ID``) answers ``turn N``; an unknown id is refused as
Claude Code does. ``--delay S`` waits between lines.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

_CHILD = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(1e9)\n"


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.format: str = args.format
        self.delay: float = args.delay
        self.state: Path | None = Path(args.state) if args.state else None
        self.resume: str | None = args.resume
        self.session = args.resume or str(uuid.uuid4())
        self.texts: list[str] = []

    def out(self, obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
        if self.delay:
            time.sleep(self.delay)

    def say(self, text: str) -> None:
        """One line of the reply."""
        self.texts.append(text)
        if self.format == "text":
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            if self.delay:
                time.sleep(self.delay)
            return
        self.out(_assistant(self.session, [{"type": "text", "text": text}]))

    def start(self) -> None:
        if self.format == "stream-json":
            self.out(
                {
                    "type": "system",
                    "subtype": "init",
                    "cwd": os.getcwd(),
                    "session_id": self.session,
                    "tools": ["Bash", "Read"],
                    "model": "fake-agent",
                    "permissionMode": "default",
                }
            )

    def finish(self, result: str) -> None:
        if self.format == "stream-json":
            self.out(
                {
                    "type": "result",
                    "subtype": "success",
                    "is_error": False,
                    "num_turns": 1,
                    "result": result,
                    "session_id": self.session,
                }
            )

    def tool(self, command: str, output: str) -> None:
        if self.format != "stream-json":
            return
        use: dict[str, Any] = {"type": "tool_use", "id": "toolu_fake1", "name": "Bash"}
        use["input"] = {"command": command}
        self.out(_assistant(self.session, [use]))
        result = {"type": "tool_result", "tool_use_id": "toolu_fake1", "content": output}
        self.out({"type": "user", "message": {"role": "user", "content": [result]}})

    def turn_number(self) -> int:
        """This session's turn count, kept in the state directory (1 without one)."""
        if self.state is None:
            return 1
        file = self.state / f"session-{self.session}"
        if self.resume is not None and not file.exists():
            sys.stderr.write(f"No conversation found with session ID: {self.resume}\n")
            sys.exit(1)
        turn = int(file.read_text()) + 1 if file.exists() else 1
        file.write_text(str(turn))
        return turn


def _assistant(session: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    message = {"type": "message", "role": "assistant", "model": "fake-agent", "content": content}
    return {"type": "assistant", "message": message, "session_id": session}


def _hang(agent: Agent) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", _CHILD])
    agent.say(f"pid {os.getpid()}")
    agent.say(f"child {child.pid}")
    quiet, _ = socket.socketpair()
    quiet.recv(1)  # blocked on a socket that never delivers, as in seed 004


def _crash_once(agent: Agent) -> bool:
    """True if this is the first call: the caller crashes."""
    if agent.state is None:
        return True
    marker = agent.state / "crashed-once"
    if marker.exists():
        return False
    marker.write_text("1")
    return True


def _answer(agent: Agent, text: str) -> None:
    turn = agent.turn_number()
    agent.start()
    if agent.format == "text":
        for word in text.split():
            agent.say(word)
        return
    agent.say(f"turn {turn}: {text}")
    agent.tool(f"echo {text!r}", text)
    agent.say("done")
    agent.finish(f"turn {turn}: {text}")


def _command(agent: Agent, words: list[str]) -> bool:
    """Run a /command; False if ``words`` is not one."""
    cmd, args = words[0], words[1:]
    if cmd == "/stream":
        agent.start()
        count, gap = int(args[0]), float(args[1])
        for i in range(count):
            agent.say(f"line {i}")
            time.sleep(gap)
        agent.finish(f"{count} lines")
    elif cmd == "/long":
        agent.start()
        agent.say("x" * int(args[0]))
        agent.say("end")
        agent.finish("end")
    elif cmd == "/hang":
        agent.start()
        _hang(agent)
    elif cmd == "/fail":
        agent.start()
        agent.say("starting")
        sys.stderr.write(f"warning: retrying\nerror: the model refused (code {args[0]})\n")
        sys.exit(int(args[0]))
    elif cmd == "/crash":
        raise RuntimeError("the fake agent crashed")
    else:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fake-agent")
    parser.add_argument("--format", choices=["text", "stream-json"], default="text")
    parser.add_argument("--resume", default=None)
    parser.add_argument("--state", default=None)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("prompt")
    args = parser.parse_args(argv)
    agent = Agent(args)
    words = args.prompt.split()
    if words and words[0] == "/crash-once":
        if _crash_once(agent):
            raise RuntimeError("the fake agent crashed (once)")
        words = []
        args.prompt = "recovered"
    if not words or not _command(agent, words):
        _answer(agent, args.prompt)


if __name__ == "__main__":
    main()
