"""Reading the staged batch, the policy's reference set and its roles inside operators.

The batch path compares batches with the reference's ``index`` role only (``reference_roles_of``:
neighbours, novelty, context, drift and the rules' profile), plus the policy's optional
``data.index`` of extra labelled samples (e.g. the training set) for the signals' neighbours. The
``signal`` and ``tier`` roles are held out to calibrate the signals' scales and the tier
thresholds, and the ``evaluation`` role is held out from everything (``certrisk evaluate``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from certrisk.operators.artifacts import read_parquet
from certrisk.risk.data import Batch, batch_sha256, load_batch, validate_frame
from certrisk.risk.reference import reference_roles
from certrisk.risk.rules import build_expectations
from certrisk.schemas.columns import SAMPLE_ID
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import ExpectationSpec, LoadedPolicy

_REFERENCES: dict[tuple, Batch] = {}
_ROLES: dict[tuple, ReferenceRoles] = {}


def load_reference(lp: LoadedPolicy) -> Batch:
    """The policy's reference set, validated (cached per file version and policy within a process)."""
    path = lp.reference_path
    key = (str(path), path.stat().st_mtime if path.exists() else 0.0, lp.sha256)
    if key not in _REFERENCES:
        pol = lp.policy
        _REFERENCES.clear()
        _REFERENCES[key] = load_batch(
            path, spec=pol.data, n_features=pol.model.n_features, batch_id="reference"
        )
    return _REFERENCES[key]


def read_staged_batch(
    lp: LoadedPolicy, batch: dict, *, start: int | None = None, stop: int | None = None
) -> Batch:
    """The batch a ValidateBatchOperator staged (its returned dict), optionally rows [start, stop)."""
    frame = read_parquet(batch["batch_path"])
    if start is not None or stop is not None:
        frame = frame.iloc[start:stop].reset_index(drop=True)
    spec = lp.policy.data.model_copy(update={"id_column": SAMPLE_ID, "label_column": None})
    return validate_frame(
        frame,
        spec=spec,
        n_features=lp.policy.model.n_features,
        batch_id=batch["batch_id"],
        source=batch["batch_path"],
        feature_names=tuple(c for c in frame.columns if c != SAMPLE_ID),
    )


@dataclass(frozen=True)
class ReferenceRoles:
    """The policy's reference set split by role (``certrisk.risk.reference.reference_roles``).

    index : what batches are compared with (subsampled, seeded, to ``drift.max_reference``).
    signal, tier : held-out calibration samples of the signals' scales and the tier thresholds
        (each capped at ``drift.max_reference`` too).
    extra : the policy's ``data.index`` (labelled samples added to the signals' neighbour index
        only), or None.
    """

    index: Batch
    signal: Batch
    tier: Batch
    extra: Batch | None

    @cached_property
    def fitted(self) -> Batch:
        """The index, signal and tier samples in one Batch (in that order): what the reference
        certificates and model outputs are computed on, once per model, policy and reference."""
        parts = (self.index, self.signal, self.tier)
        labels = None if any(p.labels is None for p in parts) else np.concatenate([p.labels for p in parts])
        return Batch(
            "reference",
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.features for p in parts]),
            self.index.feature_names,
            labels,
        )

    def slices(self) -> dict[str, slice]:
        """Rows of each role in ``fitted``."""
        a, b = len(self.index), len(self.index) + len(self.signal)
        return {"index": slice(0, a), "signal": slice(a, b), "tier": slice(b, b + len(self.tier))}

    @cached_property
    def sha256(self) -> str:
        """Digest of the fitted reference and the extra index: what derived reference data depends on."""
        extra = "" if self.extra is None else batch_sha256(self.extra)
        return hashlib.sha256(f"{batch_sha256(self.fitted)}|{extra}".encode()).hexdigest()


def _rows(batch: Batch, mask: np.ndarray, max_size: int | None) -> Batch:
    rows = np.flatnonzero(mask)
    labels = None if batch.labels is None else batch.labels[rows]
    part = Batch(batch.batch_id, batch.ids[rows], batch.features[rows], batch.feature_names, labels)
    return part.subsample(max_size, seed=0)


def load_extra_index(lp: LoadedPolicy, reference: Batch) -> Batch | None:
    """The policy's ``data.index`` (labelled, the reference's features), or None when it names none.

    InputError when it has no labels, or when it holds a sample of the reference's signal, tier or
    evaluation roles (the same sample id or the same feature row): those roles must be held out
    from the neighbour index, as from training.
    """
    path = lp.index_path
    if path is None:
        return None
    pol = lp.policy
    extra = load_batch(
        path,
        spec=pol.data,
        n_features=pol.model.n_features,
        batch_id="index",
        feature_names=reference.feature_names,
    )
    if extra.labels is None:
        raise InputError(
            f"{path}: data.index needs a label column ({pol.data.label_column!r}), one per sample"
        )
    held_out = reference_roles(reference.ids) != "index"
    rows = {r.tobytes() for r in np.ascontiguousarray(reference.features[held_out])}
    ids = set(reference.ids[held_out].tolist())
    leaked = [
        str(i) for i, r in zip(extra.ids, extra.features, strict=True) if i in ids or r.tobytes() in rows
    ]
    if leaked:
        raise InputError(
            f"{path}: {len(leaked)} sample(s) of data.index are held-out reference samples (signal, tier or "
            f"evaluation role), e.g. {leaked[:3]}; those roles must be held out from the neighbour index and "
            "from training"
        )
    return extra


def reference_roles_of(lp: LoadedPolicy) -> ReferenceRoles:
    """The policy's reference split by role, with its ``data.index`` (cached per file versions and policy
    within a process)."""
    paths = [lp.reference_path] + ([lp.index_path] if lp.index_path is not None else [])
    key = (*(str(p) for p in paths), *(p.stat().st_mtime if p.exists() else 0.0 for p in paths), lp.sha256)
    if key not in _ROLES:
        reference = load_reference(lp)
        roles = reference_roles(reference.ids)
        cap = lp.policy.drift.max_reference
        _ROLES.clear()
        _ROLES[key] = ReferenceRoles(
            index=_rows(reference, roles == "index", cap),
            signal=_rows(reference, roles == "signal", cap),
            tier=_rows(reference, roles == "tier", cap),
            extra=load_extra_index(lp, reference),
        )
    return _ROLES[key]


def rule_suite(lp: LoadedPolicy, index: Batch) -> list[ExpectationSpec]:
    """The expectations every scored set is checked against: the policy's rules, profiled from the
    reference's index role (``certrisk.risk.rules.build_expectations``)."""
    return build_expectations(lp.policy.rules, index.to_frame(), index.feature_names)
