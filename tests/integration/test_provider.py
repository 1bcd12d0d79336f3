"""certrisk as an Airflow provider and plugin, as Airflow itself sees them: the CLI lists both,
the connection type resolves to the hook, and the connection form's metadata (what the UI's
``/ui/connections/hook_meta`` endpoint serves) carries certrisk's labels and extra fields.
The two tests that start the ``airflow`` command are marked slow."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def _airflow_json(*args: str):
    out = subprocess.run(
        [AIRFLOW, *args, "-o", "json"],
        check=False,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # Log lines may precede the JSON document, which is the line that opens a list of objects.
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("[{"))
    return json.loads(line)


@pytest.mark.slow
def test_providers_list_shows_certrisk():
    import certrisk

    providers = {p["package_name"]: p for p in _airflow_json("providers", "list")}
    assert "certrisk" in providers
    assert providers["certrisk"]["version"] == certrisk.__version__


@pytest.mark.slow
def test_plugins_lists_certrisk_with_its_dashboard_and_macros():
    plugins = {p["name"]: p for p in _airflow_json("plugins")}
    assert "certrisk" in plugins, sorted(plugins)
    plugin = plugins["certrisk"]
    assert any(app.get("url_prefix") == "/certrisk" for app in plugin["fastapi_apps"]), plugin["fastapi_apps"]
    assert any("certrisk_home" in str(m) for m in plugin["macros"]), plugin["macros"]


def test_provider_info_names_importable_hook_operators_and_plugin():
    from certrisk.provider import get_provider_info

    info = get_provider_info()
    (conn,) = info["connection-types"]
    assert conn["connection-type"] == "certrisk_governance"
    module, _, name = conn["hook-class-name"].rpartition(".")
    hook_cls = getattr(importlib.import_module(module), name)
    assert hook_cls.conn_type == "certrisk_governance"
    assert info["hook-class-names"] == [conn["hook-class-name"]]
    operator_modules = [m for group in info["operators"] for m in group["python-modules"]]
    for mod in operator_modules:
        importlib.import_module(mod)
    from airflow.sdk import BaseOperator

    import certrisk.operators as ops

    for name in (
        "CertifyOperator",
        "RuleCheckOperator",
        "DriftOperator",
        "RiskScoreOperator",
        "GovernanceWriteOperator",
        "ComplianceReportOperator",
    ):
        cls = getattr(ops, name)
        assert issubclass(cls, BaseOperator)
        assert cls.__module__ in operator_modules, f"{name} lives in {cls.__module__}, not listed"
    module, _, name = info["plugins"][0]["plugin-class"].rpartition(".")
    assert getattr(importlib.import_module(module), name).name == "certrisk"


def test_providers_manager_resolves_the_connection_type_to_the_hook():
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    assert "certrisk" in pm.providers
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # ProvidersManager.hooks: deprecated for task code, still the core view
        hook = pm.hooks["certrisk_governance"]
    assert hook.hook_class_name == "certrisk.operators.hooks.GovernanceHook"
    assert hook.connection_id_attribute_name == "certrisk_conn_id"
    assert hook.connection_testable


def test_connection_form_shows_certrisk_labels_and_extra_fields():
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    metas = {m.connection_type: m for m in HookMetaService.hook_meta_data()}
    meta = metas["certrisk_governance"]
    assert meta.hook_name == "certrisk governance DB"
    fields = meta.standard_fields
    assert fields.host.title == "Host or full SQLAlchemy URL"
    assert fields.url_schema.title == "Database"
    assert fields.port.placeholder == "5432"
    assert set(meta.extra_fields) == {"url", "dialect"}
    assert meta.extra_fields["dialect"]["value"] == "postgresql+psycopg"
