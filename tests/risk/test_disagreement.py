"""Neighbour disagreement on data whose geometry is known."""

from __future__ import annotations

import numpy as np
import pytest

from certrisk.risk.disagreement import (
    class_distances,
    disagreement_factor,
    disagreement_score,
    neighbour_scores,
    signal_frame,
)
from certrisk.schemas.columns import ABSTAIN, SIGNAL_COLUMNS
from certrisk.schemas.errors import InputError


def _two_lines():
    """Class 0 at x = 0, class 1 at x = 10, ten points each along y."""
    ys = np.arange(10.0)
    index = np.r_[np.c_[np.zeros(10), ys], np.c_[np.full(10, 10.0), ys]]
    labels = np.r_[np.zeros(10, int), np.ones(10, int)]
    return index, labels


def test_distances_by_hand():
    index, labels = _two_lines()
    q = np.array([[1.0, 0.0], [1.0, 0.0]])
    same, other = class_distances(q, index, labels, np.array([0, 1]), k=1)
    assert same.tolist() == pytest.approx([1.0, 9.0])
    assert other.tolist() == pytest.approx([9.0, 1.0])
    s = disagreement_score(same, other)
    assert s.tolist() == pytest.approx([0.1, 0.9])
    # linf and l1 norms
    same_inf, _ = class_distances(np.array([[1.0, 0.5]]), index, labels, np.array([0]), k=1, norm="linf")
    assert same_inf[0] == pytest.approx(1.0)
    same_l1, _ = class_distances(np.array([[1.0, 0.5]]), index, labels, np.array([0]), k=1, norm="l1")
    assert same_l1[0] == pytest.approx(1.5)


def test_an_attacked_point_disagrees_and_a_clean_one_does_not():
    index, labels = _two_lines()
    clean_cal = np.c_[np.full(9, 0.5), np.arange(9) + 0.5]  # class 0 samples, predicted 0
    cal = disagreement_score(*class_distances(clean_cal, index, labels, np.zeros(9, int), k=3))
    clean = disagreement_score(*class_distances(np.array([[0.4, 3.0]]), index, labels, np.array([0]), k=3))
    attacked = disagreement_score(*class_distances(np.array([[2.0, 3.0]]), index, labels, np.array([1]), k=3))
    assert disagreement_factor(attacked, cal)[0] == pytest.approx(1 - 1 / 10)
    assert disagreement_factor(clean, cal)[0] < 0.5


def test_edge_cases():
    assert disagreement_score(np.array([0.0, np.inf]), np.array([0.0, 1.0])).tolist() == [0.5, 1.0]
    index, labels = _two_lines()
    with pytest.raises(InputError, match="two classes"):
        class_distances(np.zeros((1, 2)), index[:10], labels[:10], np.array([0]))
    with pytest.raises(InputError, match="features"):
        class_distances(np.zeros((1, 3)), index, labels, np.array([0]))


def test_signal_frame_on_known_geometry():
    """Clean points near class 0 predicted 0 score low; a point moved one unit towards class 1 and
    predicted 1 keeps class-0 neighbours: its score is beyond 1/2 and every clean calibration
    score, so its factor is 1 while the clean ones sit at 0 (below the tail) and its p-value is
    the smallest a conformal p-value of 9 calibration scores can be."""
    index, labels = _two_lines()
    cal = neighbour_scores(np.c_[np.full(9, 0.5), np.arange(9) + 0.5], np.zeros(9, int), index, labels, k=3)
    queries = np.array([[0.3, 4.0], [2.0, 3.0], [9.7, 4.0]])
    scores = neighbour_scores(queries, np.array([0, 1, 1]), index, labels, k=3)
    assert scores[0] < cal.min() and scores[2] < cal.min() and 0.5 < scores[1]
    frame = signal_frame("neighbours", ["clean", "attacked", "other"], scores, cal, tail=0.2)
    assert list(frame.columns) == list(SIGNAL_COLUMNS) and (frame["signal"] == "neighbours").all()
    f = dict(zip(frame["sample_id"], frame["factor"], strict=True))
    assert f["clean"] == 0.0 and f["other"] == 0.0
    assert f["attacked"] == 1.0  # beyond the boundary 1/2: its neighbours contradict the prediction
    # between the clean tail quantile q and 1/2 the factor rises linearly
    q = np.sort(cal)[7]  # the ceil(10 * 0.8) = 8th of the 9 calibration scores
    mid = signal_frame("neighbours", ["m"], np.array([(q + 0.5) / 2]), cal, tail=0.2)
    assert mid["factor"].iloc[0] == pytest.approx(0.5)
    p = dict(zip(frame["sample_id"], frame["p_value"], strict=True))
    assert p["attacked"] == pytest.approx(1 / 10)  # beyond all 9 calibration scores: the smallest p
    np.testing.assert_allclose(frame["score"], scores)
    # an abstained sample with no class to compare (ABSTAIN) disagrees completely
    s = neighbour_scores(np.array([[0.0, 0.0]]), np.array([ABSTAIN]), index, labels, k=3)
    assert s.tolist() == [1.0]
    assert signal_frame("neighbours", ["x"], s, cal, tail=0.2)["factor"].tolist() == [1.0]
    with pytest.raises(InputError, match="1 score"):
        signal_frame("neighbours", ["a", "b"], s, cal, tail=0.2)
