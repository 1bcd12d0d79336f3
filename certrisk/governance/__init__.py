"""Persistence of governed records: ``GovernanceStore`` (exactly-once, tamper-evident writes of
runs, evaluations and review decisions on SQLite or PostgreSQL, queries, verification and stored
verify results), the ``RunRecord`` payload, Alembic migrations and the PostgreSQL access tiers,
and ``BatchFacts`` (a run's batch figures as reports state them). Imports ``certrisk.schemas``
only.
"""

from certrisk.governance.chain import VerifyReport
from certrisk.governance.facts import BatchFacts
from certrisk.governance.payload import RunRecord
from certrisk.governance.store import GovernanceStore, WriteResult, mask_url

__all__ = ["BatchFacts", "GovernanceStore", "RunRecord", "VerifyReport", "WriteResult", "mask_url"]
