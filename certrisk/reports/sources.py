"""What a report reads, per edition.

``ComplianceSource`` reads only the governance views the compliance role is granted
(``v_run_summary``, ``v_sample_risk``, ``v_rmf_evidence``, ``v_rmf_subcategory``,
``v_daily_trend``, ``v_drift_test``, ``v_rule_result``, ``v_method_cost``): tiers, factors, drift
tests, rule outcomes, per-method cost aggregates and RMF evidence, never a radius or a confidence
bound. ``EngineerSource`` adds the raw tables (certificates, drift tests, rule results, the
policy text) through ``GovernanceStore.get_run``; on PostgreSQL only the engineer and auditor
roles can read them.

Both return a ``RunData`` (one run) or a ``PeriodData`` (one model over a span of days); the
report builders in ``certrisk.reports.content`` turn those into sections.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pandas as pd
import sqlalchemy as sa

from certrisk.governance import queries
from certrisk.governance.store import GovernanceStore
from certrisk.schemas.enums import Edition, Tier
from certrisk.schemas.errors import InputError, RunNotFoundError, StoreError

#: Columns of v_run_summary a report reads (all of them compliance-visible).
RUN_VIEW_COLUMNS = (*queries.RUN_COLUMNS, "tier_counts", "reference_abstention_rate", "abstention_p_value")
EVIDENCE_COLUMNS = ("subcategory_id", "evidence_kind", "detail")


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

    ``run``: the v_run_summary row (reasons as a list, tier_counts as a dict). ``samples``: the
    sample tiers and factors (queries.SAMPLE_COLUMNS), riskiest first. ``evidence``: the run's
    RMF evidence rows. ``drift_tests`` and ``rule_expectations``: per-test and per-expectation
    outcomes (the compliance edition reads them from v_drift_test and v_rule_result, without the
    observed values). ``method_costs``: per certification method, samples, shares certified and
    abstained, time, peak memory and forward passes (compliance edition, from v_method_cost). The
    engineer edition also carries ``summary`` (the full batch summary), ``certificates`` and
    ``policy_text``; for the compliance edition they are None.
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


@dataclass
class PeriodData:
    """One model's recorded runs over ``days`` days ending at ``until`` (UTC)."""

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


def _json(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _utc(value) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)


def audit_status(store: GovernanceStore) -> AuditStatus:
    """Verify the audit chain; a connection that may not read the raw tables says so instead."""
    try:
        report = store.verify()
    except StoreError as exc:
        return AuditStatus(False, False, f"not verified with this connection: {exc}")
    return AuditStatus(True, bool(report.ok), report.message, report.head, int(report.runs_checked))


