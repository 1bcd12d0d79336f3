"""The scorer's input tables: the sample set the predictions fix, checks that name the table,
column, row and sample at fault, and the driving certificate of each sample.

``sample_set`` fixes the samples and their order from the predictions; every other table is
aligned to it with ``positions`` and checked with ``one_per_sample`` and ``in_unit``.
``driving_certificates`` picks each sample's driving certificate (``CertificationSpec.driving``:
for a smoothing method, the row at its sigma and alpha) and finds the samples two methods
certified as different classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from certrisk.risk.tiering import some_ids
from certrisk.schemas.columns import ABSTAIN, CERTIFICATE_COLUMNS, PREDICTION_COLUMNS, SAMPLE_ID, conform
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import Policy, SmoothingSpec


def id_series(frame: pd.DataFrame, table: str) -> pd.Series:
    """The frame's sample_id column; InputError naming the first row without one."""
    col = frame[SAMPLE_ID]
    missing = col.isna().to_numpy()
    if missing.any():
        raise InputError(f"{table}: missing sample_id in row {int(np.flatnonzero(missing)[0])}")
    return col


def positions(index: pd.Index, ids: pd.Series, table: str) -> np.ndarray:
    """Row positions of ``ids`` in the predictions' index; raise naming unknown ids."""
    pos = index.get_indexer(ids)
    if (pos < 0).any():
        unknown = pd.unique(ids.to_numpy(dtype=object)[pos < 0])
        raise InputError(f"{table}: {len(unknown)} sample_id(s) not in the predictions: {some_ids(unknown)}")
    return pos


def one_per_sample(pos: np.ndarray, n: int, ids: np.ndarray, table: str, what: str) -> None:
    """InputError naming the samples with no row, or more than one, among positions ``pos``."""
    counts = np.bincount(pos, minlength=n)
    if (counts == 0).any():
        raise InputError(
            f"{table}: no {what} row for {int((counts == 0).sum())} sample(s): {some_ids(ids[counts == 0])}"
        )
    if (counts > 1).any():
        raise InputError(
            f"{table}: duplicate {what} rows for {int((counts > 1).sum())} sample(s): {some_ids(ids[counts > 1])}"
        )


