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


# ------------------------------------------------------------------ issue 14: input edge cases


def test_values_beyond_float32_are_refused_naming_row_and_column():
    f = frame()
    f.loc[2, "f3"] = -1e39
    with pytest.raises(
        InputError, match=r"value -1e\+39 in column 'f3', row 2 \(sample_id 's2'\) is beyond float32"
    ):
        validate_frame(f, spec=SPEC, n_features=4, batch_id="b", source="batch.parquet")
    f.loc[2, "f3"] = 3.4e38  # inside the range: kept, finite in float32
    assert np.isfinite(validate_frame(f, spec=SPEC, n_features=4, batch_id="b").features).all()


def test_label_column_is_kept_out_of_the_features_and_the_staged_frame(tmp_path):
    f = frame().assign(label=[0, 1, 0, 1, 1])
    b = validate_frame(f, spec=SPEC, n_features=4, batch_id="b", feature_names=("f0", "f1", "f2", "f3"))
    assert b.feature_names == ("f0", "f1", "f2", "f3") and b.labels.tolist() == [0, 1, 0, 1, 1]
    staged = b.to_frame()
    assert "label" not in staged.columns and b.to_frame(labels=True)["label"].tolist() == [0, 1, 0, 1, 1]
    # what the pipeline's tasks do with the staged frame: every column but sample_id is a feature
    unlabelled = SPEC.model_copy(update={"label_column": None})
    again = validate_frame(
        staged,
        spec=unlabelled,
        n_features=4,
        batch_id="b",
        feature_names=tuple(c for c in staged if c != "sample_id"),
    )
    assert np.array_equal(again.features, b.features)


def test_npz_feature_names_and_positional_matching(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    named = tmp_path / "named.npz"
    np.savez(named, X=x, feature_names=np.array(["d", "c", "b", "a"]), y=np.array([1, 0, 1]))
    b = load_batch(named, spec=SPEC, n_features=4, feature_names=("a", "b", "c", "d"))
    assert b.feature_names == ("a", "b", "c", "d") and b.features[0].tolist() == [3.0, 2.0, 1.0, 0.0]
    assert b.labels.tolist() == [1, 0, 1]
    plain = tmp_path / "plain.npz"
    np.savez(plain, X=x)
    b = load_batch(plain, spec=SPEC, n_features=4, feature_names=("a", "b", "c", "d"))
    assert b.feature_names == ("a", "b", "c", "d") and b.features[0].tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(InputError, match="the npz archive has 4 features per sample but 3 are expected"):
        load_batch(plain, spec=SPEC, n_features=3, feature_names=("a", "b", "c"))
    bad = tmp_path / "bad_names.npz"
    np.savez(bad, X=x, feature_names=np.array(["a", "a", "b", "c"]))
    with pytest.raises(InputError, match="'feature_names' must hold 4 distinct strings"):
        load_batch(bad, spec=SPEC, n_features=4)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"X": np.float32(1.0)}, r"npz array 'X' is 0-d \(one value\)"),
        (
            {"X": np.ones((3, 4)), "sample_id": np.array(["a", "b"])},
            r"array 'sample_id' has shape \(2,\) but 'X' has 3 rows",
        ),
        (
            {"X": np.ones((3, 4)), "y": np.array([0, 1, 0, 1])},
            r"array 'y' has shape \(4,\) but 'X' has 3 rows",
        ),
        ({"Z": np.ones((3, 4))}, r"npz archive has no array 'X' \(found \['Z'\]\)"),
        (
            {"X": np.ones((1, 4))},
            r"1 row; a batch needs at least 2 \(its drift tests compare distributions\)",
        ),
    ],
    ids=["0-d", "ids-length", "labels-length", "no-X", "one-row"],
)
def test_npz_shapes_fail_in_validate_with_what_is_wrong(tmp_path, arrays, message):
    path = tmp_path / "b.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message) as info:
        load_batch(path, spec=SPEC, n_features=4)
    assert "pickled" not in str(info.value)


def test_one_row_parquet_is_refused_at_validate(tmp_path):
    path = tmp_path / "one.parquet"
    frame(n=1).to_parquet(path)
    with pytest.raises(InputError, match="1 row; a batch needs at least 2"):
        load_batch(path, spec=SPEC, n_features=4)
