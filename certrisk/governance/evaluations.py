"""Evaluation records: a model's measured detection per attack family and budget, governed like runs.

``write_evaluation`` records what ``certrisk.risk.evaluate`` measured (a tidy frame, one row per
family and budget, ``EVALUATION_COLUMNS``) with what identifies it: the model version, the policy
text, the reference set's sha256, the seeds, the number of clean samples, when it ran, and the
rest of the harness's metadata. It is validated before any connection opens (columns, types,
rates and shares in [0, 1], counts, success rate = successful / attacked, tiers), then written in
one transaction with one audit-chain entry (kind "evaluation": the header and every row
digested, like a run's). Its key is the model with the sha256 of (model version, policy,
reference, seeds, ``meta["evaluation_id"]``): writing the same evaluation again changes nothing
("already recorded"); a different result under the same key is a ``RecordConflictError`` (the
harness is seeded: the same inputs should measure the same; pass another ``evaluation_id`` to
record it anyway). ``latest_evaluation`` reads the compliance views (aggregates only).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import pandas as pd
import sqlalchemy as sa

from certrisk.governance.chain import (
    canonical_json,
    iso_utc,
    manifest_of,
    sha256_hex,
    strict_json,
)
from certrisk.governance.payload import table_manifests, table_rows
from certrisk.governance.record_tables import evaluation_table
from certrisk.schemas.clock import as_utc, as_utc_timestamp
from certrisk.schemas.columns import EVALUATION_COLUMNS, OPTIONAL_EVALUATION_COLUMNS
from certrisk.schemas.enums import Tier
from certrisk.schemas.errors import InputError

_EVAL = evaluation_table
_SHA = frozenset("0123456789abcdef")
#: Columns of EVALUATION_COLUMNS that are shares or rates in [0, 1] (NaN: not measured).
UNIT_COLUMNS = (
    "budget_fraction", "success_rate", "misclassified_rate", "abstention_rate", "auroc", "share_high",
    "share_medium", "clean_false_alarm", "cert_auroc", "cert_share_high", "cert_share_medium",
    "cert_clean_false_alarm",
)  # fmt: skip
#: meta keys stored in columns of their own (the rest is stored as ``meta``).
COLUMN_KEYS = ("model_sha256", "policy_sha256", "reference_sha256", "created_at", "seeds", "seed", "n_clean")


@dataclass(frozen=True)
class EvaluationHeader:
    """What identifies an evaluation, digested into its manifest's "header" (the write path builds
    it from the call, ``verify`` from the stored row)."""

    model_name: str
    model_sha256: str
    policy_name: str
    policy_sha256: str
    reference_sha256: str
    evaluation_key: str
    created_at: datetime
    package_version: str
    n_clean: int
    seeds: object
    meta: dict

    def digest(self) -> str:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["created_at"] = iso_utc(self.created_at)
        return sha256_hex(canonical_json(out))


@dataclass
class PreparedEvaluation:
    """A validated evaluation: its header, policy text, result rows, manifest and digest."""

    header: EvaluationHeader
    policy_text: str
    rows: object  # payload.TableRows
    manifest: dict
    manifest_digest: str


def _sha(value, name: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _SHA:
        raise InputError(f"evaluation: {name} must be 64 lowercase hex digits, got {value!r}")
    return value


def _missing_as_null(value):
    """NaN (a figure not measured) as None, as in the result rows; numpy scalars and arrays as
    Python values; everything else as it is."""
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _missing_as_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_missing_as_null(v) for v in value]
    return value


def _json_value(value, name: str):
    """``value`` as canonical JSON read back (NaN stored as null); InputError for inf or what
    JSON cannot hold."""
    try:
        return strict_json(canonical_json(_missing_as_null(value)))
    except (TypeError, ValueError) as exc:
        raise InputError(f"evaluation: {name} is not JSON without inf: {exc}") from None


def _created_at(value) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InputError(f"evaluation: meta created_at is not an ISO datetime: {value!r}") from None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise InputError(f"evaluation: meta needs created_at (a datetime, UTC), got {value!r}")
    return as_utc(value)


def _package_version(meta: dict) -> str:
    given = meta.get("package_version")
    if given is not None:
        return str(given)
    try:
        return version("certrisk")
    except PackageNotFoundError:
        return "unknown"


def _frame(frame) -> pd.DataFrame:
    """The result frame conformed to EVALUATION_COLUMNS (optional columns left out are None)."""
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise InputError(
            "evaluation: the result must be a non-empty DataFrame (one row per family and budget)"
        )
    missing = [
        c for c in EVALUATION_COLUMNS if c not in frame.columns and c not in OPTIONAL_EVALUATION_COLUMNS
    ]
    if missing:
        raise InputError(f"evaluation: missing column(s) {missing}; expected {list(EVALUATION_COLUMNS)}")
    out = pd.DataFrame(index=range(len(frame)))
    for name, dtype in EVALUATION_COLUMNS.items():
        if name not in frame.columns:
            out[name] = pd.Series([None] * len(frame), dtype=object)
            continue
        col = frame[name].reset_index(drop=True)
        try:
            out[name] = col.astype(object) if dtype == "bool" and col.isna().any() else col.astype(dtype)
        except (TypeError, ValueError) as exc:
            raise InputError(f"evaluation: column {name!r} cannot be cast to {dtype}: {exc}") from None
    return out


def _check_rows(frame: pd.DataFrame) -> None:
    for name in UNIT_COLUMNS:
        values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isnan(values) & ((values < 0.0) | (values > 1.0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"evaluation: {name}={float(values[row])!r} in row {row} is out of range [0, 1]")
    for name in ("eps", "seconds"):
        values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isinf(values) | (values < 0.0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"evaluation: {name}={float(values[row])!r} in row {row} must be finite and >= 0"
            )
    attacked, successful = frame["n_attacked"].to_numpy(), frame["n_successful"].to_numpy()
    bad = (attacked < 0) | (successful < 0) | (successful > attacked)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"evaluation: row {row} has n_successful={successful[row]} of n_attacked={attacked[row]}: "
            "counts must satisfy 0 <= n_successful <= n_attacked"
        )
    rate = frame["success_rate"].to_numpy(dtype=np.float64, na_value=np.nan)
    for row in np.flatnonzero(attacked > 0).tolist():
        if not math.isclose(rate[row], successful[row] / attacked[row], rel_tol=1e-9, abs_tol=1e-12):
            raise InputError(
                f"evaluation: success_rate={float(rate[row])!r} in row {row} but n_successful / n_attacked = "
                f"{successful[row]} / {attacked[row]}"
            )
    tiers = {t.value for t in Tier}
    odd = [t for t in frame["batch_tier"].tolist() if t not in tiers]
    if odd:
        raise InputError(f"evaluation: unknown batch_tier {odd[0]!r}; known tiers: {sorted(tiers)}")
    if frame["family"].isna().any() or (frame["family"].astype(str).str.strip() == "").any():
        raise InputError("evaluation: every row needs its attack family")
    dup = frame.duplicated(subset=["family", "norm", "budget_fraction"])
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise InputError(
            f"evaluation: row {row} repeats family {frame['family'].iloc[row]!r} at the same budget"
        )


def evaluation_key(model_sha256: str, policy_sha256: str, reference_sha256: str, seeds, evaluation_id) -> str:
    """sha256 of what makes two evaluations the same one (see the module docstring)."""
    parts = {
        "model_sha256": model_sha256,
        "policy_sha256": policy_sha256,
        "reference_sha256": reference_sha256,
        "seeds": seeds,
        "evaluation_id": evaluation_id,
    }
    return sha256_hex(canonical_json(parts))


def prepare_evaluation(
    model: str, policy: str, reference_sha256: str, frame, meta: dict
) -> PreparedEvaluation:
    """Validate an evaluation and compute its canonical rows, header and manifest (see
    ``GovernanceStore.write_evaluation`` for the arguments). Raises InputError naming the key,
    column or row at fault."""
    if not isinstance(model, str) or not model.strip():
        raise InputError(f"evaluation: model must be the model's name, got {model!r}")
    if not isinstance(policy, str) or not policy.strip():
        raise InputError("evaluation: policy must be the policy file's text")
    if not isinstance(meta, dict):
        raise InputError(f"evaluation: meta must be a dict, got {type(meta).__name__}")
    policy_sha = hashlib.sha256(policy.encode("utf-8")).hexdigest()
    if meta.get("policy_sha256", policy_sha) != policy_sha:
        raise InputError(
            f"evaluation: meta policy_sha256 {meta['policy_sha256']!r} is not the policy text's sha256"
        )
    if meta.get("reference_sha256", reference_sha256) != reference_sha256:
        raise InputError("evaluation: meta reference_sha256 differs from the reference_sha256 argument")
    n_clean = meta.get("n_clean")
    if isinstance(n_clean, bool) or not isinstance(n_clean, int | np.integer) or n_clean < 1:
        raise InputError(
            f"evaluation: meta needs n_clean, the number of clean samples (>= 1), got {n_clean!r}"
        )
    seeds = _json_value(meta.get("seeds", meta.get("seed")), "meta seeds")
    if seeds is None:
        raise InputError("evaluation: meta needs the seeds (``seeds`` or ``seed``) the harness used")
    model_sha = _sha(meta.get("model_sha256"), "meta model_sha256")
    rest = _json_value({k: v for k, v in meta.items() if k not in COLUMN_KEYS}, "meta")
    conformed = _frame(frame)
    _check_rows(conformed)
    rows = table_rows(conformed, EVALUATION_COLUMNS, table="evaluation_result")
    header = EvaluationHeader(
        model_name=model, model_sha256=model_sha, policy_name=model, policy_sha256=policy_sha,
        reference_sha256=_sha(reference_sha256, "reference_sha256"),
        evaluation_key=evaluation_key(model_sha, policy_sha, reference_sha256, seeds, rest.get("evaluation_id")),
        created_at=_created_at(meta.get("created_at")), package_version=_package_version(meta),
        n_clean=int(n_clean), seeds=seeds, meta=rest,
    )  # fmt: skip
    manifest, digest = manifest_of(header.digest(), table_manifests({"evaluation_result": rows}))
    return PreparedEvaluation(header, policy, rows, manifest, digest)


def evaluation_values(
    header: EvaluationHeader, *, model_id: int, policy_id: int, recorded_at, digest: str
) -> dict:
    """The evaluation row's values (timestamps as given: bind them with the dialect)."""
    return {
        "model_id": model_id,
        "policy_id": policy_id,
        "reference_sha256": header.reference_sha256,
        "evaluation_key": header.evaluation_key,
        "created_at": header.created_at,
        "recorded_at": recorded_at,
        "package_version": header.package_version,
        "n_clean": header.n_clean,
        "seeds": header.seeds,
        "meta": header.meta,
        "manifest_digest": digest,
    }


