"""What importing the plugin costs every Airflow process that loads plugins (api-server,
scheduler, workers): the dashboard and the extra link, never torch or the operators."""

from __future__ import annotations

import json
import subprocess
import sys


def test_loading_the_plugin_imports_neither_torch_nor_the_operators():
    code = (
        "import json, sys, certrisk.plugin; "
        "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('certrisk.operators.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["certrisk.operators.links"]


def test_operator_names_still_import_from_the_package():
    from certrisk.operators import CertifyOperator, certrisk_dag
    from certrisk.operators.certify import CertifyOperator as direct

    assert CertifyOperator is direct and callable(certrisk_dag)
