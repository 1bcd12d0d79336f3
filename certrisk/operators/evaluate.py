"""Measured detection through the production path: ``evaluate_policy`` and ``EvaluateOperator``.

``evaluate_policy`` reads the policy's model and reference set, splits the reference by role
(``certrisk.risk.reference.reference_roles``: the ``evaluation`` role is the default held-out
labelled set, the ``tier`` role calibrates the certificate-only baseline, the ``index`` role is
the geometry and the adaptive attack's reference), and runs ``certrisk.risk.evaluate`` with a
scorer that pushes every attacked set through the pipeline's own operators in-process
(``certrisk.operators.local.run_local``). ``write_evaluation`` writes ``evaluation.parquet`` (one
row per family and budget) and ``evaluation.json`` (metadata and the same rows as records).

The attacks' data box: ``unit`` ([0, 1], images), ``reference`` (each feature's minimum and
maximum over the reference and evaluation samples, tabular data such as the z-scored breast
cancer features), ``none``, or ``auto``: ``unit`` when every reference value lies in [0, 1],
else ``reference``. The metadata names the box used.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from airflow.sdk import Context, ObjectStoragePath

import certrisk
from certrisk.operators.artifacts import write_json, write_parquet
from certrisk.operators.base import GovernanceOperator
from certrisk.operators.local import run_local
from certrisk.operators.reference import load_reference
from certrisk.risk.attack_suite import FAMILIES, AttackSetting, LabelledSet
from certrisk.risk.data import Batch, batch_sha256, load_batch
from certrisk.risk.evaluate import (
    DEFAULT_FRACTIONS,
    DetectionEvaluation,
    ScoredSet,
    Scorer,
    evaluate_detection,
    evaluation_records,
)
from certrisk.risk.models import load_model
from certrisk.risk.reference import reference_roles
from certrisk.schemas.clock import utc_now
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import LoadedPolicy, load_policy

#: The dag_id the evaluation's pipeline runs are keyed by.
EVALUATE_DAG_ID = "certrisk_evaluate"
CLIP_MODES = ("auto", "unit", "reference", "none")


@dataclass(frozen=True)
class EvaluationSets:
    """The labelled sets of one evaluation: held-out ``evaluation``, clean ``calibration``
    (certificate-only thresholds) and ``index`` (geometry, the adaptive attack's reference)."""

    evaluation: Batch
    calibration: Batch
    index: Batch
    evaluation_source: str


def _rows(batch: Batch, mask: np.ndarray, limit: int | None = None) -> Batch:
    rows = np.flatnonzero(mask)[:limit]
    labels = None if batch.labels is None else batch.labels[rows]
    return Batch(batch.batch_id, batch.ids[rows], batch.features[rows], batch.feature_names, labels)


def evaluation_sets(
    lp: LoadedPolicy, *, labelled: str | Path | None = None, limit: int | None = None
) -> EvaluationSets:
    """Split the policy's labelled reference by role; ``labelled`` replaces its evaluation role.

    ``limit`` keeps at most that many samples of the evaluation and calibration sets (their
    first ones). InputError when the reference or the labelled file has no labels, or when the
    labelled file shares sample ids with the reference's index or calibration samples.
    """
    pol = lp.policy
    reference = load_reference(lp)
    if reference.labels is None:
        raise InputError(
            f"{lp.reference_path}: no label column {pol.data.label_column!r}; measured detection needs labels"
        )
    roles = reference_roles(reference.ids)
    calibration = _rows(reference, roles == "tier", limit)
    index = _rows(reference, roles == "index")
    if labelled is None:
        evaluation = _rows(reference, roles == "evaluation", limit)
        return EvaluationSets(evaluation, calibration, index, "reference:evaluation")
    given = load_batch(
        labelled, spec=pol.data, n_features=pol.model.n_features, feature_names=reference.feature_names
    )
    if given.labels is None:
        raise InputError(
            f"{labelled}: no label column {pol.data.label_column!r}; measured detection needs labels"
        )
    used = set(reference.ids[roles != "evaluation"].tolist())
    shared = [i for i in given.ids.tolist() if i in used]
    if shared:
        raise InputError(
            f"{labelled}: {len(shared)} sample id(s) are reference samples used for the index or "
            f"calibration (e.g. {shared[0]!r}); an evaluation set must be held out from them"
        )
    return EvaluationSets(_rows(given, np.ones(len(given), bool), limit), calibration, index, str(labelled))


def labelled_set(batch: Batch, input_shape: Sequence[int]) -> LabelledSet:
    """A Batch with labels as the harness's LabelledSet (x of shape (n, *input_shape))."""
    return LabelledSet(batch.ids.astype(str), batch.inputs(tuple(input_shape)), batch.labels.astype(np.int64))


def data_box(sets: EvaluationSets, mode: str, input_shape: Sequence[int], device) -> tuple[tuple | None, str]:
    """The attacks' clip box and its name (see the module docstring for the modes)."""
    if mode not in CLIP_MODES:
        raise InputError(f"clip: unknown mode {mode!r}; choose from {list(CLIP_MODES)}")
    feats = np.concatenate([sets.index.features, sets.calibration.features, sets.evaluation.features])
    if mode == "auto":
        mode = "unit" if feats.min() >= 0.0 and feats.max() <= 1.0 else "reference"
    if mode == "none":
        return None, "none"
    if mode == "unit":
        return (0.0, 1.0), "unit: [0, 1]"
    low, high = (
        torch.as_tensor(v, device=device).reshape(tuple(input_shape)) for v in (feats.min(0), feats.max(0))
    )
    return (low, high), "reference: per-feature min and max of the reference and evaluation samples"


def run_key(seed: int) -> str:
    """The run key the certification seeds of an evaluation with ``seed`` derive from."""
    return f"{EVALUATE_DAG_ID}/seed{seed}"


def pipeline_scorer(
    lp: LoadedPolicy, work_dir: Path, *, seed: int, feature_names: Sequence[str], device: str | None = None
) -> Scorer:
    """A Scorer that writes each set as a batch under ``work_dir/batches`` and scores it with
    ``run_local`` (artifacts under ``work_dir/runs``); every run's certification seeds derive
    from the run key ``certrisk_evaluate/seed<seed>``."""
    batches = work_dir / "batches"
    batches.mkdir(parents=True, exist_ok=True)

    def score(name: str, ids: np.ndarray, x: np.ndarray) -> ScoredSet:
        frame = pd.DataFrame(np.asarray(x, np.float32).reshape(len(x), -1), columns=list(feature_names))
        frame.insert(0, lp.policy.data.id_column, pd.array([str(i) for i in ids], dtype="string"))
        path = batches / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        run = run_local(
            lp.path,
            path,
            artifacts_dir=work_dir / "runs",
            dag_id=EVALUATE_DAG_ID,
            run_id=f"seed{seed}-{name}",
            run_key=run_key(seed),
            batch_id=name,
            device=device,
        )
        return ScoredSet(run.sample_risk(), run.batch_summary(), run.context_frame())

    return score


def evaluate_policy(
    policy_path: str | Path,
    *,
    work_dir: str | Path,
    labelled: str | Path | None = None,
    families: Sequence[str] = tuple(FAMILIES),
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    limit: int | None = None,
    clip: str = "auto",
    device: str | None = None,
) -> DetectionEvaluation:
    """Measure what the policy's production risk catches of the attack suite.

    :param work_dir: local directory for the attacked batches and their pipeline runs.
    :param labelled: a labelled file held out from the reference's index and calibration roles;
        default the reference's ``evaluation`` role.
    :param limit: at most this many evaluation and calibration samples (a quick check).
    """
    lp = load_policy(policy_path)
    pol = lp.policy
    sets = evaluation_sets(lp, labelled=labelled, limit=limit)
    loaded = load_model(pol.model, lp.model_path, device=device or pol.certification.device)
    shape = pol.model.input_shape
    box, box_name = data_box(sets, clip, shape, loaded.device)
    torch.manual_seed(seed)
    setting = AttackSetting(clip=box, reference=labelled_set(sets.index, shape), seed=seed)
    provenance = {
        "model": pol.model.name,
        "model_sha256": loaded.sha256,
        "policy_sha256": lp.sha256,
        "reference_sha256": batch_sha256(load_reference(lp)),
        "evaluation_sha256": batch_sha256(sets.evaluation),
        "evaluation_source": sets.evaluation_source,
        "calibration_source": "reference:tier",
        "certification_run_key": run_key(seed),
        "clip": box_name,
        "device": str(loaded.device),
        "certrisk": certrisk.__version__,
        "created_at": utc_now().isoformat(),
    }
    return evaluate_detection(
        loaded.module,
        pol,
        evaluation=labelled_set(sets.evaluation, shape),
        calibration=labelled_set(sets.calibration, shape),
        setting=setting,
        score=pipeline_scorer(
            lp, Path(work_dir), seed=seed, feature_names=sets.evaluation.feature_names, device=device
        ),
        families=families,
        fractions=fractions,
        provenance=provenance,
    )


def write_evaluation(result: DetectionEvaluation, out: ObjectStoragePath) -> dict:
    """Write ``evaluation.parquet`` (the frame) and ``evaluation.json`` (metadata and rows) under
    ``out``; returns their paths."""
    return {
        "evaluation": write_parquet(out / "evaluation.parquet", result.frame),
        "metadata": write_json(
            out / "evaluation.json", {"metadata": result.metadata, "rows": evaluation_records(result)}
        ),
    }


def record_evaluation(result: DetectionEvaluation, store, policy_path: str) -> dict:
    """Record ``result`` in the governance store (appended, hash-chained, idempotent by its key);
    returns the write's status and key. The reports of every run of the model then state it."""
    lp = load_policy(policy_path)
    meta = result.metadata
    written = store.write_evaluation(meta["model"], lp.text, meta["reference_sha256"], result.frame, meta)
    return {"status": written.status, "evaluation_pk": written.run_pk}


class EvaluateOperator(GovernanceOperator):
    """Run the attack suite through the production path and write the measured detection under
    ``<run dir>/evaluation`` (``evaluation.parquet``, ``evaluation.json``).

    :param labelled: a labelled held-out file (templated); default the reference's evaluation role.
    :param attacks: attack families (default all of ``FAMILIES``); :param fractions: budget
        fractions of the data's geometry; :param seed: attack and certification seed;
        :param limit: at most this many evaluation and calibration samples; :param clip: the
        attacks' data box (auto, unit, reference, none); :param device: torch device.
    :param record: record the result in the governance DB (default True), so that every report
        of the model states its measured detection; :param certrisk_conn_id: see GovernanceOperator.
    """

    template_fields: Sequence[str] = (*GovernanceOperator.template_fields, "labelled")

    def __init__(
        self,
        *,
        labelled: str | None = None,
        attacks: Sequence[str] = tuple(FAMILIES),
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        seed: int = 0,
        limit: int | None = None,
        clip: str = "auto",
        device: str | None = None,
        record: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.record = record
        self.labelled = labelled
        self.attacks = tuple(attacks)
        self.fractions = tuple(fractions)
        self.seed = seed
        self.limit = limit
        self.clip = clip
        self.device = device

    def run(self, context: Context) -> dict:
        with tempfile.TemporaryDirectory(prefix="certrisk-evaluate-") as work:
            result = evaluate_policy(
                self.policy_path,
                work_dir=work,
                labelled=self.labelled or None,
                families=self.attacks,
                fractions=self.fractions,
                seed=self.seed,
                limit=self.limit,
                clip=self.clip,
                device=self.device,
            )
        paths = write_evaluation(result, self.run_dir(context) / "evaluation")
        scored = result.frame[result.frame["scored"] & ~result.frame["adaptive"]]
        self.log.info(
            "evaluation: %d rows; scored non-adaptive families: lowest share at tier >= high %.1f%%, "
            "clean false alarm %.1f%%",
            len(result.frame),
            100 * float(scored["share_high"].min()),
            100 * float(result.metadata["clean"]["false_alarm"]),
        )
        recorded = record_evaluation(result, self.hook.get_store(), self.policy_path) if self.record else None
        return {
            **paths,
            "recorded": recorded,
            "n_rows": len(result.frame),
            "clean_false_alarm": float(result.metadata["clean"]["false_alarm"]),
        }
