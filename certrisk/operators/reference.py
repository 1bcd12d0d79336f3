"""Reading the staged batch and the policy's reference set inside operators."""

from __future__ import annotations

from certrisk.operators.artifacts import read_parquet
from certrisk.risk.data import Batch, load_batch, validate_frame
from certrisk.schemas.columns import SAMPLE_ID
from certrisk.schemas.policy import LoadedPolicy

_REFERENCES: dict[tuple, Batch] = {}


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


def reference_sample(reference: Batch, max_size: int | None, *, seed: int = 0) -> Batch:
    """A seeded subsample of the reference set of at most ``max_size`` rows (all rows when None)."""
    return reference.subsample(max_size, seed=seed)
