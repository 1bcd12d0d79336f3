"""Batch loading and validation: one place that turns a file into (sample ids, feature matrix).

A batch is a parquet file or an ``.npz`` archive holding a sample id column (optional: derived as
``<batch_id>:<row>`` when absent), feature columns and optionally a label column. Validation fails
with an InputError naming the file, column, row and sample id at fault: unreadable or pickled
files, empty batches, duplicate ids, missing or unexpected features, non-numeric columns, NaN/inf,
and feature counts that do not match the model's input shape.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from certrisk.risk.inputs import sample_matrix
from certrisk.schemas.columns import SAMPLE_ID
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import DataSpec


@dataclass(frozen=True)
class Batch:
    """A validated batch.

    Attributes
    ----------
    batch_id : name of the batch (the file stem unless given)
    ids : array of shape (n_samples,), str sample ids, unique
    features : array of shape (n_samples, n_features), float32, finite
    feature_names : tuple of n_features column names in model order
    labels : array of shape (n_samples,) int64, or None when the file has no label column
    """

    batch_id: str
    ids: np.ndarray
    features: np.ndarray
    feature_names: tuple[str, ...]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def inputs(self, input_shape: tuple[int, ...]) -> np.ndarray:
        """Features reshaped for the model: array of shape (n_samples, *input_shape)."""
        return self.features.reshape((len(self),) + tuple(input_shape))

    def to_frame(self) -> pd.DataFrame:
        """sample_id, then one column per feature (and ``label`` when present)."""
        frame = pd.DataFrame(self.features, columns=list(self.feature_names))
        frame.insert(0, SAMPLE_ID, pd.array(self.ids, dtype="string"))
        if self.labels is not None:
            frame["label"] = self.labels
        return frame

    def take(self, start: int, stop: int) -> Batch:
        """Rows [start, stop) as a new Batch."""
        return self._rows(slice(start, stop))

    def subsample(self, max_size: int | None, *, seed: int = 0) -> Batch:
        """A seeded random subset of at most ``max_size`` rows, in their original order (the batch
        itself when it is no larger, or when ``max_size`` is None)."""
        if max_size is None or len(self) <= max_size:
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self), size=max_size, replace=False))
        return self._rows(rows)

    def _rows(self, rows) -> Batch:
        labels = None if self.labels is None else self.labels[rows]
        return Batch(self.batch_id, self.ids[rows], self.features[rows], self.feature_names, labels)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a parquet file or an npz archive (arrays ``X`` and optionally ``sample_id``, ``y``) as a frame.

    npz archives are read with ``allow_pickle=False``: object arrays are refused.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: batch file not found")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        try:
            return pd.read_parquet(p)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for corrupt files
            raise InputError(f"{p}: not a readable parquet file: {exc}") from None
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as archive:
                if "X" not in archive.files:
                    raise InputError(f"{p}: npz archive has no array 'X' (found {archive.files})")
                x = archive["X"]
                frame = pd.DataFrame(
                    x.reshape(len(x), -1), columns=[f"f{i}" for i in range(int(np.prod(x.shape[1:])))]
                )
                if SAMPLE_ID in archive.files:
                    frame.insert(0, SAMPLE_ID, archive[SAMPLE_ID].astype(str))
                if "y" in archive.files:
                    frame["label"] = archive["y"]
                return frame
        except ValueError as exc:
            raise InputError(
                f"{p}: npz archive holds object arrays or is malformed ({exc}); pickled data is refused"
            ) from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise InputError(f"{p}: not a readable npz archive: {exc}") from None
    raise InputError(f"{p}: unsupported batch format {suffix!r}; use .parquet or .npz")


def validate_frame(
    frame: pd.DataFrame,
    *,
    spec: DataSpec,
    n_features: int,
    batch_id: str,
    source: str = "<frame>",
    feature_names: tuple[str, ...] | None = None,
) -> Batch:
    """Validate a batch frame against the policy's data spec and the model's feature count.

    feature_names, when given (e.g. the reference set's columns), fixes the expected features and
    their order; otherwise the spec's ``feature_columns`` or every column but id and label.
    """
    if len(frame) == 0:
        raise InputError(f"{source}: empty batch (0 rows)")
    id_col = spec.id_column
    label_col = spec.label_column if spec.label_column and spec.label_column in frame.columns else None
    if id_col in frame.columns:
        ids_series = frame[id_col]
        if ids_series.isna().any():
            row = int(np.flatnonzero(ids_series.isna().to_numpy())[0])
            raise InputError(f"{source}: column {id_col!r} is null in row {row}")
        ids = ids_series.astype(str).to_numpy()
    else:
        ids = np.array([f"{batch_id}:{i}" for i in range(len(frame))], dtype=object)
    dup = pd.Series(ids).duplicated(keep=False).to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)[:5].tolist()
        raise InputError(
            f"{source}: duplicate {id_col} values, e.g. {sorted(set(ids[dup].tolist()))[:5]} in rows {rows}"
        )
    expected = feature_names or spec.feature_columns
    present = [c for c in frame.columns if c not in (id_col, label_col)]
    if expected is not None:
        expected = tuple(expected)
        missing = [c for c in expected if c not in frame.columns]
        extra = [c for c in present if c not in expected]
        if missing or extra:
            raise InputError(
                f"{source}: feature columns differ from the expected set: missing {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}, unexpected {extra[:10]}{' ...' if len(extra) > 10 else ''}"
            )
        names = expected
    else:
        names = tuple(present)
    if len(names) != n_features:
        raise InputError(
            f"{source}: {len(names)} feature columns, but the model's input shape needs {n_features}"
        )
    features = sample_matrix(frame, what=source, features=names, ids=ids)
    labels = None
    if label_col is not None:
        lab = frame[label_col]
        if lab.isna().any() or not pd.api.types.is_integer_dtype(lab):
            raise InputError(f"{source}: label column {label_col!r} must hold integers without nulls")
        labels = lab.to_numpy(dtype=np.int64)
    return Batch(batch_id, ids.astype(str), features.astype(np.float32), tuple(str(n) for n in names), labels)


def load_batch(
    path: str | Path,
    *,
    spec: DataSpec,
    n_features: int,
    batch_id: str | None = None,
    feature_names: tuple[str, ...] | None = None,
) -> Batch:
    """Read and validate a batch file. See ``validate_frame`` for the checks."""
    p = Path(path)
    frame = read_table(p)
    return validate_frame(
        frame,
        spec=spec,
        n_features=n_features,
        batch_id=batch_id or p.stem,
        source=str(p),
        feature_names=feature_names,
    )


def batch_sha256(batch: Batch) -> str:
    """Content hash of a batch (ids, feature names and float32 features), for provenance and caching."""
    h = hashlib.sha256()
    h.update("\x1f".join(batch.feature_names).encode())
    h.update("\x1e".join(batch.ids.tolist()).encode())
    h.update(np.ascontiguousarray(batch.features, dtype=np.float32).tobytes())
    if batch.labels is not None:
        h.update(np.ascontiguousarray(batch.labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def plan_shards(n_samples: int, shard_size: int, *, min_shard: int = 64) -> list[dict]:
    """Split ``n_samples`` rows into contiguous shards of near-equal size.

    Each shard has at most ``shard_size`` rows and, unless the batch itself is smaller, at least
    ``min_shard`` rows, so every shard still packs many samples into each forward pass.
    Returns a list of ``{"index", "start", "stop"}`` dicts in sample order.
    """
    if n_samples < 1:
        raise InputError("plan_shards: empty batch (0 rows)")
    if shard_size < 1:
        raise InputError(f"plan_shards: shard_size must be >= 1, got {shard_size}")
    size = max(shard_size, min(min_shard, n_samples))
    n_shards = max(1, -(-n_samples // size))
    bounds = np.linspace(0, n_samples, n_shards + 1).round().astype(int)
    return [{"index": i, "start": int(bounds[i]), "stop": int(bounds[i + 1])} for i in range(n_shards)]
