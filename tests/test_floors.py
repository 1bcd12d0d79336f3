"""DESIGN.md's floors: risk/ and schemas/ stay usable without Airflow or the database layer.

Every module under certrisk/risk and certrisk/schemas is imported in a fresh interpreter (found
on disk, so a new module is covered without editing this file), then sys.modules is inspected.
"""

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "certrisk"


def _modules_of(room: str) -> list[str]:
    """Dotted names of every module of a room (``risk``, ``schemas``), packages included."""
    names = []
    for path in sorted((PACKAGE / room).rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def _modules_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(out.stdout.split())


def test_the_rooms_have_modules():
    assert {"certrisk.risk", "certrisk.risk.certify", "certrisk.risk.context"} <= set(_modules_of("risk"))
    assert {"certrisk.schemas.policy", "certrisk.schemas.columns"} <= set(_modules_of("schemas"))


def test_risk_imports_no_airflow_or_governance():
    mods = _modules_after("import " + ", ".join(_modules_of("risk")))
    assert not {m for m in mods if m == "airflow" or m.startswith("airflow.")}
    assert not {
        m for m in mods if m.startswith(("certrisk.governance", "certrisk.operators", "certrisk.reports"))
    }


def test_schemas_import_nothing_else_of_certrisk():
    mods = _modules_after("import " + ", ".join(_modules_of("schemas")))
    others = {m for m in mods if m.startswith("certrisk.") and not m.startswith("certrisk.schemas")}
    assert not others
