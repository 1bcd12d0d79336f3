"""The one sample validator: arrays, tensors and frames fail the same way, naming the fault."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from certrisk.risk.inputs import check_samples, sample_matrix, sample_pair
from certrisk.schemas.errors import InputError


def test_arrays_tensors_and_frames_become_the_same_matrix():
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    want = x.reshape(3, 4).astype(np.float64)
    np.testing.assert_array_equal(sample_matrix(x, what="b"), want)
    np.testing.assert_array_equal(sample_matrix(torch.as_tensor(x), what="b"), want)
    frame = pd.DataFrame(want, columns=["a", "b", "c", "d"])
    np.testing.assert_array_equal(sample_matrix(frame[["d", "a", "b", "c"]], what="b", features="abcd"), want)
    assert sample_matrix(np.array([1.0, 2.0]), what="b").shape == (2, 1)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.array([[1.0], [np.inf]]), r"b: NaN or inf in row 1 \(sample_id 's1'\)"),
        (torch.tensor([[1.0], [2.0], [float("nan")]]), r"b: NaN or inf in row 2 \(sample_id 's2'\)"),
        (np.zeros((0, 3)), r"b: empty \(0 rows\)"),
        (np.zeros((2, 0)), "empty dimension"),
        (np.array([["x"], ["y"]]), "numeric"),
        (np.float64(1.0), "shape"),
    ],
)
def test_bad_samples_name_the_fault(data, match):
    with pytest.raises(InputError, match=match):
        sample_matrix(data, what="b", ids=["s0", "s1", "s2"])


def test_frames_name_the_column():
    frame = pd.DataFrame({"a": [1.0, 2.0], "flag": [True, False], "s": ["x", "y"]})
    with pytest.raises(InputError, match="needs the feature names"):
        sample_matrix(frame, what="b")
    with pytest.raises(InputError, match=r"missing feature column\(s\) \['z'\]"):
        sample_matrix(frame, what="b", features=["a", "z"])
    with pytest.raises(InputError, match=r"non-numeric feature column\(s\) \['flag', 's'\]"):
        sample_matrix(frame, what="b", features=["a", "flag", "s"])
    with pytest.raises(InputError, match=r"3 feature column\(s\), but 2 feature name\(s\) given"):
        sample_matrix(np.zeros((2, 3)), what="b", features=["a", "b"])


def test_check_samples_keeps_the_shape_and_skips_integer_tensors():
    check_samples(torch.zeros((2, 3, 4), dtype=torch.int64), what="x")
    with pytest.raises(InputError, match="x: NaN or inf in row 0"):
        check_samples(torch.tensor([[complex(float("inf"), 0)]]), what="x")


def test_sample_pair_names_differing_feature_sets():
    x, y = sample_pair(np.zeros((3, 2)), np.ones((1, 2)))
    assert x.shape == (3, 2) and y.shape == (1, 2)
    with pytest.raises(InputError, match="feature sets differ: reference has 2 features, batch has 3"):
        sample_pair(np.zeros((3, 2)), np.ones((1, 3)))
    with pytest.raises(InputError, match=r"batch: NaN or inf in row 0 \(sample_id 'q'\)"):
        sample_pair(np.zeros((3, 2)), np.full((1, 2), np.nan), batch_ids=["q"])
