"""DESIGN.md's floors: risk/ and schemas/ stay usable without Airflow or the database layer."""

import subprocess
import sys


def _modules_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_risk_imports_no_airflow_or_governance():
    mods = _modules_after(
        "import certrisk.risk, certrisk.risk.data, certrisk.risk.models, certrisk.risk.audit, "
        "certrisk.risk.certify, certrisk.risk.rules, certrisk.risk.drift, certrisk.risk.context, certrisk.risk.score"
    )
    assert not {m for m in mods if m == "airflow" or m.startswith("airflow.")}
    assert not {
        m for m in mods if m.startswith(("certrisk.governance", "certrisk.operators", "certrisk.reports"))
    }


def test_schemas_import_nothing_else_of_certrisk():
    mods = _modules_after(
        "import certrisk.schemas, certrisk.schemas.policy, certrisk.schemas.rmf, certrisk.schemas.columns"
    )
    others = {m for m in mods if m.startswith("certrisk.") and not m.startswith("certrisk.schemas")}
    assert not others
