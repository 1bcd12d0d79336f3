"""CSV injection: text cells a spreadsheet would run are neutralised; numbers stay numbers."""

from __future__ import annotations

import pandas as pd

from certrisk.schemas.spreadsheet import FORMULA_PREFIXES, safe_cell, safe_frame


def test_every_formula_prefix_is_neutralised():
    for prefix in FORMULA_PREFIXES:
        assert safe_cell(prefix + "HYPERLINK(1)") == "'" + prefix + "HYPERLINK(1)"
    assert safe_cell("sample-1") == "sample-1"
    assert safe_cell(-3.5) == -3.5
    assert safe_cell(None) is None


def test_frame_text_columns_only():
    frame = pd.DataFrame({"sample_id": ['=HYPERLINK("http://x")', "ok"], "risk": [-0.0, 0.5]})
    frame["tier"] = pd.Series(["@SUM(A1)", "low"], dtype="string")
    out = safe_frame(frame)
    assert out["sample_id"].tolist() == ['\'=HYPERLINK("http://x")', "ok"]
    assert out["tier"].tolist() == ["'@SUM(A1)", "low"]
    assert out["risk"].tolist() == [-0.0, 0.5]
    assert frame["sample_id"][0].startswith("=")  # the input is not modified
