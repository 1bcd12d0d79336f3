"""Neighbour disagreement on data whose geometry is known."""

from __future__ import annotations

import numpy as np
import pytest

from certrisk.risk.disagreement import class_distances, disagreement_factor, disagreement_score
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
