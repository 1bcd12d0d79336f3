"""The user guide's reference parts, generated from the code so they cannot drift from it: every
policy key with its type, default and effect (from the pydantic models of ``schemas.policy``,
``schemas.scoring`` and ``schemas.review``), the risk factors, the rule severities and the tiers.

A key's effect is its field's ``description``; the few fields without one take theirs from
``EFFECTS`` below, and ``missing_effects()`` names any key that has neither (a test keeps it
empty, so a new key cannot reach the guide undocumented). ``docs/user-guide.md`` holds the output
between the markers ``BEGIN`` and ``END``; regenerate it with::

    python -m certrisk.schemas.guide docs/user-guide.md

and ``tests/cli/test_guide.py`` fails when the file differs from what this
module generates now.
"""

from __future__ import annotations

import enum
import json
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from certrisk.schemas.enums import Severity, Tier
from certrisk.schemas.factors import FACTOR_SPECS, SEVERITY_FACTOR, SEVERITY_TIER_FLOOR
from certrisk.schemas.policy import (
    CROWNSpec,
    IBPSpec,
    LipschitzSpec,
    Policy,
    SmoothingSpec,
)

BEGIN = "<!-- BEGIN GENERATED REFERENCE: python -m certrisk.schemas.guide docs/user-guide.md -->"
END = "<!-- END GENERATED REFERENCE -->"

#: Effects of the keys whose pydantic field has no description (dotted paths; ``[]`` marks a list item).
EFFECTS = {
    "version": "Version of the policy format; 1 is the only one.",
    "model": "The model under governance (section).",
    "data": "Where the reference set lives and how batches are laid out (section).",
    "certification": "Which certificates to compute and where (section).",
    "rules": "Data rules, Great Expectations (section).",
    "drift": "Drift tests against the reference (section).",
    "scoring": "How factors become a risk, tiers and a batch tier (section).",
    "signals": "Signals that do not trust the certificate (section).",
    "health": "Model health floors checked on the labelled reference (section).",
    "alert_tier": "A batch at or above this tier fails the run's last task (after its record is written).",
    "model.format": "safetensors (weights plus a registered factory), torchscript or export (torch.export).",
    "model.factory_kwargs": "Keyword arguments the factory is called with.",
    "model.classes": "Class names in logit order; the model must give exactly one logit per class.",
    "data.id_column": "Column holding each sample's id; absent: ids are derived as <batch_id>:<row>.",
    "data.categorical_features": "Features the drift tests treat as categories (contingency tests).",
    "certification.methods": "The certification methods, in order; the first smoothing method drives abstention.",
    "certification.methods[].method": "Which method this entry configures.",
    "certification.methods[].norm": "Norm of the certified radius.",
    "certification.methods[].mode": "fixed: n noise samples per input; sequential: stop early once "
    "target_radius is certified or cannot be.",
    "certification.methods[].target_radius": "Radius the sequential mode tries to certify (l2).",
    "certification.methods[].eps": "Ball radius to certify; null searches the largest certified radius.",
    "rules.expectations": "Explicit expectations, added to the profiled ones (same display name: replaces it).",
    "rules.expectations[].kwargs": "The expectation's arguments (column, min_value, ...).",
    "rules.expectations[].severity": "info, warning or critical: the rule factor's value and the sample's "
    "tier floor when it fails (see Severities).",
    "rules.expectations[].rmf": "NIST AI RMF subcategories the rule is evidence for.",
    "drift.alpha": "Level of the drift tests after correction across test families.",
    "drift.tests": "Batch-level tests: ks (per feature), mmd (kernel two-sample), classifier (C2ST).",
    "drift.mmd_permutations": "Permutations of the MMD test.",
    "drift.novelty_k": "Neighbours of the per-sample novelty score.",
    "scoring.weights": "Weight in [0, 1] of each factor (see Risk factors); unnamed factors keep their default.",
    "scoring.thresholds": "Risk at which medium, high and critical begin (medium and high are replaced by "
    "the calibration when it is on).",
}


def _enum_values(values) -> str:
    return ", ".join(str(v.value if isinstance(v, enum.Enum) else v) for v in values)


