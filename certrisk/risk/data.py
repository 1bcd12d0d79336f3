"""Batch loading and validation: one place that turns a file into (sample ids, feature matrix).

A batch is a parquet file or an ``.npz`` archive holding a sample id column (optional: derived as
``<batch_id>:<row>`` when absent), feature columns and optionally a label column. Validation fails
with an InputError naming the file, column, row and sample id at fault: unreadable or pickled
files, empty or one-row batches, duplicate ids, missing or unexpected features, non-numeric
columns, NaN/inf, values beyond float32's range (the model computes in float32: they would become
inf), and feature counts that do not match the model's input shape.

Labels. A batch may carry the policy's label column (``data.label_column``, default ``label``;
in an npz, the array ``y``): integers, one per sample. It is never a feature: it is kept on the
``Batch`` (``labels``) for evaluation (measured detection needs ground truth) and left out of the
staged frame (``Batch.to_frame``) the pipeline's tasks read.

npz archives. ``X`` holds the samples, of shape (n_samples, ...); ``sample_id`` (strings) and
``y`` (integer labels), when present, hold one value per sample; ``feature_names`` (strings),
when present, names the flattened features in order. Without ``feature_names`` the features are
matched by position to the expected features (the reference set's, or the policy's
``feature_columns``): the archive's flattened order must be the reference's column order.

One-row batches are refused (``MIN_BATCH_ROWS``): the batch's drift tests compare two
distributions and need at least two samples; score a single sample within a batch of two or more.
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

#: Fewest rows a batch file may hold (the drift tests need two samples).
MIN_BATCH_ROWS = 2
#: Largest magnitude a feature may have: the model computes in float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: ``DataFrame.attrs`` flag of a frame read from an npz without feature names: its columns
#: f0..fN are positions, matched to the expected features in order.
POSITIONAL_FEATURES = "certrisk_positional_features"


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

    def to_frame(self, *, labels: bool = False) -> pd.DataFrame:
        """sample_id, then one column per feature: what the pipeline's tasks read. With
        ``labels=True`` also ``label`` (when the batch has labels)."""
        frame = pd.DataFrame(self.features, columns=list(self.feature_names))
        frame.insert(0, SAMPLE_ID, pd.array(self.ids, dtype="string"))
        if labels and self.labels is not None:
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


def _npz_array(archive, name: str, p: Path) -> np.ndarray:
    try:
        return archive[name]
    except ValueError as exc:  # numpy refuses object arrays when allow_pickle=False
        raise InputError(
            f"{p}: npz array {name!r} holds Python objects ({exc}); pickled data is refused"
        ) from None


def _npz_names(archive, p: Path, width: int) -> tuple[list[str], bool]:
    """The feature names of an npz (its ``feature_names`` array), or positions f0..fN."""
    if "feature_names" not in archive.files:
        return [f"f{i}" for i in range(width)], True
    names = _npz_array(archive, "feature_names", p)
    if (
        names.ndim != 1
        or names.dtype.kind not in "US"
        or len(names) != width
        or len(set(names.tolist())) != width
    ):
        raise InputError(
            f"{p}: npz array 'feature_names' must hold {width} distinct strings (one per flattened feature of "
            f"'X'), got shape {names.shape}, dtype {names.dtype}"
        )
    return [str(n) for n in names.tolist()], False


def _read_npz(p: Path, label_column: str) -> pd.DataFrame:
    try:
        archive = np.load(p, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise InputError(f"{p}: not a readable npz archive: {exc}") from None
    with archive:
        if "X" not in archive.files:
            raise InputError(f"{p}: npz archive has no array 'X' (found {archive.files})")
        x = _npz_array(archive, "X", p)
        if x.ndim == 0:
            raise InputError(f"{p}: npz array 'X' is 0-d (one value); a batch has shape (n_samples, ...)")
        width = int(np.prod(x.shape[1:]))
        names, positional = _npz_names(archive, p, width)
        frame = pd.DataFrame(x.reshape(len(x), width), columns=names)
        for key, column in ((SAMPLE_ID, SAMPLE_ID), ("y", label_column)):
            if key not in archive.files:
                continue
            values = _npz_array(archive, key, p)
            if values.shape != (len(x),):
                raise InputError(
                    f"{p}: npz array {key!r} has shape {values.shape} but 'X' has {len(x)} rows: it needs one "
                    "value per sample"
                )
            if key == SAMPLE_ID:
                frame.insert(0, column, values.astype(str))
            else:
                frame[column] = values
    frame.attrs[POSITIONAL_FEATURES] = positional
    return frame


def read_table(path: str | Path, *, label_column: str | None = "label") -> pd.DataFrame:
    """Read a parquet file or an npz archive as a frame (see the module docstring for the npz
    layout: ``X``, optional ``sample_id``, ``y`` as ``label_column``, ``feature_names``).

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
        return _read_npz(p, label_column or "label")
    raise InputError(f"{p}: unsupported batch format {suffix!r}; use .parquet or .npz")


def _positional(
    frame: pd.DataFrame, expected: tuple[str, ...], present: list[str], source: str
) -> pd.DataFrame:
    """An npz frame without feature names, its positions renamed to the ``expected`` features."""
    if len(present) != len(expected):
        raise InputError(
            f"{source}: the npz archive has {len(present)} features per sample but {len(expected)} are expected "
            f"({list(expected[:5])}{' ...' if len(expected) > 5 else ''}); add a 'feature_names' array or "
            "match the reference's features"
        )
    return frame.rename(columns=dict(zip(present, expected, strict=True)))


def _check_float32_range(features: np.ndarray, names, ids, source: str) -> None:
    """Refuse values the model's float32 arithmetic would turn into inf."""
    beyond = np.abs(features) > FLOAT32_MAX
    if beyond.any():
        row, col = (int(i) for i in np.argwhere(beyond)[0])
        raise InputError(
            f"{source}: value {float(features[row, col])!r} in column {names[col]!r}, row {row} "
            f"(sample_id {ids[row]!r}) is beyond float32's range (+-{FLOAT32_MAX:.7g}), in which the model "
            f"computes; {int(beyond.sum())} value(s) affected"
        )


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
    if expected is not None and frame.attrs.get(POSITIONAL_FEATURES):
        frame = _positional(frame, tuple(expected), present, source)
        present = list(expected)
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
    _check_float32_range(features, names, ids, source)
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
    """Read and validate a batch file. See ``validate_frame`` for the checks; a file with fewer
    than ``MIN_BATCH_ROWS`` rows is refused (see the module docstring)."""
    p = Path(path)
    frame = read_table(p, label_column=spec.label_column)
    if 0 < len(frame) < MIN_BATCH_ROWS:
        raise InputError(
            f"{p}: {len(frame)} row; a batch needs at least {MIN_BATCH_ROWS} (its drift tests compare "
            "distributions): score a single sample within a batch of two or more"
        )
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