def _views_frame(rows, columns) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(columns))
    for name, dtype in EVALUATION_COLUMNS.items():
        if name in frame and dtype == "float64":
            frame[name] = frame[name].astype(float)
    return frame


def latest_evaluation(conn, model: str) -> dict | None:
    """The newest recorded evaluation of ``model`` (by created_at) from the compliance views, or
    None: evaluation_pk, model, model_sha256, policy_sha256, reference_sha256, evaluation_key,
    created_at and recorded_at (aware UTC), package_version, n_clean, seeds, meta, and ``results``
    (EVALUATION_COLUMNS, one row per family and budget, in recorded order)."""
    head = (
        conn.execute(
            sa.text(
                "SELECT * FROM v_evaluation WHERE model = :model ORDER BY created_at DESC, evaluation_pk DESC LIMIT 1"
            ),
            {"model": model},
        )
        .mappings()
        .first()
    )
    if head is None:
        return None
    out = dict(head)
    for key in ("seeds", "meta"):
        out[key] = strict_json(out[key]) if isinstance(out[key], str) else out[key]
    for key in ("created_at", "recorded_at"):
        out[key] = as_utc_timestamp(out[key])
    cols = list(EVALUATION_COLUMNS)
    quoted = ", ".join(f'"{c}"' for c in cols)
    rows = conn.execute(
        sa.text(f"SELECT {quoted} FROM v_evaluation_result WHERE evaluation_pk = :pk ORDER BY row_no"),
        {"pk": out["evaluation_pk"]},
    ).all()
    out["results"] = _views_frame(rows, cols)
    return out


__all__ = [
    "EvaluationHeader",
    "PreparedEvaluation",
    "evaluation_key",
    "evaluation_values",
    "latest_evaluation",
    "prepare_evaluation",
]