def type_name(annotation) -> str:
    """A policy author's name for a field's type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1 and all(isinstance(a, type) and issubclass(a, BaseModel) for a in inner):
            return "entry (one of the method tables below)"
        name = " or ".join(type_name(a) for a in inner)
        return f"{name} or null" if len(inner) < len(args) else name
    if origin is typing.Literal:
        return "one of " + _enum_values(args) if len(args) > 1 else _enum_values(args)
    if origin is tuple:
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping {type_name(args[0])} -> {type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + _enum_values(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, "any")


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def default_text(field) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(section defaults)"
    return json.dumps(_plain(value), separators=(", ", ": "))


def _section(annotation) -> type[BaseModel] | None:
    """The section model a field holds (itself or optional), None for values and lists."""
    if typing.get_origin(annotation) is tuple:
        return None
    for a in (annotation, *typing.get_args(annotation)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def policy_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, effect) of every key of ``model``, sections first-level then nested."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        effect = field.description or EFFECTS.get(key, "")
        rows.append((key, type_name(field.annotation), default_text(field), effect))
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        if section is not None:
            rows += policy_rows(section, f"{prefix}{name}.")
    return rows


#: The method specs of ``certification.methods[]``, each a table of its own.
METHOD_SPECS = {
    "smoothing": SmoothingSpec,
    "ibp": IBPSpec,
    "crown, crown-ibp": CROWNSpec,
    "lipschitz": LipschitzSpec,
}


def all_rows() -> list[tuple[str, str, str, str]]:
    """Every key of the policy: the sections, the method entries and the expectation entries."""
    from certrisk.schemas.policy import ExpectationSpec

    rows = policy_rows(Policy)
    for spec in METHOD_SPECS.values():
        rows += policy_rows(spec, "certification.methods[].")
    rows += policy_rows(ExpectationSpec, "rules.expectations[].")
    return rows


def missing_effects() -> list[str]:
    """Keys with neither a field description nor an ``EFFECTS`` entry (should be empty)."""
    return [key for key, _, _, effect in all_rows() if not effect]


def _table(rows) -> list[str]:
    out = ["| key | type | default | effect |", "| --- | --- | --- | --- |"]
    out += [f"| `{k}` | {_cell(t)} | `{_cell(d)}` | {_cell(e)} |" for k, t, d, e in rows]
    return out


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())


def policy_reference() -> list[str]:
    from certrisk.schemas.policy import ExpectationSpec

    lines = ["### Policy keys", "", f"{_doc(Policy)} Unknown keys are rejected.", ""]
    top = [r for r in policy_rows(Policy) if "." not in r[0]]
    lines += ["#### top level", "", *_table(top), ""]
    for name, field in Policy.model_fields.items():
        section = _section(field.annotation)
        if section is None:
            continue
        lines += [f"#### `{name}`", "", _doc(section), "", *_table(policy_rows(section, f"{name}.")), ""]
    for methods, spec in METHOD_SPECS.items():
        lines += [f"#### `certification.methods[]`: {methods}", "", _doc(spec), ""]
        lines += [*_table(policy_rows(spec, "certification.methods[].")), ""]
    lines += ["#### `rules.expectations[]`", "", _doc(ExpectationSpec), ""]
    lines += [*_table(policy_rows(ExpectationSpec, "rules.expectations[].")), ""]
    return lines


def factor_reference() -> list[str]:
    lines = ["### Risk factors", "", "| factor | default weight | what it measures |", "| --- | --- | --- |"]
    lines += [f"| `{f.name}` | {f.weight:g} | {_cell(f.definition)} |" for f in FACTOR_SPECS]
    return [*lines, ""]


def severity_reference() -> list[str]:
    lines = [
        "### Severities and tiers",
        "",
        f"Tiers, least to most: {', '.join(f'`{t.value}`' for t in Tier)}.",
        "",
        "| rule severity | `rules` factor when it fails | tier floor of the failing sample |",
        "| --- | --- | --- |",
    ]
    for s in Severity:
        if s is Severity.NONE:
            continue
        lines.append(
            f"| `{s.value}` | {SEVERITY_FACTOR[s.value]:.3g} | `{SEVERITY_TIER_FLOOR[s.value].value}` |"
        )
    return [*lines, ""]


def render_reference() -> str:
    """The generated part of the user guide (markdown, without the markers)."""
    return "\n".join([*policy_reference(), *factor_reference(), *severity_reference()]).rstrip() + "\n"


def splice(text: str, generated: str) -> str:
    """``text`` with the part between BEGIN and END replaced by ``generated``."""
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"the guide lacks the markers {BEGIN!r} and {END!r}")
    return f"{head}{BEGIN}\n{generated}{END}{tail}"


def generated_part(text: str) -> str:
    """What lies between the markers of a guide's text."""
    return text.partition(BEGIN)[2].partition(END)[0].removeprefix("\n")


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "docs/user-guide.md")
    path.write_text(splice(path.read_text(), render_reference()))
    print(f"regenerated the reference in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
