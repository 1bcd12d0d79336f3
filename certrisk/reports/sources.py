"""What a report reads, per edition.

``ComplianceSource`` reads only the governance views the compliance role is granted
(``v_run_summary``, ``v_sample_risk``, ``v_rmf_evidence``, ``v_rmf_subcategory``,
``v_daily_trend``, ``v_drift_test``, ``v_rule_result``, ``v_method_cost``): tiers, factors, drift
tests, rule outcomes, per-method cost aggregates and RMF evidence, never a radius or a confidence
bound. ``EngineerSource`` adds the raw tables (certificates, drift tests, rule results, the
policy text) through ``GovernanceStore.get_run``; on PostgreSQL only the engineer and auditor
roles can read them. Every query is governance's (``certrisk.governance.queries`` and
``raw_reads``), run on a connection from ``GovernanceStore.connect``.

Both editions read the review decisions (``v_review``) and the last stored ``certrisk verify``
result (``v_verification``). A run report checks its own run against the audit chain
(``GovernanceStore.verify_run``: bounded by the run's size, never the whole chain); a period
report verifies the whole chain (it is asked for explicitly, not on every page view).

Both return a ``RunData`` (one run) or a ``PeriodData`` (one model over a span of days); the
report builders in ``certrisk.reports.content`` turn those into sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd

from certrisk.governance import queries, raw_reads, reviews, verifications
from certrisk.governance.facts import BatchFacts
from certrisk.governance.store import GovernanceStore
from certrisk.schemas.clock import as_utc, utc_now
from certrisk.schemas.enums import Edition, Tier
from certrisk.schemas.errors import InputError, RunNotFoundError, StoreError

#: Columns of v_run_summary a report reads (all of them compliance-visible).
RUN_VIEW_COLUMNS = queries.REPORT_RUN_COLUMNS
EVIDENCE_COLUMNS = queries.EVIDENCE_COLUMNS


@dataclass(frozen=True)
class AuditStatus:
    """Outcome of the audit-chain check as a report states it."""

    checked: bool
    ok: bool
    message: str
    head: str | None = None
    runs_checked: int = 0


@dataclass
class RunData:
    """One recorded run as an edition may see it.

    ``run``: the v_run_summary row (``queries.run_summary``: reasons as a list, tier_counts and
    risk_quantiles as dicts). ``facts``: the batch summary's figures as numbers
    (``certrisk.governance.facts.BatchFacts``, the same for both editions). ``samples``: the
    sample tiers and factors (queries.SAMPLE_COLUMNS), riskiest first. ``evidence``: the run's
    RMF evidence rows. ``drift_tests`` and ``rule_expectations``: per-test and per-expectation
    outcomes (the compliance edition reads them from v_drift_test and v_rule_result, without the
    observed values). ``method_costs``: per certification method, samples, shares certified and
    abstained, time, peak memory and forward passes (compliance edition, from v_method_cost). The
    ``evaluation``: the model's newest recorded measured detection
    (``GovernanceStore.latest_evaluation``; aggregates, both editions) or None. The
    engineer edition also carries ``summary`` (the full batch summary), ``certificates`` and
    ``policy_text``; for the compliance edition they are None. ``reviews``: the run's review
    decisions, newest first (``governance.reviews.REVIEW_FRAME_COLUMNS``; every revision's, with
    its revision), and ``last_verify`` the newest stored ``certrisk verify`` result (or None): both
    editions.
    """

    edition: Edition
    run: dict
    samples: pd.DataFrame
    evidence: pd.DataFrame
    audit: AuditStatus
    summary: dict | None = None
    certificates: pd.DataFrame | None = None
    drift_tests: pd.DataFrame | None = None
    rule_expectations: pd.DataFrame | None = None
    policy_text: str | None = None
    method_costs: pd.DataFrame | None = None
    facts: BatchFacts | None = None
    evaluation: dict | None = None
    reviews: pd.DataFrame | None = None
    last_verify: dict | None = None


@dataclass
class PeriodData:
    """One model's recorded runs over ``days`` days ending at ``until`` (UTC). ``reviews``: the
    review decisions on the period's runs (with the run's ``created_at``); ``last_verify``: the
    newest stored ``certrisk verify`` result (or None)."""

    edition: Edition
    model: str | None
    days: int
    since: datetime
    until: datetime
    runs: pd.DataFrame
    trend: pd.DataFrame
    coverage: pd.DataFrame
    evidence_by_run: pd.DataFrame
    audit: AuditStatus
    radius_by_run: pd.DataFrame | None = field(default=None)
    reviews: pd.DataFrame | None = field(default=None)
    last_verify: dict | None = field(default=None)


def audit_status(store: GovernanceStore) -> AuditStatus:
    """Verify the audit chain; a connection that may not read the raw tables says so instead."""
    try:
        report = store.verify()
    except StoreError as exc:
        return AuditStatus(False, False, f"not verified with this connection: {exc}")
    return AuditStatus(True, bool(report.ok), report.message, report.head, int(report.runs_checked))


def run_audit_status(store: GovernanceStore, dag_id: str, run_id: str) -> AuditStatus:
    """Verify one run against the audit chain (``GovernanceStore.verify_run``: its revisions, rows
    and reviews, never the whole chain); a connection that may not read the raw tables and the
    audit log says so instead."""
    try:
        report = store.verify_run(dag_id, run_id)
    except StoreError as exc:
        return AuditStatus(False, False, f"not verified with this connection: {exc}")
    return AuditStatus(True, bool(report.ok), report.message, report.head, int(report.runs_checked))


def _review_parts(conn, run: dict) -> tuple[pd.DataFrame, dict | None]:
    """The run's review decisions and the last stored verify result (compliance views)."""
    decided = reviews.reviews(conn, dag_id=run["dag_id"], run_id=run["run_id"])
    return decided, verifications.last_verify(conn)


