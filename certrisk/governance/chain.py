"""Canonical serialization, row and manifest digests, and the append-only audit hash chain.

Canonical serialization (what every digest is computed over):

* a row is the tuple of its values in the column order of its spec in ``certrisk.schemas.columns``,
  each value a Python ``None``, ``bool``, ``int``, ``float``, ``str`` or ``list`` of ``str``;
  NaN floats are ``None`` (SQLite stores NaN as NULL) and ``-0.0`` is ``0.0``;
  its bytes are ``repr(row)`` in UTF-8. ``repr`` of a float is the shortest string that reads back
  to the same float64, so floats are serialized exactly;
* ``row_digest`` = the first 32 hex digits of sha256(those bytes), stored with the row.
  ``column_reprs`` and ``row_digests_of`` compute exactly that a column at a time (the write path
  and ``verify`` both use them, so what is written is what is recomputed); ``row_digest`` is the
  one-row case;
* a table digest = sha256 over its row digests in ``row_no`` order; the header digest = sha256 of
  the canonical JSON (sorted keys, no whitespace, floats by ``repr``) of the run's header fields
  (``RunHeader``: the write path builds it from the payload, ``verify`` from the stored row);
* the manifest = {"header": header digest, "tables": {name: {"rows": n, "digest": d, "columns":
  [[column, dtype], ...]}}}, and the ``manifest_digest`` = sha256 of its canonical JSON. It does
  not depend on the revision or the database keys, so the same payload always has the same
  manifest digest (idempotency test). Row digests are over the columns the manifest lists; a
  manifest written before migration 0004 lists none and means ``LEGACY_COLUMNS``;
* a model or policy row (``RECORD_COLUMNS`` of ``record_tables``) is digested like a row, its
  timestamp as UTC ISO 8601: its manifest is {"columns": [...], "digest": d};
* an audit entry's ``entry_hash`` = sha256 of the canonical JSON of {prev, seq, kind, dag_id,
  run_id, revision, record_key, manifest_digest, manifest, recorded_at, facts}; ``prev`` is the
  previous entry's hash (64 zeros for the first); ``facts`` holds the stored row's own columns
  that are not payload (who recorded a run revision and why). Entries written before migration
  0005 (runs without facts) hash {prev, seq, dag_id, run_id, revision, manifest_digest, manifest,
  recorded_at}. Changing, deleting or inserting any recorded row, run, model, policy, evaluation
  or entry breaks a digest or a link, which ``verify`` finds and names.

Canonical storage. JSON documents are written as their canonical JSON text and read back
strictly (``strict_json``): a duplicate key, NaN or an out-of-range number is tampering (SQLite's
``json_extract`` reads the first of two equal keys, Python the last). Timestamps are stored as UTC
in one representation (``certrisk.governance.engine.Dialect.read_timestamp``).

A hash chain proves that nothing *inside* it changed; it cannot tell a forged run appended at the
*end* with freshly computed hashes (anyone can compute sha256). Publish the chain head that
``verify`` reports (a ticket, a signed log line) and pass it back as ``expected_head``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields
from datetime import datetime
from operator import itemgetter, methodcaller
from types import MappingProxyType

import numpy as np
import pandas as pd

from certrisk.schemas.clock import as_utc

GENESIS = "0" * 64
ROW_DIGEST_CHARS = 32

#: The columns (name, dtype) of each row table as recorded before migration 0004, when manifests
#: began to list them: what a manifest table entry without "columns" covers. Frozen here.
_LEGACY = {
    "sample_risk": "sample_id:string risk:float64 tier:string abstained:bool prediction:int64 "
    "base_prediction:int64 factor_abstention:float64 factor_radius_rank:float64 factor_context:float64 "
    "factor_rules:float64 factor_novelty:float64 factor_instability:float64 top_factors:object rmf_ids:object",
    "certificate": "sample_id:string method:string norm:string prediction:int64 abstained:bool radius:float64 "
    "radius_l1:float64 radius_l2:float64 radius_linf:float64 p_lower:float64 n_forward:int64 alpha:float64 "
    "sigma:float64 eps:float64 seed:int64 seconds:float64 peak_bytes:int64 device:string dtype:string",
    "rule_sample": "sample_id:string n_failed:int64 max_severity:string failed:object",
    "rule_result": "expectation:string expectation_type:string column:string severity:string level:string "
    "success:bool observed_value:string unexpected_count:int64 rmf_ids:object",
    "drift_test": "test:string family:string feature:string statistic:float64 p_value:float64 q_value:float64 "
    "effect_size:float64 effect_name:string drift:bool",
    "rmf_evidence": "subcategory_id:string evidence_kind:string detail:string",
}
LEGACY_COLUMNS = MappingProxyType(
    {name: tuple(tuple(c.split(":")) for c in spec.split()) for name, spec in _LEGACY.items()}
)


class JsonProblem(ValueError):
    """Stored JSON text that is not what certrisk writes: its message says what is wrong."""


def _unique_pairs(pairs: list) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise JsonProblem(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str):
    raise JsonProblem(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonProblem(f"out-of-range number {text}")
    return value


def strict_json(text):
    """Parse stored JSON text strictly: a duplicate key, NaN, Infinity or a number beyond float64
    (1e400) raises ``JsonProblem`` naming it, as does text that is not JSON."""
    if not isinstance(text, str):
        raise JsonProblem(f"not JSON text ({type(text).__name__})")
    try:
        return json.loads(
            text, object_pairs_hook=_unique_pairs, parse_constant=_no_constant, parse_float=_finite_float
        )
    except JsonProblem:
        raise
    except ValueError as exc:
        raise JsonProblem(f"not valid JSON ({exc})") from None


def canonical_json(value) -> str:
    """Sorted keys, no whitespace, UTF-8, floats by repr; NaN/inf rejected (ValueError)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_hex(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def column_reprs(values, dtype: str, *, none_mask: np.ndarray | None = None) -> list[str]:
    """``repr`` of every value of one column, computed a column at a time.

    ``values`` is a sequence (list or numpy array) of canonical values of the spec dtype
    ``dtype``: "float64" (floats or None), "int64", "bool", "string" (str or None) or "object"
    (lists of str or None). The result equals ``[repr(v) for v in values]`` exactly; floats are
    formatted once per distinct bit pattern (so 0.0 and -0.0, or NaN and None, stay distinct).
    A float column may also come as a float64 array with ``none_mask`` marking its None values.
    """
    n = len(values)
    if n == 0:
        return []
    if dtype == "float64":
        if isinstance(values, np.ndarray) and values.dtype == np.float64:
            arr = values
            none = None if none_mask is None or not none_mask.any() else none_mask
        else:
            seq = values if isinstance(values, list) else list(values)
            none = None
            if None in seq:
                none = np.fromiter((v is None for v in seq), dtype=bool, count=n)
                seq = [0.0 if v is None else v for v in seq]
            if not all(type(v) is float for v in seq):  # not floats (a tampered value): plain repr
                return list(map(repr, values))
            arr = np.array(seq, dtype=np.float64)
        codes, uniques = pd.factorize(arr.view(np.int64))
        texts = np.array(list(map(repr, uniques.view(np.float64).tolist())), dtype=object)[codes]
        if none is not None and none.any():
            texts[none] = "None"
        return texts.tolist()
    if dtype == "object":
        memo: dict = {}
        out = []
        for v in values:
            try:
                key = (type(v), tuple(v)) if v is not None else None
                text = memo.get(key)
            except TypeError:  # not a flat list of hashable items (a tampered JSON value): no memo
                key, text = False, None
            if text is None:
                text = repr(v)
                if key is not False:
                    memo[key] = text
            out.append(text)
        return out
    return list(map(repr, values.tolist() if isinstance(values, np.ndarray) else values))


def row_digests_of(columns: list[list[str]]) -> list[str]:
    """Row digests from the ``column_reprs`` of a table's columns (in spec order): for each row,
    the first 32 hex digits of sha256 of ``repr(row)``, i.e. "(" + ", ".join(reprs) + ")"."""
    if not columns or not len(columns[0]):
        return []
    wrap = "({},)".format if len(columns) == 1 else "({})".format
    texts = map(wrap, map(", ".join, zip(*columns, strict=True)))
    digests = map(methodcaller("hexdigest"), map(hashlib.sha256, map(methodcaller("encode", "utf-8"), texts)))
    return list(map(itemgetter(slice(ROW_DIGEST_CHARS)), digests))


def row_digest(row: tuple) -> str:
    """Digest of one row given as a tuple of canonical values (see module docstring)."""
    return row_digests_of([[repr(v)] for v in row])[0]


def table_digest(digests) -> str:
    return sha256_hex("".join(digests))


def iso_utc(value: datetime) -> str:
    """A datetime as UTC ISO 8601 with microseconds; naive values are taken as UTC."""
    return as_utc(value).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class RunHeader:
    """The digested header of a run: its key, provenance and batch-level figures.

    The write path builds it from the payload (``payload.prepare``), ``verify`` from the stored
    ``pipeline_run`` row joined with its model and policy (``from_row``); both digest it with
    ``digest``. ``summary`` is the canonical batch summary (a JSON object).
    """

    dag_id: str
    run_id: str
    batch_id: str
    created_at: datetime
    model_name: str
    model_sha256: str
    policy_name: str
    policy_sha256: str
    policy_text: str
    package_version: str
    n_samples: int
    abstention_rate: float
    mean_risk: float
    tier: str
    drift: bool
    summary: dict

    @classmethod
    def from_row(cls, row) -> RunHeader:
        """The header of a stored run: ``row`` has an attribute named after every field."""
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})

    def digested(self) -> dict:
        """The fields as digested: the policy text as its sha256 (``policy_text_sha256``), the
        timestamp as UTC ISO 8601, the figures as exact floats (-0.0 as 0.0), drift as a bool."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["created_at"] = iso_utc(self.created_at)
        out["policy_text_sha256"] = sha256_hex(out.pop("policy_text"))
        out["abstention_rate"] = float(self.abstention_rate) + 0.0
        out["mean_risk"] = float(self.mean_risk) + 0.0
        out["drift"] = bool(self.drift)
        return out

    def digest(self) -> str:
        """sha256 of the canonical JSON of ``digested()``: the manifest's "header"."""
        return sha256_hex(canonical_json(self.digested()))


