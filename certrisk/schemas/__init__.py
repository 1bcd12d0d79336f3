"""Contracts shared by every room: errors, enums, column specs, policy models, settings, the
NIST AI RMF catalog and the database tables. Imports nothing else of certrisk."""

from certrisk.schemas.enums import Edition, Method, Norm, Severity, Tier
from certrisk.schemas.errors import (
    CertriskError,
    InputError,
    ModelLoadError,
    PolicyError,
    RecordConflictError,
    RunNotFoundError,
    StoreError,
    StoreUnavailableError,
    VerificationError,
)

__all__ = [
    "CertriskError",
    "Edition",
    "InputError",
    "Method",
    "ModelLoadError",
    "Norm",
    "PolicyError",
    "RecordConflictError",
    "RunNotFoundError",
    "Severity",
    "StoreError",
    "StoreUnavailableError",
    "Tier",
    "VerificationError",
]
