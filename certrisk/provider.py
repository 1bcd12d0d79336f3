"""Airflow provider metadata (entry point group ``apache_airflow_provider``).

The connection form's metadata (field labels, hint texts, extra fields) is declared here, as
Airflow 3.2+ expects (``ui-field-behaviour`` and ``conn-fields``): the hook-method route
(``get_ui_field_behaviour``) is deprecated and ignored when wtforms is not installed, which is
the default for Airflow 3 without the FAB provider, so the form would show no labels at all.
"""

from __future__ import annotations

import certrisk

GOVERNANCE_CONNECTION = {
    "connection-type": "certrisk_governance",
    "hook-class-name": "certrisk.operators.hooks.GovernanceHook",
    "hook-name": "certrisk governance DB",
    "ui-field-behaviour": {
        "hidden-fields": [],
        "relabeling": {"host": "Host or full SQLAlchemy URL", "schema": "Database"},
        "placeholders": {
            "host": "db.internal or postgresql+psycopg://user@db/certrisk",
            "schema": "certrisk",
            "port": "5432",
        },
    },
    "conn-fields": {
        "url": {
            "label": "SQLAlchemy URL",
            "description": "A full URL instead of the parts, e.g. postgresql+psycopg://writer@db/certrisk "
            "(put the password in the Password field or a secrets backend).",
            "schema": {"type": ["string", "null"]},
        },
        "dialect": {
            "label": "SQLAlchemy dialect",
            "description": "Driver used with host/schema/login/port (default postgresql+psycopg).",
            "schema": {"type": ["string", "null"], "default": "postgresql+psycopg"},
        },
    },
}


def get_provider_info() -> dict:
    return {
        "package-name": "certrisk",
        "name": "certrisk",
        "description": "Certification-aware AI risk management: robustness certificates, rules, drift and "
        "composite risk recorded in a tamper-evident governance database mapped to the NIST AI RMF.",
        "versions": [certrisk.__version__],
        "connection-types": [GOVERNANCE_CONNECTION],
        "hook-class-names": ["certrisk.operators.hooks.GovernanceHook"],
        "operators": [
            {
                "integration-name": "certrisk",
                "python-modules": [
                    "certrisk.operators.validate",
                    "certrisk.operators.certify",
                    "certrisk.operators.signals",
                    "certrisk.operators.score",
                    "certrisk.operators.governance",
                    "certrisk.operators.report",
                    "certrisk.operators.evaluate",
                ],
            }
        ],
        "hooks": [{"integration-name": "certrisk", "python-modules": ["certrisk.operators.hooks"]}],
        "plugins": [{"name": "certrisk", "plugin-class": "certrisk.plugin.CertriskPlugin"}],
    }
