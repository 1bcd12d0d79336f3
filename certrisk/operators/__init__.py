"""Thin Airflow operators over certrisk.risk and certrisk.governance, the GovernanceHook, the
``certrisk_dag`` factory, and the model's Assets (``risk_asset``, ``accepted_asset``).

Names load on first use (PEP 562): ``import certrisk.operators.links`` (the plugin does, in every
Airflow process that loads plugins) must not import every operator, and torch with them.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names, for linters and readers; they load on first use
    from certrisk.operators.certify import CertifyOperator, MergeCertificatesOperator
    from certrisk.operators.evaluate import EvaluateOperator
    from certrisk.operators.factory import certrisk_dag
    from certrisk.operators.governance import (
        GovernanceWriteOperator,
        RiskAlertOperator,
        accepted_asset,
        certrisk_asset,
        risk_asset,
    )
    from certrisk.operators.hooks import GovernanceHook
    from certrisk.operators.report import ComplianceReportOperator
    from certrisk.operators.review import BatchReviewOperator, RecordReviewOperator
    from certrisk.operators.score import RiskScoreOperator
    from certrisk.operators.signals import ContextOperator, DriftOperator, RuleCheckOperator
    from certrisk.operators.validate import PlanShardsOperator, ValidateBatchOperator

_HOME = {
    "CertifyOperator": "certify", "MergeCertificatesOperator": "certify", "EvaluateOperator": "evaluate",
    "certrisk_dag": "factory", "GovernanceWriteOperator": "governance", "RiskAlertOperator": "governance",
    "accepted_asset": "governance", "certrisk_asset": "governance", "risk_asset": "governance",
    "GovernanceHook": "hooks", "ComplianceReportOperator": "report", "BatchReviewOperator": "review",
    "RecordReviewOperator": "review", "RiskScoreOperator": "score", "ContextOperator": "signals",
    "DriftOperator": "signals", "RuleCheckOperator": "signals", "PlanShardsOperator": "validate",
    "ValidateBatchOperator": "validate",
}  # fmt: skip
__all__ = [
    "BatchReviewOperator",
    "CertifyOperator",
    "ComplianceReportOperator",
    "ContextOperator",
    "DriftOperator",
    "EvaluateOperator",
    "GovernanceHook",
    "GovernanceWriteOperator",
    "MergeCertificatesOperator",
    "PlanShardsOperator",
    "RecordReviewOperator",
    "RiskAlertOperator",
    "RiskScoreOperator",
    "RuleCheckOperator",
    "ValidateBatchOperator",
    "accepted_asset",
    "certrisk_asset",
    "certrisk_dag",
    "risk_asset",
]


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'certrisk.operators' has no attribute {name!r}")
    value = getattr(import_module(f"certrisk.operators.{_HOME[name]}"), name)
    globals()[name] = value
    return value
