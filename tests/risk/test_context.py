"""Certificate context: closed forms on points on a line, in every norm, from arrays and from a
fitted ReferenceProfile."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from certrisk.risk.context import batch_context, certificate_context, profile_context, radius_percentile
from certrisk.risk.reference import ReferenceProfile
from certrisk.schemas.columns import ABSTAIN, CONTEXT_COLUMNS
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import IBPSpec, SmoothingSpec

# Reference on the diagonal t * (1, 1): class 0 at t = 0, 1, 2; class 1 at t = 5, 6.
# Between points t and s: l1 = 2|t - s|, l2 = sqrt(2)|t - s|, linf = |t - s|.
REF_T = np.array([0.0, 1.0, 2.0, 5.0, 6.0])
REF_Y = np.array([0, 0, 0, 1, 1])
SCALE = {"l1": 2.0, "l2": np.sqrt(2.0), "linf": 1.0}


def _on_line(t):
    t = np.asarray(t, dtype=np.float64)
    return np.stack([t, t], axis=1)


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_closed_form_on_a_line(norm):
    c = SCALE[norm]
    batch = _on_line([3.0, 4.5, 3.0, 10.0])
    # sample a: class 0 at t = 3, ball of |dt| <= 1.5 holds t = 2 only
    # sample b: class 1 at t = 4.5, ball of |dt| <= 2.6 holds t = 2, 5, 6
    # sample c: abstained
    # sample d: class 0 at t = 10, radius 0
    radius = np.array([1.5 * c, 2.6 * c, 0.0, 0.0])
    prediction = np.array([0, 1, -1, 0])
    ref_radii = np.array([0.0, 1.0, 2.0, 3.0]) * c
    out = certificate_context(
        batch,
        radius,
        prediction,
        _on_line(REF_T),
        REF_Y,
        norm=norm,
        ids=["a", "b", "c", "d"],
        method="smoothing",
        reference_radii=ref_radii,
        max_pairs=5,  # one batch row per block
        device="cpu",
    )
    assert list(out.columns) == list(CONTEXT_COLUMNS)
    assert out["method"].tolist() == ["smoothing"] * 4
    a, b, ab, d = (out.iloc[i] for i in range(4))
    assert a["dist_same_class"] == pytest.approx(1.0 * c) and a["dist_other_class"] == pytest.approx(2.0 * c)
    assert a["share_ref_in_ball"] == pytest.approx(1 / 5)
    assert a["radius_over_dist"] == pytest.approx(0.75)
    assert a["radius_percentile"] == pytest.approx(2 / 4)  # radii 0 and 1 lie below 1.5
    assert b["dist_same_class"] == pytest.approx(0.5 * c) and b["dist_other_class"] == pytest.approx(2.5 * c)
    assert b["share_ref_in_ball"] == pytest.approx(3 / 5)
    assert b["radius_over_dist"] == pytest.approx(2.6 / 2.5)  # > 1: covers a class-0 sample
    assert b["radius_percentile"] == pytest.approx(3 / 4)
    assert np.isnan(ab["dist_same_class"]) and np.isnan(ab["dist_other_class"])
    assert ab["share_ref_in_ball"] == 0 and ab["radius_over_dist"] == 0 and ab["radius_percentile"] == 0
    assert d["dist_same_class"] == pytest.approx(8.0 * c) and d["dist_other_class"] == pytest.approx(4.0 * c)
    assert d["share_ref_in_ball"] == 0 and d["radius_over_dist"] == 0
    assert d["radius_percentile"] == pytest.approx(1 / 4)


def test_predictions_stand_in_for_missing_labels_and_missing_classes_give_nan():
    out = certificate_context(
        _on_line([3.0]),
        np.array([1.0]),
        np.array([7]),  # no reference sample predicted 7
        _on_line(REF_T),
        None,
        reference_predictions=np.array([1, 1, 1, 1, 1]),
        norm="linf",
        ids=["a"],
        method="ibp",
    )
    row = out.iloc[0]
    assert np.isnan(row["dist_same_class"]) and row["dist_other_class"] == pytest.approx(1.0)
    assert np.isnan(row["radius_percentile"])
    with pytest.raises(InputError, match="no labels"):
        certificate_context(
            _on_line([3.0]),
            np.array([1.0]),
            np.array([0]),
            _on_line(REF_T),
            None,
            norm="l2",
            ids=["a"],
            method="m",
        )


def test_radius_percentile_is_the_empirical_cdf():
    ref = np.array([0.0, 0.0, 0.5, 1.0, 2.0])
    assert radius_percentile(np.array([0.0, 0.25, 1.0, 3.0]), ref).tolist() == [0.4, 0.4, 0.8, 1.0]


def test_profile_context_ranks_against_the_methods_reference_certificates():
    """The profile's certified reference radii (abstentions left out) give the percentile; the
    closed forms match those of the arrays API on the same points."""
    c = SCALE["l2"]
    profile = ReferenceProfile().fit(
        _on_line(REF_T),
        REF_Y,
        certificates={
            "smoothing": {
                "radius": np.array([0.0, 1.0, 2.0, 3.0, 0.0]) * c,
                "abstained": np.array([False, False, False, False, True]),
            }
        },
    )
    out = profile_context(
        profile,
        _on_line([3.0, 4.5, 3.0]),
        np.array([1.5 * c, 2.6 * c, 0.0]),
        np.array([0, 1, ABSTAIN]),
        norm="l2",
        ids=["a", "b", "c"],
        method="smoothing",
        device="cpu",
    )
    assert list(out.columns) == list(CONTEXT_COLUMNS)
    assert out["radius_percentile"].tolist() == pytest.approx([2 / 4, 3 / 4, 0.0])
    assert out["dist_other_class"].iloc[0] == pytest.approx(2.0 * c)
    assert out["share_ref_in_ball"].iloc[1] == pytest.approx(3 / 5)
    # a method the profile holds no reference certificates for: no percentile
    other = profile_context(
        profile, _on_line([3.0]), np.array([1.0]), np.array([0]), norm="linf", ids=["a"], method="ibp"
    )
    assert np.isnan(other["radius_percentile"].iloc[0])


def test_batch_context_puts_every_method_in_context_in_spec_order():
    profile = ReferenceProfile().fit(_on_line(REF_T), REF_Y)
    certificates = pd.DataFrame(
        {
            "sample_id": ["b", "a", "a", "b"],
            "method": ["ibp", "ibp", "smoothing", "smoothing"],
            "radius": [0.5, 1.0, 1.5, 0.0],
            "prediction": [1, 0, 0, ABSTAIN],
        }
    )
    specs = [SmoothingSpec(sigma=0.25), IBPSpec(eps=0.1)]
    out = batch_context(
        profile, _on_line([3.0, 4.5]), certificates, ids=["a", "b"], specs=specs, device="cpu"
    )
    assert out["method"].tolist() == ["smoothing", "smoothing", "ibp", "ibp"]
    assert out["sample_id"].tolist() == ["a", "b", "a", "b"]
    # a at t = 3, class 0: nearest class 1 at t = 5 (l2 2 sqrt 2, linf 2); b abstained under smoothing
    assert out["dist_other_class"].iloc[0] == pytest.approx(2.0 * SCALE["l2"])
    assert np.isnan(out["dist_other_class"].iloc[1])
    assert out["dist_other_class"].iloc[2] == pytest.approx(2.0)
    assert out["dist_same_class"].iloc[3] == pytest.approx(0.5)
    with pytest.raises(InputError, match="no 'ibp' certificate for sample_id 'b'"):
        batch_context(profile, _on_line([3.0, 4.5]), certificates.iloc[1:], ids=["a", "b"], specs=specs)


def test_bad_input_names_the_fault():
    ref = _on_line(REF_T)
    with pytest.raises(InputError, match="reference has 2 features, batch has 3"):
        certificate_context(
            np.ones((1, 3)), [1.0], np.array([0]), ref, REF_Y, norm="l2", ids=["a"], method="m"
        )
    with pytest.raises(InputError, match="empty"):
        certificate_context(np.ones((0, 2)), [], np.array([], int), ref, REF_Y, norm="l2", ids=[], method="m")
    bad = _on_line([1.0, 2.0])
    bad[1, 0] = np.nan
    with pytest.raises(InputError, match=r"batch: NaN or inf in row 1 \(sample_id 'b'\)"):
        certificate_context(
            bad, [1.0, 1.0], np.array([0, 0]), ref, REF_Y, norm="l2", ids=["a", "b"], method="m"
        )
    with pytest.raises(InputError, match=r"radius: negative in row 0 \(sample_id 'a'\)"):
        certificate_context(
            _on_line([1.0]), [-1.0], np.array([0]), ref, REF_Y, norm="l2", ids=["a"], method="m"
        )
    with pytest.raises(InputError, match="unknown norm 'l3'"):
        certificate_context(
            _on_line([1.0]), [1.0], np.array([0]), ref, REF_Y, norm="l3", ids=["a"], method="m"
        )
