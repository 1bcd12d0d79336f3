"""Example DAG downstream of certrisk: runs when a digits batch is accepted.

Scheduled on the model's `certrisk://digits-cnn/accepted` Asset, which certrisk's alert task
updates when a batch is accepted (a reviewer approved it, or it needed no review and its tier is
below the alert tier). The task reads the triggering event's extra: the tier, batch id, sample
count, abstention rate, the producing DAG run and, for a reviewed batch, the decision and the
reviewer. Use `risk_asset("digits-cnn")` instead to run after every recorded batch, accepted or not.
"""

import logging
from datetime import UTC, datetime

from airflow.sdk import DAG, task

from certrisk.operators import accepted_asset

ACCEPTED = accepted_asset("digits-cnn")
log = logging.getLogger(__name__)

with DAG(
    "certrisk_downstream",
    schedule=[ACCEPTED],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["certrisk", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def use_accepted_batch(*, triggering_asset_events=None) -> dict:
        """Act on the accepted batch the event names (here: log it and return its facts)."""
        events = list(triggering_asset_events[ACCEPTED])
        if not events:
            raise ValueError(f"no event of {ACCEPTED.uri} triggered this run")
        extra = events[-1].extra
        log.info(
            "accepted batch %s of %s (tier %s, decision %s) from %s/%s",
            extra.get("batch_id"),
            extra.get("model"),
            extra.get("tier"),
            extra.get("decision") or "none: no review needed",
            extra.get("dag_id"),
            extra.get("run_id"),
        )
        return {key: extra.get(key) for key in ("batch_id", "tier", "decision", "dag_id", "run_id")}

    use_accepted_batch()
