"""Airflow provider metadata (entry point group ``apache_airflow_provider``)."""

from __future__ import annotations

import certrisk


def get_provider_info() -> dict:
    return {
        "package-name": "certrisk",
        "name": "certrisk",
        "description": "Certification-aware AI risk management: robustness certificates, rules, drift and "
        "composite risk recorded in a tamper-evident governance database mapped to the NIST AI RMF.",
        "versions": [certrisk.__version__],
        "connection-types": [
            {
                "connection-type": "certrisk_governance",
                "hook-class-name": "certrisk.operators.hooks.GovernanceHook",
            }
        ],
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
                ],
            }
        ],
        "hooks": [{"integration-name": "certrisk", "python-modules": ["certrisk.operators.hooks"]}],
        "plugins": [{"name": "certrisk", "plugin-class": "certrisk.plugin.CertriskPlugin"}],
    }