def in_unit(values: np.ndarray, ids: np.ndarray, table: str, column: str) -> None:
    """InputError naming the first row (and sample) whose value is NaN or outside [0, 1]."""
    bad = np.isnan(values) | (values < 0) | (values > 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{table}: column {column!r} must lie in [0, 1] without NaN; row {row} (sample_id "
            f"{str(ids[row])!r}) holds {values[row]!r}; {int(bad.sum())} row(s) affected"
        )


def scatter(pos: np.ndarray, values, n: int) -> np.ndarray:
    """float64 array of shape (n,) holding ``values`` at row positions ``pos``."""
    out = np.empty(n, dtype=np.float64)
    out[pos] = np.asarray(values, dtype=np.float64)
    return out


@dataclass(frozen=True)
class SampleSet:
    """The sample set fixed by the predictions: ids in order (for messages) and their index."""

    preds: pd.DataFrame
    index: pd.Index
    ids: np.ndarray

    @property
    def n(self) -> int:
        return len(self.index)


def sample_set(predictions: pd.DataFrame) -> SampleSet:
    """The samples a PREDICTION_COLUMNS frame fixes; InputError on an empty frame or duplicate ids."""
    preds = conform(predictions, PREDICTION_COLUMNS, table="predictions")
    col = id_series(preds, "predictions")
    if len(col) == 0:
        raise InputError("predictions: empty batch (no samples to score)")
    index = pd.Index(col)
    ids = col.to_numpy(dtype=object)
    if not index.is_unique:
        raise InputError(
            f"predictions: duplicate sample_id(s): {some_ids(pd.unique(ids[index.duplicated()]))}"
        )
    return SampleSet(preds, index, ids)


# --------------------------------------------------------------------------------------------
# certificates: the driving row per sample, disagreement across all rows


@dataclass(frozen=True)
class Driving:
    """Per sample, arrays of shape (n_samples,): the driving certificate's class (ABSTAIN when it
    abstained), whether it abstained, and whether the methods that gave a class disagree."""

    method: str
    prediction: np.ndarray
    abstained: np.ndarray
    disagree: np.ndarray


def _driving_rows(certs: pd.DataFrame, policy: Policy) -> tuple[np.ndarray, str, str]:
    """Mask of the driving method's certificate rows (for smoothing: at the policy's sigma and
    alpha), the method name and a description for messages."""
    spec = policy.certification.driving
    name = spec.method.value
    mask = certs["method"].eq(name).fillna(False).to_numpy(dtype=bool)
    if not isinstance(spec, SmoothingSpec):
        return mask, name, name
    sigma = certs["sigma"].to_numpy(dtype=np.float64)
    alpha = certs["alpha"].to_numpy(dtype=np.float64)
    mask &= np.isclose(sigma, spec.sigma, rtol=1e-9, atol=0.0)
    mask &= np.isclose(alpha, spec.alpha, rtol=1e-9, atol=0.0)
    return mask, name, f"{name} (sigma={spec.sigma}, alpha={spec.alpha})"


def _methods_disagree(pos: np.ndarray, pred: np.ndarray, gave: np.ndarray, n: int) -> np.ndarray:
    """True where two certificates of a sample that each gave a class gave different ones."""
    lo = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(lo, pos[gave], pred[gave])
    np.maximum.at(hi, pos[gave], pred[gave])
    return (np.bincount(pos[gave], minlength=n) > 0) & (lo != hi)


def driving_certificates(certificates: pd.DataFrame, samples: SampleSet, policy: Policy) -> Driving:
    """Each sample's driving certificate (CERTIFICATE_COLUMNS rows; exactly one per sample) and
    whether its methods disagree. InputError naming samples without certificates or driving row."""
    certs = conform(certificates, CERTIFICATE_COLUMNS, table="certificates")
    n, ids = samples.n, samples.ids
    pos = positions(samples.index, id_series(certs, "certificates"), "certificates")
    missing = np.bincount(pos, minlength=n) == 0
    if missing.any():
        raise InputError(
            f"certificates: no certificate for {int(missing.sum())} sample(s): {some_ids(ids[missing])}"
        )
    pred = certs["prediction"].to_numpy(dtype=np.int64)
    abst = certs["abstained"].to_numpy(dtype=bool) | (pred < 0)  # ABSTAIN, or any negative class
    mask, method, what = _driving_rows(certs, policy)
    drive_pos = pos[mask]
    one_per_sample(drive_pos, n, ids, "certificates", f"driving certificate ({what})")
    prediction = np.empty(n, dtype=np.int64)
    prediction[drive_pos] = pred[mask]
    drive_abst = np.empty(n, dtype=bool)
    drive_abst[drive_pos] = abst[mask]
    prediction[drive_abst] = ABSTAIN
    return Driving(method, prediction, drive_abst, _methods_disagree(pos, pred, ~abst, n))


def signal_classes(certificates: pd.DataFrame, predictions: pd.DataFrame, policy: Policy) -> np.ndarray:
    """The class each sample's signals compare with its reference neighbours, int64 of shape
    (n_samples,) in the order of ``predictions``: the driving certificate's class, or the base
    model's where the driving certificate abstained (ABSTAIN where neither gave a class)."""
    samples = sample_set(predictions)
    drive = driving_certificates(certificates, samples, policy)
    base = samples.preds["base_prediction"].to_numpy(dtype=np.int64)
    return np.where(drive.abstained, np.where(base < 0, ABSTAIN, base), drive.prediction)


__all__ = [
    "Driving",
    "SampleSet",
    "driving_certificates",
    "id_series",
    "in_unit",
    "one_per_sample",
    "positions",
    "sample_set",
    "scatter",
    "signal_classes",
]