class ComplianceSource:
    """Reads the compliance views of the governance database at ``store``."""

    edition = Edition.COMPLIANCE

    def __init__(self, store: GovernanceStore, *, verify: bool = True):
        self.store = store
        self.verify = verify

    # ---------------------------------------------------------------- runs
    def find_run(self, conn, run_id: str, dag_id: str | None = None, revision: int | None = None) -> dict:
        try:
            run = dict(
                queries.find_run(conn, run_id, dag_id, revision, columns=("run_pk", *RUN_VIEW_COLUMNS))
            )
        except RunNotFoundError as exc:
            raise RunNotFoundError(f"{exc} in {self.store.masked_url}") from None
        run["reasons"] = _json(run["reasons"]) or []
        run["tier_counts"] = _json(run["tier_counts"]) or {}
        run["limitations"] = run["limitations"] or ""
        run["drift"] = bool(run["drift"])
        run["is_current"] = bool(run["is_current"])
        for key in ("created_at", "recorded_at"):
            run[key] = _utc(run[key])
        return run

    def _run_parts(self, conn, run_id, dag_id, revision):
        run = self.find_run(conn, run_id, dag_id, revision)
        samples = queries.samples(conn, run_id, dag_id=run["dag_id"], revision=run["revision"], limit=None)
        evidence = pd.DataFrame(
            conn.execute(
                sa.text(
                    f"SELECT {', '.join(EVIDENCE_COLUMNS)} FROM v_rmf_evidence WHERE run_pk = :pk ORDER BY row_no"
                ),
                {"pk": run["run_pk"]},
            ).all(),
            columns=list(EVIDENCE_COLUMNS),
        )
        return run, samples, evidence

    def run(self, run_id: str, *, dag_id: str | None = None, revision: int | None = None) -> RunData:
        with self.store._errors("report"), self.store.engine.connect() as conn:
            run, samples, evidence = self._run_parts(conn, run_id, dag_id, revision)
            key = {"dag_id": run["dag_id"], "revision": run["revision"]}
            drift = queries.drift_tests(conn, run["run_id"], **key)
            rules = queries.rule_results(conn, run["run_id"], **key)
            costs = queries.method_costs(conn, run["run_id"], **key)
        audit = audit_status(self.store) if self.verify else AuditStatus(False, False, "not checked")
        return RunData(
            self.edition,
            run,
            samples,
            evidence,
            audit,
            drift_tests=drift,
            rule_expectations=rules,
            method_costs=costs,
        )

    # ---------------------------------------------------------------- periods
    def period(self, *, model: str | None, days: int = 30, until: datetime | None = None) -> PeriodData:
        if days < 1:
            raise InputError(f"period: days must be >= 1, got {days}")
        end = (until or datetime.now(UTC)).astimezone(UTC)
        start = end - timedelta(days=int(days))
        with self.store._errors("report"), self.store.engine.connect() as conn:
            runs = queries.list_runs(conn, model=model, since=start, until=end)
            trend = queries.trend(conn, model=model, days=days)
            coverage = queries.rmf_coverage(conn, model=model)
            where, params = ["is_current = 1", "created_at >= :since", "created_at < :until"], {}
            bind = (lambda v: v.replace(tzinfo=None)) if conn.dialect.name == "sqlite" else (lambda v: v)
            params.update(since=bind(start), until=bind(end))
            if model is not None:
                where.append("model = :model")
                params["model"] = model
            evidence = pd.DataFrame(
                conn.execute(
                    sa.text(
                        "SELECT run_pk, dag_id, run_id, created_at, subcategory_id, evidence_kind FROM v_rmf_evidence "
                        f"WHERE {' AND '.join(where)}"
                    ),
                    params,
                ).all(),
                columns=["run_pk", "dag_id", "run_id", "created_at", "subcategory_id", "evidence_kind"],
            )
        evidence["created_at"] = pd.to_datetime(evidence["created_at"], utc=True)
        audit = audit_status(self.store) if self.verify else AuditStatus(False, False, "not checked")
        return PeriodData(self.edition, model, int(days), start, end, runs, trend, coverage, evidence, audit)

    def models(self) -> list[str]:
        with self.store._errors("report"), self.store.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT DISTINCT model FROM v_run_summary ORDER BY model")).scalars()
            return list(rows)


class EngineerSource(ComplianceSource):
    """The compliance views plus the raw tables: certificates, drift tests, rule results, policy."""

    edition = Edition.ENGINEER

    def run(self, run_id: str, *, dag_id: str | None = None, revision: int | None = None) -> RunData:
        with self.store._errors("report"), self.store.engine.connect() as conn:
            run, samples, evidence = self._run_parts(conn, run_id, dag_id, revision)
        raw = self.store.get_run(run["dag_id"], run["run_id"], revision=run["revision"])
        extra = raw["sample_risk"][["sample_id", "prediction", "base_prediction"]]
        samples = samples.merge(extra, on="sample_id", how="left")
        audit = audit_status(self.store) if self.verify else AuditStatus(False, False, "not checked")
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
        )

    def period(self, *, model: str | None, days: int = 30, until: datetime | None = None) -> PeriodData:
        data = super().period(model=model, days=days, until=until)
        with self.store._errors("report"), self.store.engine.connect() as conn:
            where = ["r.model = :model"] if model is not None else []
            where += ["r.is_current = 1", "r.created_at >= :since", "r.created_at < :until"]
            bind = (lambda v: v.replace(tzinfo=None)) if conn.dialect.name == "sqlite" else (lambda v: v)
            params = {"since": bind(data.since), "until": bind(data.until)}
            if model is not None:
                params["model"] = model
            rows = conn.execute(
                sa.text(
                    "SELECT r.dag_id, r.run_id, r.created_at, c.method, c.norm, c.abstained, c.radius, c.p_lower "
                    "FROM v_run_summary r JOIN certificate c ON c.run_pk = r.run_pk "
                    f"WHERE {' AND '.join(where)}"
                ),
                params,
            ).all()
        frame = pd.DataFrame(
            rows,
            columns=["dag_id", "run_id", "created_at", "method", "norm", "abstained", "radius", "p_lower"],
        )
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
        frame["abstained"] = frame["abstained"].astype(bool)
        data.radius_by_run = frame
        return data


def source_for(edition: Edition | str, store: GovernanceStore, *, verify: bool = True) -> ComplianceSource:
    """The data source of an edition."""
    edition = Edition(str(edition))
    cls = EngineerSource if edition is Edition.ENGINEER else ComplianceSource
    return cls(store, verify=verify)


TIER_ORDER = [t.value for t in Tier]