def manifest_of(header_digest: str, tables: dict[str, tuple[int, str, tuple]]) -> tuple[dict, str]:
    """The manifest dict and its digest from the header digest and {table: (rows, digest,
    columns)}, columns a sequence of (name, dtype) pairs."""
    manifest = {
        "header": header_digest,
        "tables": {
            name: {"rows": n, "digest": d, "columns": [list(c) for c in cols]}
            for name, (n, d, cols) in tables.items()
        },
    }
    return manifest, sha256_hex(canonical_json(manifest))


def recorded_columns(name: str, entry: dict) -> tuple[tuple[str, str], ...]:
    """The (column, dtype) pairs a manifest's table entry covers (``LEGACY_COLUMNS`` when it
    lists none). Raises JsonProblem when the list is malformed."""
    cols = entry.get("columns")
    if cols is None:
        if name not in LEGACY_COLUMNS:
            raise JsonProblem(f"table {name!r} lists no columns")
        return LEGACY_COLUMNS[name]
    if not isinstance(cols, list) or not all(
        isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c) for c in cols
    ):
        raise JsonProblem(f"table {name!r}: malformed column list")
    return tuple((c, d) for c, d in cols)


def record_manifest(columns, values: tuple) -> tuple[dict, str]:
    """The manifest of one model or policy row: its (column, dtype) pairs and the digest of its
    canonical values (timestamps as ``iso_utc`` text), and the manifest's digest."""
    manifest = {"columns": [list(c) for c in columns], "digest": row_digest(values)}
    return manifest, sha256_hex(canonical_json(manifest))


