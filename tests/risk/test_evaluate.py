"""The evaluation harness on a model whose geometry is exact: a linear 2-class model on the plane
(class 1 where x1 > 0), evaluation samples 0.8 from its boundary, reference samples of each class
1.8 from the evaluation samples of the other, and a scorer whose risk is a known function of the
distance to the boundary. Budgets, attack success and every metric have closed forms here."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from certrisk.risk.attack_suite import (
    FAMILIES,
    AttackSetting,
    LabelledSet,
    class_geometry,
    nearest_other_class,
)
from certrisk.risk.conformal import conformal_threshold
from certrisk.risk.evaluate import (
    DETECTION_COLUMNS,
    ScoredSet,
    certificate_only_risk,
    evaluate_detection,
    evaluation_records,
    family_table,
    target_gaps,
)
from certrisk.risk.score import score_samples
from certrisk.risk.tiering import assign_tiers
from certrisk.schemas.columns import CONTEXT_COLUMNS, SAMPLE_ID
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import parse_policy
from tests.factories import certificate_frame, prediction_frame

POLICY = parse_policy(
    {
        "model": {"name": "line", "path": "line.safetensors", "factory": "line:build", "input_shape": [2],
                  "classes": ["neg", "pos"]},
        "data": {"reference": "ref.parquet"},
        "certification": {"methods": [{"method": "smoothing", "sigma": 0.25, "n": 2000, "alpha": 0.001}]},
        "risk_tolerance": "Abstained samples go to human review.",
    },
    source="line-policy.yaml",
)  # fmt: skip
GRID = np.arange(20) * 0.1
ABSTAIN_BELOW = 0.2  # the fake pipeline abstains within this distance of the boundary


def _points(x1: float, label: int, prefix: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    x = np.stack([np.full(len(GRID), x1), GRID], axis=1).astype(np.float32)
    return [f"{prefix}{label}:{i}" for i in range(len(GRID))], x, np.full(len(GRID), label)


def labelled(parts) -> LabelledSet:
    ids, xs, ys = zip(*parts, strict=True)
    return LabelledSet(
        np.array([i for part in ids for i in part], dtype=object),
        np.concatenate(xs),
        np.concatenate(ys).astype(np.int64),
    )


#: 40 evaluation samples 0.8 from the boundary, plus one the model gets wrong (labelled 1 at x1 < 0).
EVALUATION = labelled(
    [
        _points(-0.8, 0, "e"),
        _points(0.8, 1, "e"),
        (["wrong"], np.array([[-0.8, 5.0]], np.float32), np.array([1])),
    ]
)
REFERENCE = labelled([_points(-1.0, 0, "r"), _points(1.0, 1, "r")])
#: Clean calibration samples at distances 0.3 ... 1.0 from the boundary.
CALIBRATION = LabelledSet(
    np.array([f"c:{i}" for i in range(40)], dtype=object),
    np.stack([np.linspace(0.3, 1.0, 40) * np.where(np.arange(40) % 2, 1, -1), np.zeros(40)], axis=1).astype(
        np.float32
    ),
    (np.arange(40) % 2).astype(np.int64),
)


def line_model() -> nn.Module:
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        net.bias.zero_()
    return net.eval()


class FakePipeline:
    """Risk 1 - m for distance m = |x1| to the boundary; abstains when m < ABSTAIN_BELOW; the radius
    percentile is m; the batch is critical when most samples abstain. Records what it scored."""

    def __init__(self):
        self.calls: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, name, ids, x):
        self.calls[name] = (np.asarray(ids), np.asarray(x))
        m = np.abs(np.asarray(x, np.float64)[:, 0])
        abstained = m < ABSTAIN_BELOW
        risk = np.clip(1.0 - m, 0.0, 1.0)
        sr = pd.DataFrame(
            {
                SAMPLE_ID: list(ids),
                "risk": risk,
                "tier": assign_tiers(risk, POLICY.scoring),
                "abstained": abstained,
            }
        )
        ctx = pd.DataFrame({SAMPLE_ID: list(ids), "method": "smoothing"})
        ctx["radius_percentile"] = np.where(abstained, np.nan, np.clip(m, 0, 1))
        tier = "critical" if abstained.mean() > 0.5 else "low"
        # shuffled rows: the harness aligns by sample_id
        return ScoredSet(
            sr.iloc[::-1].reset_index(drop=True), {"tier": tier, "abstention_rate": abstained.mean()}, ctx
        )


@pytest.fixture(scope="module")
def evaluated():
    pipeline = FakePipeline()
    setting = AttackSetting(clip=None, reference=REFERENCE, seed=3, steps=50)
    result = evaluate_detection(
        line_model(),
        POLICY,
        evaluation=EVALUATION,
        calibration=CALIBRATION,
        setting=setting,
        score=pipeline,
        fractions=(0.25, 0.5, 1.0),
        provenance={"model_sha256": "a" * 64, "policy_sha256": "b" * 64, "reference_sha256": "c" * 64},
    )
    return result, pipeline


def row(frame, family, fraction):
    sel = frame[(frame["family"] == family) & (frame["budget_fraction"] == fraction)]
    assert len(sel) == 1, (family, fraction)
    return sel.iloc[0]


def test_geometry_is_the_exact_distance_to_the_other_class():
    for norm in ("l2", "linf"):
        d = nearest_other_class(EVALUATION.x, EVALUATION.labels, REFERENCE, norm)
        assert d[:40] == pytest.approx(np.full(40, 1.8), abs=1e-6)
        # the wrongly labelled sample's nearest class-0 reference sample is (-1, 1.9)
        expected = np.hypot(0.2, 3.1) if norm == "l2" else 3.1
        assert d[40] == pytest.approx(expected, abs=1e-6)
    assert class_geometry(EVALUATION, REFERENCE) == pytest.approx({"l2": 1.8, "linf": 1.8}, abs=1e-6)


def test_budgets_are_fractions_of_the_geometry(evaluated):
    result, _ = evaluated
    frame = result.frame
    assert list(frame.columns) == list(DETECTION_COLUMNS)
    lp = frame[frame["norm"].notna()]
    assert np.allclose(lp["eps"], lp["budget_fraction"] * 1.8, atol=1e-5)
    assert result.metadata["budgets"]["l2"]["0.5"] == pytest.approx(0.9, abs=1e-6)
    assert result.metadata["geometry"]["median_nearest_other_class"]["linf"] == pytest.approx(1.8, abs=1e-6)
    # shift has no budget; every other family runs at each fraction; 1.0 is reported apart
    assert frame.loc[frame["family"] == "shift", "budget_fraction"].isna().all()
    assert len(frame) == 3 * (len(FAMILIES) - 1) + 1
    assert not frame.loc[frame["budget_fraction"] == 1.0, "scored"].any()
    assert frame.loc[frame["budget_fraction"] <= 0.5, "scored"].all()
    assert frame.loc[frame["family"] == "adaptive_l2", "adaptive"].all()


@pytest.mark.parametrize(
    "family", ["pgd_l2_early", "pgd_l2_deep", "pgd_linf_early", "pgd_linf_deep", "margin_l2"]
)
def test_success_follows_the_boundary_distance(evaluated, family):
    frame = evaluated[0].frame
    # the wrongly classified sample is never counted as attacked
    assert (frame["n_attacked"] == 40).all()
    below = row(frame, family, 0.25)  # eps 0.45 < 0.8: no attack can succeed
    assert below["success_rate"] == 0.0 and below["n_successful"] == 0
    assert np.isnan(below["auroc"]) and np.isnan(below["share_high"])
    beyond = row(frame, family, 0.5)  # eps 0.9 > 0.8: every attack succeeds
    assert beyond["success_rate"] == 1.0 and beyond["n_successful"] == 40
    assert beyond["misclassified_rate"] == pytest.approx(41 / 41)


def test_metrics_of_the_deep_attack_have_closed_forms(evaluated):
    frame = evaluated[0].frame
    r = row(frame, "pgd_l2_deep", 0.5)
    # run to the end of the budget: x1 = +-0.1, inside the abstention band, risk 0.9 (critical)
    assert r["abstention_rate"] == 1.0
    assert r["share_high"] == 1.0 and r["share_medium"] == 1.0
    assert r["auroc"] == 1.0
    assert r["clean_false_alarm"] == 0.0  # clean risk 0.2: tier low
    assert r["batch_tier"] == "critical"
    assert row(frame, "pgd_l2_deep", 0.25)["batch_tier"] == "low"  # x1 = -0.35: certified


def test_certificate_only_score_is_thresholded_on_calibration(evaluated):
    result, pipeline = evaluated
    assert set(pipeline.calls) >= {"calibration", "clean", "pgd_l2_deep@0.5", "shift"}
    assert pipeline.calls["calibration"][0].tolist() == CALIBRATION.ids.tolist()
    # certified calibration samples: 0.15 * (1 - m) with the default radius_rank weight
    m = np.abs(CALIBRATION.x[:, 0].astype(np.float64))
    cal = np.where(m < ABSTAIN_BELOW, 0.66, 0.15 * (1.0 - m))
    thr = conformal_threshold(cal, 0.05)
    meta = result.metadata["certificate_only"]["high"]
    assert meta["value"] == pytest.approx(thr.value) and meta["n_calibration"] == 40 and meta["feasible"]
    r = row(result.frame, "pgd_l2_deep", 0.5)
    assert r["cert_share_high"] == 1.0  # abstained: 1 - 0.4 * 0.85 = 0.66 > threshold
    assert r["cert_clean_false_alarm"] == float(0.15 * (1 - 0.8) > thr.value)
    assert r["cert_auroc"] == 1.0


def test_certificate_only_risk_matches_the_scorer():
    """With every weight but abstention's and radius rank's at 0, the scorer's risk is the
    certificate-only risk."""
    ids = [f"s{i}" for i in range(6)]
    abst = np.array([True, False, False, False, True, False])
    pct = np.array([np.nan, 0.1, 0.5, 0.9, np.nan, 0.0])
    ctx = pd.DataFrame({SAMPLE_ID: ids, "method": "smoothing", "dist_other_class": 1.0, "dist_same_class": 0.5,
                        "share_ref_in_ball": 0.0, "radius_over_dist": np.where(abst, np.nan, 0.4),
                        "radius_percentile": pct}, columns=list(CONTEXT_COLUMNS))  # fmt: skip
    zero = {name: 0.0 for name in POLICY.scoring.weights}
    policy = POLICY.model_copy(
        update={
            "scoring": POLICY.scoring.model_copy(
                update={"weights": {**zero, "abstention": 0.6, "radius_rank": 0.2}}
            )
        }
    )
    sr = score_samples(
        certificates=certificate_frame(ids, abstained=abst),
        predictions=prediction_frame(ids),
        policy=policy,
        context=ctx,
    )
    got = certificate_only_risk(ScoredSet(sr, {"tier": "low"}, ctx), POLICY)
    by_default = certificate_only_risk(ScoredSet(sr, {"tier": "low"}, ctx), policy)
    assert by_default == pytest.approx(sr["risk"].to_numpy())
    # the default policy weighs radius rank 0.15: the same factors, its own weights
    expected = 1 - (1 - 0.6 * abst) * (1 - 0.15 * (1 - np.nan_to_num(pct, nan=0.0)))
    assert got == pytest.approx(expected)


def test_records_are_strict_json_and_carry_the_identity(evaluated):
    result, _ = evaluated
    records = evaluation_records(result)
    assert len(records) == len(result.frame)
    text = json.dumps(records, allow_nan=False)
    assert json.loads(text)[0]["model_sha256"] == "a" * 64
    assert all(r["seed"] == 3 for r in records)
    json.dumps(result.metadata, allow_nan=False)
    assert result.metadata["n_clean"] == 41 and result.metadata["n_clean_correct"] == 40


def test_gaps_name_every_missed_target(evaluated):
    frame = evaluated[0].frame
    gaps = target_gaps(frame)
    # the scorer catches every successful attack here: the budgets where nothing succeeded (0.25)
    # are listed as not measured, and the budget of 1 and the adaptive family set no target
    assert any(
        line.startswith("pgd_l2_deep at 0.25 of the geometry: share_high not measured") for line in gaps
    )
    assert not any("adaptive" in line or "at 1 of the geometry" in line for line in gaps)
    assert not any(line.startswith("pgd_l2_deep at 0.5") for line in gaps)
    table = family_table(frame)
    assert len(table) == len(frame)
    assert table.loc[frame["budget_fraction"] == 1.0, "note"].str.endswith("beyond (class change?)").all()
    assert (table.loc[frame["adaptive"], "note"].str.startswith("adaptive")).all()


def test_unknown_families_and_bad_fractions_are_refused():
    setting = AttackSetting(clip=None, reference=REFERENCE)
    kwargs = {
        "evaluation": EVALUATION,
        "calibration": CALIBRATION,
        "setting": setting,
        "score": FakePipeline(),
    }
    with pytest.raises(InputError, match="unknown famil"):
        evaluate_detection(line_model(), POLICY, families=["pgd_l3"], **kwargs)
    with pytest.raises(InputError, match="fractions"):
        evaluate_detection(line_model(), POLICY, fractions=[0.0], **kwargs)
    with pytest.raises(InputError, match="one length"):
        LabelledSet(np.array(["a"]), np.zeros((2, 2), np.float32), np.zeros(2, np.int64))
