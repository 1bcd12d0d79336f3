"""The column-at-a-time canonical serialization equals the documented one: sha256 of repr(row)."""

from __future__ import annotations

import hashlib

import numpy as np
from records import make_record

from certrisk.governance.chain import column_reprs, row_digest, row_digests_of
from certrisk.governance.payload import prepare
from certrisk.schemas.columns import CERTIFICATE_COLUMNS

FLOATS = [
    0.0,
    -0.0,
    1e16,
    1e-5,
    1e-4,
    0.1,
    1 / 3,
    float("inf"),
    -float("inf"),
    float("nan"),
    None,
    5e-324,
    1.7976931348623157e308,
    123456789012345678.0,
    0.25,
]
STRINGS = ["a", "it's", 'say "x"', "both ' \"", "tab\t", "nl\n", "back\\", "é ünï", "\x00", None, "\u2028"]


def _reference(row) -> str:
    return hashlib.sha256(repr(row).encode("utf-8")).hexdigest()[:32]


def test_column_reprs_equal_repr_for_every_dtype():
    assert column_reprs(FLOATS, "float64") == [repr(v) for v in FLOATS]
    assert column_reprs(STRINGS, "string") == [repr(v) for v in STRINGS]
    lists = [["a", "b"], [], None, ["it's"], ["a", "b"], [1, 2], [["nested"]]]
    assert column_reprs(lists, "object") == [repr(v) for v in lists]
    assert column_reprs([0, -1, 2**62, None], "int64") == ["0", "-1", repr(2**62), "None"]
    assert column_reprs([True, False, None], "bool") == ["True", "False", "None"]
    # a tampered non-float in a float column is serialized as what it is
    assert column_reprs(["x", 1.5, None], "float64") == ["'x'", "1.5", "None"]
    rng = np.random.default_rng(0)
    wide = rng.standard_normal(20_000) * 10.0 ** rng.integers(-300, 300, 20_000)
    assert column_reprs(wide, "float64") == list(map(repr, wide.tolist()))
    masked = column_reprs(np.array([1.5, np.nan, 0.0]), "float64", none_mask=np.array([False, True, False]))
    assert masked == ["1.5", "None", "0.0"]


def test_row_digests_equal_sha256_of_repr_of_the_row():
    rows = list(zip(FLOATS, STRINGS + [None] * 4, [1, 2, 3] * 5, strict=True))
    cols = [column_reprs([r[i] for r in rows], d) for i, d in enumerate(["float64", "string", "int64"])]
    assert row_digests_of(cols) == [_reference(r) for r in rows]
    assert row_digest(("only",)) == _reference(("only",))
    assert row_digest((0.1, "x", None, ["a"])) == _reference((0.1, "x", None, ["a"]))


def test_prepared_digests_equal_the_per_row_definition():
    prepared = prepare(make_record("run-1", 300))
    table = prepared.tables["certificate"]
    rows = list(zip(*table.values, strict=True))
    assert table.digests == [_reference(r) for r in rows]
    assert table.columns == tuple(CERTIFICATE_COLUMNS)
    # canonical NaN is None, in the values and in their reprs
    eps = table.values[table.columns.index("eps")]
    assert None in eps and all(v is None or v == 0.1 for v in eps)
