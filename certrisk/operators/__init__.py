"""Thin Airflow operators over certrisk.risk and certrisk.governance, the GovernanceHook, the
``certrisk_dag`` factory, and the model's Assets (``risk_asset``, ``accepted_asset``)."""

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
