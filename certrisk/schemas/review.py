"""The policy's ``review`` section: which batches a person reviews, who, and what a silence means.

With a ``review`` section, ``certrisk_dag`` adds an Airflow human-in-the-loop step after the
governance write. A batch whose tier reaches ``at_tier`` waits for a decision from the assigned
users (approve, reject or escalate, with a comment); the decision is written as an append-only
review record covered by the audit chain (NIST AI RMF MANAGE 1.3, MANAGE 2.4, GOVERN 3.2,
MEASURE 3.3). A rejected batch fails the run's outcome. With no decision within ``timeout_hours``
the ``default_outcome`` is recorded, by the system rather than a person.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from certrisk.schemas.enums import Tier
from certrisk.schemas.rmf import EVIDENCE
from certrisk.schemas.scoring import StrictSpec

#: What a reviewer may decide. "escalate" keeps the batch out of the accepted record and asks for
#: a decision above the reviewer's (the run fails like a rejection, the record says escalated).
DECISIONS = ("approve", "reject", "escalate")

#: The RMF evidence kind of a review record (``certrisk.schemas.rmf.EVIDENCE``).
REVIEW_EVIDENCE = "human_review"

#: A decision in words, as reports, ``certrisk runs`` and the dashboard state it ("approved by alice").
DECISION_WORDS = {"approve": "approved", "reject": "rejected", "escalate": "escalated"}

#: Where a recorded decision came from: Airflow's human-in-the-loop step, ``certrisk review``, or
#: the policy's ``default_outcome`` recorded when nobody decided within ``timeout_hours``.
REVIEW_SOURCES = ("airflow-hitl", "cli", "timeout")

#: The reviewer a timeout's default outcome is recorded under (no person decided).
SYSTEM_REVIEWER = "system"

#: The NIST AI RMF subcategories a review record is evidence for (``rmf.EVIDENCE["human_review"]``).
REVIEW_RMF = EVIDENCE[REVIEW_EVIDENCE]


class ReviewSpec(StrictSpec):
    """Human review of a batch after its record has landed."""

    at_tier: Tier = Field(
        default=Tier.HIGH, description="Batches at or above this tier wait for a reviewer's decision."
    )
    assigned_users: tuple[str, ...] = Field(
        default=(),
        description="Airflow user ids (the auth manager's) who may decide; empty: any user allowed "
        "to act on the DAG's required actions.",
    )
    timeout_hours: float = Field(default=24.0, gt=0, description="How long the step waits for a decision.")
    default_outcome: Literal["approve", "reject", "escalate"] = Field(
        default="reject",
        description="The decision recorded (by the system, not a person) when nobody decides in time.",
    )
    subject: str = Field(
        default="certrisk: review batch {batch_id} of {model} (tier {tier})",
        description="Title of the review request; {batch_id}, {model}, {tier} and {run_id} are filled in.",
    )