def entry_hash(
    *,
    prev_hash: str,
    seq: int,
    dag_id: str | None,
    run_id: str | None,
    revision: int | None,
    manifest_digest: str,
    manifest: dict,
    recorded_at: datetime,
    kind: str = "run",
    record_key: str | None = None,
    facts: dict | None = None,
) -> str:
    """The hash of an audit entry (see the module docstring): a run entry without ``facts`` has
    the pre-0005 form, every other entry the full one."""
    fields_ = {
        "prev": prev_hash,
        "seq": seq,
        "dag_id": dag_id,
        "run_id": run_id,
        "revision": revision,
        "manifest_digest": manifest_digest,
        "manifest": manifest,
        "recorded_at": iso_utc(recorded_at),
    }
    if kind != "run" or facts is not None:
        fields_.update(kind=kind, record_key=record_key, facts=facts)
    return sha256_hex(canonical_json(fields_))


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of ``GovernanceStore.verify``.

    ``first_bad_run`` names the record: "dag_id/run_id#revision" for a run, "model NAME
    sha256=..." / "policy NAME sha256=..." / "evaluation MODEL KEY" for the others (None for the
    RMF catalog or a head that is not in the chain); ``first_bad_row`` names the table and the
    row's key, e.g. "certificate sample_id='b:3' method='smoothing' row_no=3", or the column,
    e.g. "pipeline_run.summary"; both None when ``ok``. ``runs_checked`` and ``rows_checked``
    count runs and their (and evaluations') rows. ``head`` is the hash of the last audit entry.
    """

    ok: bool
    first_bad_run: str | None
    first_bad_row: str | None
    message: str
    runs_checked: int = 0
    rows_checked: int = 0
    head: str = GENESIS
