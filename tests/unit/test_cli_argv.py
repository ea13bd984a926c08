"""How the ``cli`` model builds a turn's command line, and which configurations it refuses."""

from __future__ import annotations

import pytest

from laneway import ConfigError
from laneway.handlers.cli import CliModel, build_argv, split_command

RESUME = ["--resume", "{session_id}"]


def test_the_command_is_split_with_shell_rules() -> None:
    assert split_command("claude -p --append-system-prompt 'be brief' \"x y\"") == [
        "claude",
        "-p",
        "--append-system-prompt",
        "be brief",
        "x y",
    ]
    assert split_command(["already", "split"]) == ["already", "split"]


@pytest.mark.parametrize("bad", ["", "   ", "claude 'unclosed", [], ["ok", ""]])
def test_an_empty_or_unsplittable_command_is_refused(bad: str | list[str]) -> None:
    with pytest.raises(ConfigError):
        split_command(bad)


def test_the_text_is_appended_as_one_argument() -> None:
    assert build_argv(["claude", "-p"], "hi there; rm -rf /") == [
        "claude",
        "-p",
        "hi there; rm -rf /",
    ]


def test_the_text_replaces_its_placeholder_wherever_it_appears() -> None:
    assert build_argv(["agent", "--prompt={text}", "--json"], "hi {session_id}") == [
        "agent",
        "--prompt=hi {session_id}",
        "--json",
    ]


def test_resume_arguments_go_before_the_text_and_its_double_dash() -> None:
    assert build_argv(["claude", "-p"], "hi", RESUME, "abc-1") == [
        "claude",
        "-p",
        "--resume",
        "abc-1",
        "hi",
    ]
    assert build_argv(["claude", "-p", "--", "{text}"], "-x", RESUME, "abc-1") == [
        "claude",
        "-p",
        "--resume",
        "abc-1",
        "--",
        "-x",
    ]
    assert build_argv(
        ["codex", "exec", "{text}", "--json"], "hi", ["resume", "{session_id}"], "s"
    ) == [
        "codex",
        "exec",
        "resume",
        "s",
        "hi",
        "--json",
    ]


def test_without_a_session_id_there_is_nothing_to_resume() -> None:
    assert build_argv(["claude", "-p"], "hi", RESUME, None) == ["claude", "-p", "hi"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "json"}, "'text' or 'stream-json'"),
        ({"resume_arg": "--resume", "format": "stream-json"}, "{session_id}"),
        ({"resume_arg": "--resume '{session_id}", "format": "stream-json"}, "cannot be split"),
        ({"resume_arg": "--resume {session_id}"}, "needs format 'stream-json'"),
    ],
)
def test_bad_model_settings_are_refused(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CliModel("claude -p", **kwargs)  # type: ignore[arg-type]
