"""ReferenceProfile: fitted once from the reference set, checked, and shared by the signals."""

from __future__ import annotations

import numpy as np
import pytest

from certrisk.risk.certify import derive_seeds, smooth_certify
from certrisk.risk.reference import (
    REFERENCE_RUN_KEY,
    ReferenceProfile,
    certify_reference,
    reference_certificates_key,
)
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import IBPSpec, SmoothingSpec

from .certify.conftest import two_class_linear

X = np.arange(24, dtype=np.float32).reshape(6, 2, 2)  # six 2x2 samples
Y = np.array([2, 0, 2, 2, 1, 0])
CERTS = {
    "smoothing": {
        "radius": np.array([0.5, 0.0, 1.0, 0.25, 0.0, 2.0]),
        "abstained": np.array([False, True, False, False, True, False]),
    }
}


def test_fitted_attributes():
    p = ReferenceProfile().fit(X, Y, certificates=CERTS)
    assert p.features_.shape == (6, 4) and p.features_.dtype == np.float64
    np.testing.assert_array_equal(p.features_[1], [4, 5, 6, 7])
    assert p.n_reference_ == 6 and p.n_features_in_ == 4
    assert p.labels_.dtype == np.int64 and p.label_source_ == "labels"
    assert p.classes_.tolist() == [0, 1, 2] and p.class_counts_.tolist() == [2, 1, 3]
    assert p.abstained_["smoothing"].dtype == np.bool_
    assert p.certified_radii("smoothing").tolist() == [0.5, 1.0, 0.25, 2.0]
    assert p.abstention_rate("smoothing") == pytest.approx(2 / 6)
    assert p.certificate_summary("smoothing") == {"abstention_rate": pytest.approx(2 / 6), "n_reference": 6}


def test_predictions_stand_in_for_labels_and_none_is_allowed():
    p = ReferenceProfile().fit(X, None, predictions=np.array([1, 1, 0, 0, 0, 0]))
    assert p.label_source_ == "predictions" and p.class_counts_.tolist() == [4, 2]
    bare = ReferenceProfile().fit(X)
    assert bare.labels_ is None and bare.label_source_ is None and bare.classes_.size == 0


def test_bad_reference_names_the_fault():
    with pytest.raises(InputError, match="not fitted"):
        ReferenceProfile().abstention_rate("smoothing")
    p = ReferenceProfile().fit(X, Y, certificates=CERTS)
    with pytest.raises(InputError, match=r"none for method 'ibp'; fitted with \['smoothing'\]"):
        p.certified_radii("ibp")
    nan = X.copy()
    nan[3, 1, 0] = np.nan
    with pytest.raises(InputError, match="reference: NaN or inf in row 3"):
        ReferenceProfile().fit(nan, Y)
    with pytest.raises(InputError, match="reference: empty"):
        ReferenceProfile().fit(X[:0], Y[:0])
    with pytest.raises(InputError, match=r"reference labels: shape \(5,\), expected \(6,\)"):
        ReferenceProfile().fit(X, Y[:5])
    with pytest.raises(InputError, match="reference labels: integer classes expected"):
        ReferenceProfile().fit(X, Y.astype(float))
    bad = {"smoothing": {**CERTS["smoothing"], "radius": np.array([0.5, 0.0, -1.0, 0.25, 0.0, 2.0])}}
    with pytest.raises(InputError, match="reference radii of 'smoothing': negative value in row 2"):
        ReferenceProfile().fit(X, Y, certificates=bad)
    floats = {"smoothing": {**CERTS["smoothing"], "abstained": np.zeros(6)}}
    with pytest.raises(InputError, match="abstained must be bool"):
        ReferenceProfile().fit(X, Y, certificates=floats)
    short = {"smoothing": {"radius": np.zeros(5), "abstained": np.zeros(5, bool)}}
    with pytest.raises(InputError, match=r"must have shape \(6,\)"):
        ReferenceProfile().fit(X, Y, certificates=short)
    with pytest.raises(InputError, match=r"missing \['abstained'\]"):
        ReferenceProfile().fit(X, Y, certificates={"smoothing": {"radius": np.zeros(6)}})


def test_certify_reference_is_smooth_certify_with_reference_seeds():
    w = np.linspace(0.5, 1.5, 4)
    model = two_class_linear(w, 0.3)
    inputs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    ids = [f"r{i}" for i in range(5)]
    spec = SmoothingSpec(sigma=0.25, n0=20, n=300, alpha=0.01)
    got = certify_reference(model, inputs, ids, spec)
    want = smooth_certify(
        model,
        inputs,
        sigma=0.25,
        n0=20,
        n=300,
        alpha=0.01,
        seed=derive_seeds(REFERENCE_RUN_KEY, ids, "smoothing"),
    )
    assert set(got) == {"radius", "abstained", "prediction"} and got["abstained"].dtype == np.bool_
    np.testing.assert_array_equal(got["radius"], want.radius)
    np.testing.assert_array_equal(got["abstained"], want.abstained)
    np.testing.assert_array_equal(got["prediction"], want.prediction)
    assert got["prediction"].dtype == np.int64


def test_reference_certificates_key_names_every_dependency():
    kw = {"model_sha256": "m", "policy_sha256": "p", "reference_sha256": "r", "device": None}
    key = reference_certificates_key(SmoothingSpec(sigma=0.25), **kw)
    assert key["parameters"]["sigma"] == 0.25 and key["method"] == "smoothing"
    assert {"model_sha256", "policy_sha256", "reference_sha256", "algorithm", "certrisk", "run_key"} <= set(
        key
    )
    assert key != reference_certificates_key(SmoothingSpec(sigma=0.5), **kw)
    assert key != reference_certificates_key(SmoothingSpec(sigma=0.25), **{**kw, "device": "cuda"})
    assert reference_certificates_key(IBPSpec(eps=0.1), **kw)["parameters"]["eps"] == 0.1


def test_reference_roles_are_a_function_of_the_id():
    from certrisk.risk.reference import REFERENCE_ROLES, reference_roles

    ids = [f"ref:{i}" for i in range(4000)]
    roles = reference_roles(ids)
    shares = {r: float((roles == r).mean()) for r in REFERENCE_ROLES}
    for role, share in REFERENCE_ROLES.items():
        assert abs(shares[role] - share) < 0.03, shares
    # the same id keeps its role whatever else is in the file, in any order
    assert reference_roles(ids[::-7]).tolist() == roles[::-7].tolist()
    assert reference_roles(["a"], {"x": 1.0}).tolist() == ["x"]
    with pytest.raises(InputError, match="sum to 1"):
        reference_roles(ids, {"x": 0.5})
