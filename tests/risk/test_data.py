import itertools

import numpy as np
import pandas as pd
import pytest

from certrisk.risk.data import batch_sha256, load_batch, plan_shards, validate_frame
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import DataSpec

SPEC = DataSpec(reference="unused.parquet")


def frame(n=5, d=4, ids=True):
    rng = np.random.default_rng(0)
    f = pd.DataFrame(rng.random((n, d)), columns=[f"f{i}" for i in range(d)])
    if ids:
        f.insert(0, "sample_id", [f"s{i}" for i in range(n)])
    return f


def test_valid_frame_roundtrip():
    b = validate_frame(frame(), spec=SPEC, n_features=4, batch_id="b")
    assert b.ids.tolist() == [f"s{i}" for i in range(5)]
    assert b.features.dtype == np.float32 and b.features.shape == (5, 4)
    assert b.inputs((2, 2)).shape == (5, 2, 2)
    assert list(b.to_frame().columns) == ["sample_id", "f0", "f1", "f2", "f3"]


def test_ids_derived_from_batch_and_row():
    b = validate_frame(frame(ids=False), spec=SPEC, n_features=4, batch_id="day1")
    assert b.ids.tolist()[:2] == ["day1:0", "day1:1"]


def test_nan_names_row_and_sample():
    f = frame()
    f.loc[3, "f2"] = np.nan
    with pytest.raises(InputError, match=r"row 3 \(sample_id 's3'\)"):
        validate_frame(f, spec=SPEC, n_features=4, batch_id="b", source="batch.parquet")


def test_inf_rejected():
    f = frame()
    f.loc[1, "f0"] = np.inf
    with pytest.raises(InputError, match="NaN or inf in row 1"):
        validate_frame(f, spec=SPEC, n_features=4, batch_id="b")


def test_empty_batch():
    with pytest.raises(InputError, match="empty batch"):
        validate_frame(frame().iloc[:0], spec=SPEC, n_features=4, batch_id="b", source="x.parquet")


def test_duplicate_ids_named():
    f = frame()
    f.loc[4, "sample_id"] = "s1"
    with pytest.raises(InputError, match=r"duplicate sample_id values, e.g. \['s1'\] in rows \[1, 4\]"):
        validate_frame(f, spec=SPEC, n_features=4, batch_id="b")


def test_wrong_feature_count_and_names():
    with pytest.raises(InputError, match="3 feature columns, but the model's input shape needs 4"):
        validate_frame(frame(d=3), spec=SPEC, n_features=4, batch_id="b")
    with pytest.raises(InputError, match=r"missing \['g0'\], unexpected \['f0'\]"):
        validate_frame(frame(), spec=SPEC, n_features=4, batch_id="b", feature_names=("g0", "f1", "f2", "f3"))


def test_non_numeric_column():
    f = frame()
    f["f1"] = "x"
    with pytest.raises(InputError, match=r"non-numeric feature column\(s\) \['f1'\]"):
        validate_frame(f, spec=SPEC, n_features=4, batch_id="b")


def test_files(tmp_path):
    p = tmp_path / "b.parquet"
    frame().to_parquet(p)
    assert len(load_batch(p, spec=SPEC, n_features=4)) == 5
    with pytest.raises(InputError, match="not found"):
        load_batch(tmp_path / "missing.parquet", spec=SPEC, n_features=4)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a readable parquet file"):
        load_batch(bad, spec=SPEC, n_features=4)
    npz = tmp_path / "b.npz"
    np.savez(npz, X=np.ones((3, 2, 2), dtype=np.float32))
    assert load_batch(npz, spec=SPEC, n_features=4).ids.tolist() == ["b:0", "b:1", "b:2"]
    pickled = tmp_path / "p.npz"
    np.savez(pickled, X=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="pickled data is refused"):
        load_batch(pickled, spec=SPEC, n_features=4)
    csv = tmp_path / "b.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="unsupported batch format '.csv'"):
        load_batch(csv, spec=SPEC, n_features=4)


def test_hash_changes_with_content():
    a = validate_frame(frame(), spec=SPEC, n_features=4, batch_id="b")
    f = frame()
    f.loc[0, "f0"] += 1e-3
    b = validate_frame(f, spec=SPEC, n_features=4, batch_id="b")
    assert batch_sha256(a) == batch_sha256(validate_frame(frame(), spec=SPEC, n_features=4, batch_id="b"))
    assert batch_sha256(a) != batch_sha256(b)


@pytest.mark.parametrize("n,size", [(1, 512), (397, 512), (397, 100), (1000, 64), (1025, 256), (10, 3)])
def test_plan_shards_cover_in_order(n, size):
    shards = plan_shards(n, size)
    assert shards[0]["start"] == 0 and shards[-1]["stop"] == n
    for a, b in itertools.pairwise(shards):
        assert a["stop"] == b["start"]
    sizes = [s["stop"] - s["start"] for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert max(sizes) <= max(size, min(64, n))
    assert [s["index"] for s in shards] == list(range(len(shards)))


def test_plan_shards_keeps_shards_large_enough():
    assert len(plan_shards(200, 3)) == 4  # at least 64 samples per shard, not 67 shards of 3
    with pytest.raises(InputError):
        plan_shards(0, 10)
