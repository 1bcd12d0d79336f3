"""Thin Airflow operators over certrisk.risk and certrisk.governance, the GovernanceHook, and the
``certrisk_dag`` factory."""

from certrisk.operators.certify import CertifyOperator, MergeCertificatesOperator
from certrisk.operators.evaluate import EvaluateOperator
from certrisk.operators.factory import certrisk_dag
from certrisk.operators.governance import GovernanceWriteOperator, RiskAlertOperator
from certrisk.operators.hooks import GovernanceHook
from certrisk.operators.report import ComplianceReportOperator
from certrisk.operators.score import RiskScoreOperator
from certrisk.operators.signals import ContextOperator, DriftOperator, RuleCheckOperator
from certrisk.operators.validate import PlanShardsOperator, ValidateBatchOperator

__all__ = [
    "CertifyOperator",
    "ComplianceReportOperator",
    "ContextOperator",
    "DriftOperator",
    "EvaluateOperator",
    "GovernanceHook",
    "GovernanceWriteOperator",
    "MergeCertificatesOperator",
    "PlanShardsOperator",
    "RiskAlertOperator",
    "RiskScoreOperator",
    "RuleCheckOperator",
    "ValidateBatchOperator",
    "certrisk_dag",
]
