"""The batch figures a run's rows determine, and the check of the summary a caller supplies.

``write_run`` never trusts a figure the rows already say: from ``sample_risk`` the sample count,
the mean risk, the abstention rate, the samples per tier, the share at tier high or above and
the risk quantiles; from ``drift_test`` the number of tests, how many rejected and whether any
did; from ``rule_result`` the pass rate of the expectations. ``reconcile`` checks each figure the
supplied summary states against the rows (floats within ``REL_TOL``), refuses one that is out of
range or of another type, naming the key, and returns the summary with every figure derived
from the rows (figures the caller left out are filled in). Everything else in the summary (the
batch tier, its reasons, the abstention test against the reference, limitations, seeds) is
checked for range where it is a known figure and kept as given.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from certrisk.schemas.enums import Tier
from certrisk.schemas.errors import InputError

#: Relative tolerance of a supplied float against the one derived from the rows (and an absolute
#: one for figures near 0): summation order differs between callers, nothing else may.
REL_TOL = 1e-9
ABS_TOL = 1e-12
#: Quantiles filled in when the summary names none: {name: q}.
DEFAULT_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}
#: Summary figures that are shares or probabilities, in [0, 1].
UNIT_FIGURES = (
    "abstention_rate", "mean_risk", "high_share", "rule_pass_rate", "reference_abstention_rate",
    "abstention_p_value",
)  # fmt: skip
_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)$")


def _number(summary: dict, key: str):
    value = summary.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"summary: {key} must be a number, got {value!r}")
    return value


def _same(key: str, supplied, derived) -> None:
    if supplied is None:
        return
    if isinstance(derived, int) and not isinstance(derived, bool):
        if supplied != derived:
            raise InputError(f"summary: {key}={supplied!r} but the rows give {derived}")
    elif not math.isclose(float(supplied), float(derived), rel_tol=REL_TOL, abs_tol=ABS_TOL):
        raise InputError(f"summary: {key}={supplied!r} but the rows give {derived!r}")


def quantile_of(name: str) -> float:
    """The quantile a risk_quantiles key names: "p90" -> 0.9, "max" -> 1, "min" -> 0,
    "median" -> 0.5, "0.95" -> 0.95. InputError for anything else."""
    named = {"max": 1.0, "min": 0.0, "median": 0.5}
    if name in named:
        return named[name]
    match = _PERCENTILE.match(name)
    try:
        q = float(match.group(1)) / 100.0 if match else float(name)
    except ValueError:
        q = float("nan")
    if not 0.0 <= q <= 1.0:
        raise InputError(
            f"summary: risk_quantiles key {name!r} names no quantile (use p50, p99, max, min or a number in [0, 1])"
        )
    return q


def _sample_figures(summary: dict, samples: pd.DataFrame) -> dict:
    risk = samples["risk"].to_numpy(dtype=np.float64)
    tiers = samples["tier"].to_numpy(dtype=object)
    n = len(risk)
    counts = {t.value: int((tiers == t.value).sum()) for t in Tier}
    supplied_q = summary.get("risk_quantiles")
    if supplied_q is not None and not isinstance(supplied_q, dict):
        raise InputError(f"summary: risk_quantiles must be an object of quantiles, got {supplied_q!r}")
    names = list(supplied_q) if supplied_q else list(DEFAULT_QUANTILES)
    qs = [quantile_of(k) for k in names]
    values = np.quantile(risk, qs)
    return {
        "n_samples": n,
        "mean_risk": float(risk.mean()),
        "abstention_rate": float(samples["abstained"].to_numpy(dtype=bool).mean()),
        "tier_counts": counts,
        "high_share": (counts[Tier.HIGH.value] + counts[Tier.CRITICAL.value]) / n,
        "risk_quantiles": {k: float(v) for k, v in zip(names, values, strict=True)},
    }


def _check_mapping(summary: dict, key: str, derived: dict) -> None:
    supplied = summary.get(key)
    if supplied is None:
        return
    if not isinstance(supplied, dict):
        raise InputError(f"summary: {key} must be an object, got {supplied!r}")
    unknown = [k for k in supplied if k not in derived]
    if unknown:
        raise InputError(
            f"summary: {key} names {unknown}, which the rows do not have; known: {list(derived)}"
        )
    for name, value in supplied.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"summary: {key}[{name!r}] must be a number, got {value!r}")
        _same(f"{key}[{name!r}]", value, derived[name])
    missing = [k for k, v in derived.items() if v and k not in supplied]
    if missing:
        raise InputError(f"summary: {key} leaves out {missing}, which the rows have")


def _test_figures(summary: dict, drift: pd.DataFrame, rules: pd.DataFrame) -> dict:
    """Drift and rule figures from their rows; None where no row was recorded."""
    out: dict = {}
    if len(drift):
        rejected = int(drift["drift"].to_numpy(dtype=bool).sum())
        out.update(n_drift_tests=len(drift), n_drift_tests_rejected=rejected, drift=rejected > 0)
    elif summary.get("drift"):
        raise InputError("summary: drift is true but drift_tests has no rejected test")
    else:
        for key in ("n_drift_tests", "n_drift_tests_rejected"):
            _same(key, _number(summary, key), 0)
    if len(rules):
        out["rule_pass_rate"] = float(rules["success"].to_numpy(dtype=bool).mean())
    elif summary.get("rule_pass_rate") is not None:
        raise InputError("summary: rule_pass_rate is given but rule_expectations has no row")
    return out


def _check_ranges(summary: dict) -> None:
    for key in UNIT_FIGURES:
        value = _number(summary, key)
        if value is not None and not 0.0 <= value <= 1.0:
            raise InputError(f"summary: {key}={value!r} is out of range [0, 1]")
    for key in ("n_samples", "n_drift_tests", "n_drift_tests_rejected"):
        value = _number(summary, key)
        if value is not None and (value < 0 or value != int(value)):
            raise InputError(f"summary: {key}={value!r} must be a whole number >= 0")
    drift = summary.get("drift")
    if drift is not None and not isinstance(drift, bool):
        raise InputError(f"summary: drift must be true, false or null, got {drift!r}")
    if summary.get("tier") not in {t.value for t in Tier}:
        raise InputError(
            f"summary: unknown tier {summary.get('tier')!r}; known tiers: {[t.value for t in Tier]}"
        )


def reconcile(summary: dict, samples: pd.DataFrame, drift: pd.DataFrame, rules: pd.DataFrame) -> dict:
    """``summary`` (parsed canonical JSON) checked against the rows and completed from them.

    ``samples`` has SAMPLE_RISK_COLUMNS, ``drift`` DRIFT_TEST_COLUMNS, ``rules``
    RULE_EXPECTATION_COLUMNS (either may be empty). Raises InputError naming the first key that
    is out of range, of another type, or disagrees with the rows; nothing is written then.
    """
    _check_ranges(summary)
    derived = _sample_figures(summary, samples)
    derived.update(_test_figures(summary, drift, rules))
    for key, value in derived.items():
        if key in ("tier_counts", "risk_quantiles"):
            _check_mapping(summary, key, value)
        elif key == "drift":
            if summary.get(key) is not None and summary[key] != value:
                raise InputError(f"summary: drift={summary[key]!r} but the rows give {value!r}")
        else:
            _same(key, _number(summary, key), value)
    return {**summary, **derived}
