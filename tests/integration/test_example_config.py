"""``laneway.toml.example`` names every setting, and the values it sets are the defaults."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from laneway.gateway import Settings, load_settings

EXAMPLE = Path(__file__).parents[2] / "laneway.toml.example"


def test_the_example_config_lists_every_setting_at_its_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no laneway.toml: the defaults
    for name in list(os.environ):
        if name.startswith("LANEWAY_") or name == "OPENAI_API_KEY":
            monkeypatch.delenv(name)
    text = EXAMPLE.read_text()
    named = set(re.findall(r"^#? ?([a-z_]+) = ", text, flags=re.M))
    assert named == set(Settings.model_fields)
    assert load_settings(EXAMPLE).model_dump() == load_settings().model_dump()
