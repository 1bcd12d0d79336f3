"""The user guide cannot drift from the code: its reference part is what ``certrisk.schemas.guide``
generates now, every policy key has an effect, and its walk-through names commands that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from certrisk.schemas import guide
from certrisk.schemas.policy import Policy

GUIDE = Path(__file__).parents[2] / "docs" / "user-guide.md"


def test_generated_reference_is_current():
    text = GUIDE.read_text()
    assert guide.generated_part(text) == guide.render_reference(), (
        "docs/user-guide.md is out of date: run `python -m certrisk.schemas.guide docs/user-guide.md`"
    )


def test_every_policy_key_has_an_effect_and_appears():
    assert guide.missing_effects() == []
    text = guide.render_reference()
    for name in Policy.model_fields:
        assert f"| `{name}` |" in text
    for key in (
        "model.factory_kwargs",
        "scoring.calibration.false_alarm_rate",
        "review.at_tier",
        "drift.tests",
    ):
        assert f"| `{key}` |" in text


def test_splice_replaces_only_the_generated_part():
    text = f"intro\n{guide.BEGIN}\nold\n{guide.END}\noutro\n"
    out = guide.splice(text, "new\n")
    assert out == f"intro\n{guide.BEGIN}\nnew\n{guide.END}\noutro\n" and guide.generated_part(out) == "new\n"


def walkthrough(name: str) -> str:
    """The fenced code block after ``<!-- walkthrough: NAME -->`` in the guide."""
    match = re.search(rf"<!-- walkthrough: {name} -->\n```\w+\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    assert match, name
    return match.group(1)


def test_walkthrough_commands_exist(cli):
    lines = walkthrough("commands").replace("\\\n", " ").splitlines()
    commands = [shlex.split(line.split("#")[0]) for line in lines if line.startswith("certrisk ")]
    assert [c[1] for c in commands] == ["init", "policy", "score", "runs", "report", "verify"]
    for words in commands:
        path = [
            w
            for w in words[1:3]
            if not w.startswith("-") and w in ("init", "policy", "check", "score", "runs", "report", "verify")
        ]
        options = [w.split("=")[0] for w in words if w.startswith("--")]
        help_text = cli(*path, "--help").output
        for option in options:
            assert option in help_text, (words, option)
