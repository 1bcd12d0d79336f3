"""ArtifactCache: computed once per key (whatever the key's order), stored under CERTRISK_HOME,
recomputed with a warning when an entry is unreadable or no longer matches its digest."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from certrisk.operators.cache import FORMAT_VERSION, ArtifactCache, arrays_sha256
from certrisk.schemas.errors import InputError
from certrisk.schemas.settings import cache_dir

KEY = {
    "model_sha256": "m" * 64,
    "policy_sha256": "p" * 64,
    "reference_sha256": "r" * 64,
    "method": "smoothing",
    "parameters": {"sigma": 0.25, "n": 1000},
    "algorithm": 2,
}


def _counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value

    return calls, compute


def test_computes_once_per_key_and_stores_under_certrisk_home():
    calls, compute = _counting(np.array([0.0, 0.3, 0.7]))
    cache = ArtifactCache()
    first = cache.get_or_compute("reference_radii", KEY, compute)
    second = cache.get_or_compute("reference_radii", dict(reversed(list(KEY.items()))), compute)  # order
    assert len(calls) == 1 and np.array_equal(first, second) and second.dtype == np.float64
    path = cache.path("reference_radii", KEY)
    assert path.exists() and path.parent.is_relative_to(cache_dir())
    cache.get_or_compute("reference_radii", {**KEY, "method": "ibp"}, compute)
    cache.get_or_compute("reference_radii", {**KEY, "parameters": {"sigma": 0.5, "n": 1000}}, compute)
    cache.get_or_compute("reference_radii", {**KEY, "algorithm": 3}, compute)
    assert len(calls) == 4


def test_named_arrays_keep_their_dtypes(tmp_path):
    calls, compute = _counting({"radius": np.array([0.0, 1.5]), "abstained": np.array([True, False])})
    cache = ArtifactCache(tmp_path)
    cache.get_or_compute_arrays("reference_certificates", KEY, compute)
    got = cache.get_or_compute_arrays("reference_certificates", KEY, compute)
    assert len(calls) == 1
    assert got["abstained"].dtype == np.bool_ and got["abstained"].tolist() == [True, False]
    assert got["radius"].dtype == np.float64 and got["radius"].tolist() == [0.0, 1.5]


def test_the_key_includes_the_format_version_and_kind():
    assert ArtifactCache.digest("a", KEY) != ArtifactCache.digest("b", KEY)
    assert ArtifactCache.digest("a", KEY) == ArtifactCache.digest("a", dict(reversed(list(KEY.items()))))
    assert FORMAT_VERSION >= 1
    assert arrays_sha256({"x": np.zeros(2)}) != arrays_sha256({"x": np.zeros(2, np.float32)})
    assert arrays_sha256({"x": np.zeros((2, 1))}) != arrays_sha256({"x": np.zeros((1, 2))})


def test_tampered_or_unreadable_entries_are_recomputed_with_a_warning(tmp_path, caplog):
    cache = ArtifactCache(tmp_path)
    calls, compute = _counting(np.array([0.25, 0.5]))
    cache.get_or_compute("radii", KEY, compute)
    path = cache.path("radii", KEY)
    # rewrite the entry with other values under the old digest
    with np.load(path) as archive:
        entry = {name: archive[name] for name in archive.files}
    entry["value"] = np.array([9.0, 9.0])
    with path.open("wb") as fh:
        np.savez(fh, **entry)
    with caplog.at_level(logging.WARNING, logger="certrisk.operators.cache"):
        got = cache.get_or_compute("radii", KEY, compute)
    assert got.tolist() == [0.25, 0.5] and len(calls) == 2
    assert "does not match its recorded sha256" in caplog.text and str(path) in caplog.text
    assert cache.get_or_compute("radii", KEY, compute).tolist() == [0.25, 0.5] and len(calls) == 2

    caplog.clear()
    path.write_bytes(path.read_bytes()[:40])  # a torn write
    with caplog.at_level(logging.WARNING, logger="certrisk.operators.cache"):
        got = cache.get_or_compute("radii", KEY, compute)
    assert got.tolist() == [0.25, 0.5] and len(calls) == 3
    assert "unreadable" in caplog.text


def test_bad_kind_or_reserved_names_are_refused(tmp_path):
    cache = ArtifactCache(tmp_path)
    with pytest.raises(InputError, match="kind must be a plain name"):
        cache.path("../escape", KEY)
    with pytest.raises(InputError, match="reserved"):
        cache.get_or_compute_arrays("k", KEY, lambda: {"__sha256__": np.zeros(1)})