class ComplianceSource:
    """Reads the compliance views of the governance database at ``store``."""

    edition = Edition.COMPLIANCE

    def __init__(self, store: GovernanceStore, *, verify: bool = True):
        self.store = store
        self.verify = verify

    # ---------------------------------------------------------------- runs
    def find_run(self, conn, run_id: str, dag_id: str | None = None, revision: int | None = None) -> dict:
        """The run's v_run_summary row (``queries.run_summary``)."""
        try:
            return queries.run_summary(conn, run_id, dag_id, revision)
        except RunNotFoundError as exc:
            raise RunNotFoundError(f"{exc} in {self.store.masked_url}") from None

    def _run_parts(self, conn, run_id, dag_id, revision):
        run = self.find_run(conn, run_id, dag_id, revision)
        samples = queries.samples(conn, run_id, dag_id=run["dag_id"], revision=run["revision"], limit=None)
        evidence = queries.run_evidence(conn, run["run_pk"])
        return run, samples, evidence

    def run(self, run_id: str, *, dag_id: str | None = None, revision: int | None = None) -> RunData:
        with self.store.connect("report") as conn:
            run, samples, evidence = self._run_parts(conn, run_id, dag_id, revision)
            key = {"dag_id": run["dag_id"], "revision": run["revision"]}
            drift = queries.drift_tests(conn, run["run_id"], **key)
            rules = queries.rule_results(conn, run["run_id"], **key)
            costs = queries.method_costs(conn, run["run_id"], **key)
            decided, last = _review_parts(conn, run)
        audit = self._run_audit(run)
        return RunData(
            self.edition,
            run,
            samples,
            evidence,
            audit,
            drift_tests=drift,
            rule_expectations=rules,
            method_costs=costs,
            facts=BatchFacts.from_row(run),
            evaluation=self.store.latest_evaluation(run["model"]),
            reviews=decided,
            last_verify=last,
        )

    def _run_audit(self, run: dict) -> AuditStatus:
        if not self.verify:
            return AuditStatus(False, False, "not checked")
        return run_audit_status(self.store, run["dag_id"], run["run_id"])

    # ---------------------------------------------------------------- periods
    def period(self, *, model: str | None, days: int = 30, until: datetime | None = None) -> PeriodData:
        if days < 1:
            raise InputError(f"period: days must be >= 1, got {days}")
        end = as_utc(until or utc_now())
        start = end - timedelta(days=int(days))
        with self.store.connect("report") as conn:
            runs = queries.list_runs(conn, model=model, since=start, until=end)
            trend = queries.trend(conn, model=model, days=days)
            coverage = queries.rmf_coverage(conn, model=model)
            evidence = queries.period_evidence(conn, model=model, since=start, until=end)
            decided = reviews.period_reviews(conn, model=model, since=start, until=end)
            last = verifications.last_verify(conn)
        audit = audit_status(self.store) if self.verify else AuditStatus(False, False, "not checked")
        return PeriodData(
            self.edition, model, int(days), start, end, runs, trend, coverage, evidence, audit,
            reviews=decided, last_verify=last,
        )  # fmt: skip

    def models(self) -> list[str]:
        with self.store.connect("report") as conn:
            return queries.models(conn)


class EngineerSource(ComplianceSource):
    """The compliance views plus the raw tables: certificates, drift tests, rule results, policy."""

    edition = Edition.ENGINEER

    def run(self, run_id: str, *, dag_id: str | None = None, revision: int | None = None) -> RunData:
        with self.store.connect("report") as conn:
            run, samples, evidence = self._run_parts(conn, run_id, dag_id, revision)
            decided, last = _review_parts(conn, run)
        raw = self.store.get_run(run["dag_id"], run["run_id"], revision=run["revision"])
        extra = raw["sample_risk"][["sample_id", "prediction", "base_prediction"]]
        samples = samples.merge(extra, on="sample_id", how="left")
        audit = self._run_audit(run)
        return RunData(
            self.edition,
            run,
            samples,
            evidence,
            audit,
            summary=dict(raw["summary"] or {}),
            certificates=raw["certificates"],
            drift_tests=raw["drift_tests"],
            rule_expectations=raw["rule_expectations"],
            policy_text=raw["policy_text"],
            facts=BatchFacts.from_row(run),
            evaluation=self.store.latest_evaluation(run["model"]),
            reviews=decided,
            last_verify=last,
        )

    def period(self, *, model: str | None, days: int = 30, until: datetime | None = None) -> PeriodData:
        data = super().period(model=model, days=days, until=until)
        with self.store.connect("report") as conn:
            data.radius_by_run = raw_reads.radius_by_run(
                conn, model=model, since=data.since, until=data.until
            )
        return data


def source_for(edition: Edition | str, store: GovernanceStore, *, verify: bool = True) -> ComplianceSource:
    """The data source of an edition."""
    edition = Edition(str(edition))
    cls = EngineerSource if edition is Edition.ENGINEER else ComplianceSource
    return cls(store, verify=verify)


TIER_ORDER = [t.value for t in Tier]
