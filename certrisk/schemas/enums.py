"""Enumerations used across rooms. Values are the strings stored in artifacts and the database."""

from __future__ import annotations

from enum import Enum


class _Ordered(str, Enum):
    """A string enum whose members compare by declaration order."""

    @classmethod
    def ordered(cls) -> list:
        return list(cls)

    @property
    def rank(self) -> int:
        return list(type(self)).index(self)

    def __lt__(self, other):  # type: ignore[override]
        if type(other) is not type(self):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other):  # type: ignore[override]
        if type(other) is not type(self):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other):  # type: ignore[override]
        if type(other) is not type(self):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other):  # type: ignore[override]
        if type(other) is not type(self):
            return NotImplemented
        return self.rank >= other.rank

    def __str__(self) -> str:
        return self.value


class Tier(_Ordered):
    """Risk tier of a sample or a batch, from least to most."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Severity(_Ordered):
    """Severity of a rule (expectation). NONE marks a sample that failed no rule."""

    NONE = "none"
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Norm(str, Enum):
    """lp norms a radius can be stated in."""

    L1 = "l1"
    L2 = "l2"
    LINF = "linf"

    @property
    def p(self) -> float:
        return {"l1": 1.0, "l2": 2.0, "linf": float("inf")}[self.value]

    def __str__(self) -> str:
        return self.value


class Method(str, Enum):
    """Certification methods."""

    SMOOTHING = "smoothing"
    IBP = "ibp"
    LIPSCHITZ = "lipschitz"
    CROWN = "crown"
    CROWN_IBP = "crown-ibp"

    def __str__(self) -> str:
        return self.value


class Edition(str, Enum):
    """Report editions: engineers see raw certificates, compliance sees tiers and aggregates."""

    ENGINEER = "engineer"
    COMPLIANCE = "compliance"

    def __str__(self) -> str:
        return self.value
