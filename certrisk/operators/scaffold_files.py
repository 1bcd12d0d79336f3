"""The files ``certrisk init`` writes: the policy YAML (validated before it is written) and a DAG
file beside it that builds the pipeline with ``certrisk_dag``.

Paths in the policy are written relative to the policy's directory when the file lies inside it
(the pair can move together), absolute otherwise. Nothing is overwritten unless asked, and
nothing is written when the drafted policy does not validate.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import parse_policy

POLICY_FILE = "policy.yaml"


@dataclass(frozen=True)
class ScaffoldSpec:
    """What the user told ``certrisk init`` (paths absolute)."""

    model: Path
    reference: Path
    out: Path
    name: str
    factory: str | None = None
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    format: str | None = None
    input_shape: tuple[int, ...] | None = None
    classes: tuple[str, ...] | None = None
    label_column: str = "label"
    id_column: str = "sample_id"
    sigma: float | None = None
    sigmas: tuple[float, ...] | None = None
    n0: int = 64
    n: int = 2000
    alpha: float = 0.001
    sweep_samples: int = 100
    device: str | None = None
    dag_id: str | None = None
    batch_uri: str | None = None
    risk_tolerance: str | None = None
    calibrate: bool = True
    force: bool = False

    @property
    def resolved_dag_id(self) -> str:
        return self.dag_id or re.sub(r"[^A-Za-z0-9_]", "_", self.name).strip("_") + "_risk"

    @property
    def resolved_batch_uri(self) -> str:
        return self.batch_uri or f"${{CERTRISK_HOME}}/batches/{self.resolved_dag_id}/{{{{ ds }}}}.parquet"


def _relative(path: Path, root: Path) -> str:
    path, root = path.resolve(), root.resolve()
    return os.path.relpath(path, root) if path.is_relative_to(root) else str(path)


def default_risk_tolerance(alert_tier: str) -> str:
    return (
        "Drafted by certrisk init; replace it with the organisation's statement. Predictions of samples "
        "without a certificate (abstained) are not used without a person's check; a batch at tier "
        f"{alert_tier} or above fails its run and is reviewed before any of its predictions are used."
    )


def policy_document(spec: ScaffoldSpec, draft: Any) -> dict:
    """The policy as a mapping (validated by ``write_files`` before anything is written).
    ``draft`` is ``certrisk.operators.scaffold.Draft`` (not imported: that module imports this one)."""
    model: dict[str, Any] = {
        "name": spec.name,
        "path": _relative(spec.model, spec.out),
        "format": draft.model.format,
    }
    if draft.model.factory:
        model["factory"] = draft.model.factory
        if draft.model.factory_kwargs:
            model["factory_kwargs"] = dict(draft.model.factory_kwargs)
    model["input_shape"] = list(draft.model.input_shape)
    model["classes"] = list(draft.model.classes)
    data = {"reference": _relative(spec.reference, spec.out), "label_column": spec.label_column}
    if spec.id_column != "sample_id":
        data["id_column"] = spec.id_column
    methods: list[dict[str, Any]] = [
        {"method": "smoothing", "sigma": draft.sigma, "n0": spec.n0, "n": spec.n, "alpha": spec.alpha}
    ]
    methods += [{"method": m} for m in draft.methods if m != "smoothing"]
    return {
        "version": 1,
        "model": model,
        "data": data,
        "certification": {"methods": methods},
        "rules": {"profile": True, "range_tolerance": draft.range_tolerance},
        "scoring": {"calibration": {"false_alarm_rate": 0.05, "medium_rate": 0.2}},
        "alert_tier": "high",
        "risk_tolerance": spec.risk_tolerance or default_risk_tolerance("high"),
    }


def policy_header(draft: Any) -> str:
    lines = [
        f"# certrisk policy for {draft.model.name}, drafted by `certrisk init`.",
        f"# Base model accuracy on the reference ({draft.n_reference} samples): {draft.base_accuracy:.3f}.",
        "# Sigma sweep (smoothed classifier on the reference; abstained counts as wrong):",
    ]
    for t in draft.trials:
        mark = "  <- chosen" if t.sigma == draft.sigma else ""
        lines.append(
            f"#   sigma {t.sigma:<8g} accuracy {t.accuracy:.3f}  abstention {t.abstention_rate:.3f}  "
            f"median l2 radius {t.median_radius:.3g}{mark}"
        )
    lines.append(f"# Chosen: {draft.sigma_reason}.")
    lines.append(
        f"# rules.range_tolerance {draft.range_tolerance}: held-out reference samples outside a profiled "
        f"range: {draft.rule_failure_share:.1%}."
    )
    lines.append("# Every key, its default and its effect: docs/user-guide.md.")
    return "\n".join(lines) + "\n"


def dag_source(spec: ScaffoldSpec) -> str:
    dag_id = spec.resolved_dag_id
    return f'''"""certrisk DAG for the model {spec.name}, drafted by `certrisk init`.

Score one batch with `airflow dags test {dag_id} -c '{{"batch_uri": "/path/to/batch.parquet"}}'`.
Airflow lists a new DAG file only after its dag-processor parsed it (or `airflow dags reserialize`).
This file and {POLICY_FILE} must lie inside Airflow's dags folder.
"""

from pathlib import Path

from certrisk.operators import certrisk_dag

dag = certrisk_dag(
    str(Path(__file__).parent / "{POLICY_FILE}"),
    dag_id="{dag_id}",
    schedule=None,  # triggered runs; e.g. "@daily" with a batch_uri templated on {{{{ ds }}}}
    batch_uri={spec.resolved_batch_uri!r},
    doc_md=__doc__,
)
'''


def write_files(spec: ScaffoldSpec, draft: Any) -> dict[str, Path]:
    """Validate the drafted policy, then write it and the DAG file under ``spec.out``. Returns
    their paths. InputError, before anything is written, when a file exists (unless ``force``)."""
    document = policy_document(spec, draft)
    parse_policy(document, source="the drafted policy")
    out = spec.out
    paths = {"policy": out / POLICY_FILE, "dag": out / f"{spec.resolved_dag_id}.py"}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not spec.force:
        raise InputError(
            f"{', '.join(existing)}: already exists; pass --force to overwrite, or another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    text = policy_header(draft) + yaml.safe_dump(document, sort_keys=False, width=100, allow_unicode=True)
    paths["policy"].write_text(text)
    paths["dag"].write_text(dag_source(spec))
    return paths
