"""Dashboard, report and compliance queries. They read only the views (v_run_summary,
v_sample_risk, v_rmf_evidence, v_rmf_subcategory, v_daily_trend, v_drift_test, v_rule_result,
v_method_cost), so the compliance role can run every one of them; none returns a radius or a
confidence bound. Each takes an open connection (``GovernanceStore.connect``). Times are UTC;
datetimes and dates are bound as the backend's ``Dialect`` says. A run's rows carry its
supersede trail (``recorded_by``, ``revision_reason``, ``previous_tier``; ``facts.revision_trail``
words it). The CSV export neutralises every cell a spreadsheet would run as a formula.
"""

from __future__ import annotations

import csv
import json
import operator
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from certrisk.governance.engine import dialect_of
from certrisk.governance.facts import FACT_COLUMNS, REVIEW_COLUMNS, review_state, revision_trail
from certrisk.governance.reviews import add_review_coverage
from certrisk.schemas.clock import as_utc, as_utc_timestamp, utc_now
from certrisk.schemas.columns import FACTORS
from certrisk.schemas.enums import Tier
from certrisk.schemas.errors import InputError, RunNotFoundError
from certrisk.schemas.rmf import catalog
from certrisk.schemas.spreadsheet import safe_cell

#: Days a trend may reach back (100 years).
MAX_TREND_DAYS = 36_500

RUN_COLUMNS = (
    "dag_id", "run_id", "revision", "batch", "model", "model_sha256", "created_at", "recorded_at",
    "n_samples", "abstention_rate", "mean_risk", "tier", "drift", "reasons", "limitations",
    "package_version", "policy_sha256", "manifest_digest", "is_current", "recorded_by", "revision_reason",
    "previous_tier", *REVIEW_COLUMNS,
)  # fmt: skip
SAMPLE_COLUMNS = (
    "sample_id", "risk", "tier", "abstained", *(f"factor_{f}" for f in FACTORS), "top_factors", "rmf_ids",
)  # fmt: skip
EXPORT_COLUMNS = ("dag_id", "run_id", "revision", "model", "created_at", *SAMPLE_COLUMNS)
DRIFT_COLUMNS = (
    "test", "family", "feature", "statistic", "p_value", "q_value", "effect_size", "effect_name", "drift",
)  # fmt: skip
RULE_COLUMNS = (
    "expectation", "expectation_type", "column", "severity", "level", "success", "unexpected_count",
)  # fmt: skip
METHOD_COST_COLUMNS = (
    "method", "n_samples", "share_certified", "share_abstained", "total_seconds", "peak_bytes", "forward_passes",
)  # fmt: skip
#: Columns of v_run_summary a report reads (all compliance-visible): RUN_COLUMNS and the batch
#: figures of ``facts.FACT_COLUMNS``.
REPORT_RUN_COLUMNS = tuple(dict.fromkeys((*RUN_COLUMNS, *FACT_COLUMNS)))
#: Columns of a run's RMF evidence rows (``run_evidence``).
EVIDENCE_COLUMNS = ("subcategory_id", "evidence_kind", "detail")
#: Columns of ``period_evidence``.
PERIOD_EVIDENCE_COLUMNS = ("run_pk", "dag_id", "run_id", "created_at", "subcategory_id", "evidence_kind")
#: Samples a ``samples`` call returns unless told otherwise (``limit=None``: all of them).
DEFAULT_SAMPLE_LIMIT = 1000


def _tier(value) -> str:
    try:
        return Tier(str(value).lower()).value
    except ValueError:
        raise InputError(f"unknown tier {value!r}; known: {[t.value for t in Tier]}") from None


def utc_param(value, name: str):
    """A query's time bound (datetime, pandas Timestamp, date or ISO text) as an aware UTC
    datetime; dates mean their midnight, UTC; naive values are UTC. None stays None."""
    if value is None:
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InputError(f"{name}: not an ISO date or datetime: {value!r}") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    return as_utc(value)


def _json(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _utc_series(series: pd.Series) -> pd.Series:
    """A column of timestamps (aware, naive UTC, or SQLite's text) as aware UTC: the column-wise
    form of ``certrisk.schemas.clock.as_utc_timestamp`` (naive values are UTC)."""
    return pd.to_datetime(series, utc=True, format="ISO8601")


def list_runs(
    conn,
    *,
    model: str | None = None,
    since=None,
    until=None,
    tier=None,
    min_tier=None,
    dag_id: str | None = None,
    include_superseded: bool = False,
    limit: int | None = None,
) -> pd.DataFrame:
    """Runs newest first, filtered by model, created_at in [since, until), tier (exact) or
    min_tier (that tier or worse). Columns: RUN_COLUMNS, ``revised`` (the supersede trail in
    words, ``facts.revision_trail``; "" for a first revision) and ``review`` (the review state in
    words, ``facts.review_state``: "approved by alice", "pending", "" when none was asked for).
    Current revisions only unless ``include_superseded``."""
    where, params = [], {}
    if not include_superseded:
        where.append("is_current = 1")
    _model_and_dates(conn, where, params, model=model, since=since, until=until)
    if dag_id is not None:
        where.append("dag_id = :dag_id")
        params["dag_id"] = dag_id
    if tier is not None:
        where.append("tier = :tier")
        params["tier"] = _tier(tier)
    if min_tier is not None:
        allowed = [t.value for t in Tier if t >= Tier(_tier(min_tier))]
        names = [f"mt{i}" for i in range(len(allowed))]
        where.append(f"tier IN ({', '.join(':' + n for n in names)})")
        params.update(zip(names, allowed, strict=True))
    sql = f"SELECT {', '.join(RUN_COLUMNS)} FROM v_run_summary"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, dag_id, run_id, revision DESC"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    rows = conn.execute(sa.text(sql), params).all()
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    frame["created_at"] = _utc_series(frame["created_at"])
    frame["recorded_at"] = _utc_series(frame["recorded_at"])
    frame["drift"] = frame["drift"].astype(bool)
    frame["is_current"] = frame["is_current"].astype(bool)
    frame["reasons"] = [_json(v) for v in frame["reasons"]]
    for col in ("review_at_tier", "review_decision", "review_reviewer", "review_source"):
        frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    records = frame.to_dict(orient="records")
    frame["revised"] = [revision_trail(r) for r in records]
    frame["review"] = [review_state(r) for r in records]
    frame["review_decided_at"] = _utc_series(frame["review_decided_at"])
    return frame


def _model_and_dates(conn, where: list, params: dict, *, model=None, since=None, until=None) -> None:
    """Add the filters shared by run and export queries: model name, created_at in [since, until)."""
    if model is not None:
        where.append("model = :model")
        params["model"] = model
    if since is not None:
        where.append("created_at >= :since")
        params["since"] = dialect_of(conn).bind_datetime(utc_param(since, "since"))
    if until is not None:
        where.append("created_at < :until")
        params["until"] = dialect_of(conn).bind_datetime(utc_param(until, "until"))


def find_run(
    conn, run_id: str, dag_id: str | None = None, revision: int | None = None, *, columns=("run_pk", "dag_id")
):
    """The v_run_summary row of a run: its current revision unless ``revision`` is given.

    Raises RunNotFoundError when nothing matches, InputError when the run id is recorded by
    several DAGs and no ``dag_id`` tells them apart.
    """
    where = ["run_id = :run_id"]
    params: dict = {"run_id": run_id}
    if dag_id is not None:
        where.append("dag_id = :dag_id")
        params["dag_id"] = dag_id
    if revision is None:
        where.append("is_current = 1")
    else:
        where.append("revision = :revision")
        params["revision"] = int(revision)
    sql = f"SELECT {', '.join(dict.fromkeys(('dag_id', *columns)))} FROM v_run_summary WHERE {' AND '.join(where)}"
    found = conn.execute(sa.text(sql), params).mappings().all()
    if not found:
        raise RunNotFoundError(
            f"no recorded run with run_id {run_id!r}" + (f" in DAG {dag_id!r}" if dag_id else "")
        )
    if len(found) > 1:
        raise InputError(
            f"run_id {run_id!r} is recorded by several DAGs {sorted(r['dag_id'] for r in found)}; pass dag_id"
        )
    return found[0]


def run_summary(conn, run_id: str, dag_id: str | None = None, revision: int | None = None) -> dict:
    """A run's v_run_summary row as a report reads it: ``run_pk`` and REPORT_RUN_COLUMNS, its
    current revision unless ``revision``. ``reasons`` a list; ``tier_counts`` and
    ``risk_quantiles`` dicts; ``not_measured`` a list or None; ``limitations`` a string ("" when absent); ``drift``, ``is_current``
    bools and ``abstention_elevated`` a bool or None; ``created_at``, ``recorded_at`` aware UTC
    pandas Timestamps; ``revised`` the supersede trail in words ("" for a first revision);
    ``review`` the review state in words (``facts.review_state``). Raises like ``find_run``;
    ``facts.BatchFacts.from_row`` reads the figures.
    """
    run = dict(find_run(conn, run_id, dag_id, revision, columns=("run_pk", *REPORT_RUN_COLUMNS)))
    run["reasons"] = _json(run["reasons"]) or []
    run["tier_counts"] = _json(run["tier_counts"]) or {}
    run["risk_quantiles"] = _json(run["risk_quantiles"]) or {}
    run["not_measured"] = _json(run["not_measured"])
    run["limitations"] = run["limitations"] or ""
    run["drift"] = bool(run["drift"])
    run["is_current"] = bool(run["is_current"])
    if run["abstention_elevated"] is not None:
        run["abstention_elevated"] = bool(run["abstention_elevated"])
    for key in ("created_at", "recorded_at"):
        run[key] = as_utc_timestamp(run[key])
    run["revised"] = revision_trail(run)
    run["review"] = review_state(run)
    if run["review_decided_at"] is not None:
        run["review_decided_at"] = as_utc_timestamp(run["review_decided_at"])
    return run


def run_evidence(conn, run_pk: int) -> pd.DataFrame:
    """The RMF evidence rows of the run ``run_pk`` in recorded order (EVIDENCE_COLUMNS)."""
    sql = f"SELECT {', '.join(EVIDENCE_COLUMNS)} FROM v_rmf_evidence WHERE run_pk = :pk ORDER BY row_no"
    return pd.DataFrame(conn.execute(sa.text(sql), {"pk": run_pk}).all(), columns=list(EVIDENCE_COLUMNS))


def period_evidence(conn, *, model: str | None, since: datetime, until: datetime) -> pd.DataFrame:
    """The RMF evidence rows of the current runs (of ``model``) created in [since, until)
    (PERIOD_EVIDENCE_COLUMNS; created_at aware UTC)."""
    where, params = ["is_current = 1"], {}
    _model_and_dates(conn, where, params, model=model, since=since, until=until)
    sql = f"SELECT {', '.join(PERIOD_EVIDENCE_COLUMNS)} FROM v_rmf_evidence WHERE {' AND '.join(where)}"
    frame = pd.DataFrame(conn.execute(sa.text(sql), params).all(), columns=list(PERIOD_EVIDENCE_COLUMNS))
    frame["created_at"] = _utc_series(frame["created_at"])
    return frame


def models(conn) -> list[str]:
    """The names of the models with recorded runs, sorted."""
    return list(conn.execute(sa.text("SELECT DISTINCT model FROM v_run_summary ORDER BY model")).scalars())


def _resolve_run(conn, run_id: str, dag_id: str | None, revision: int | None) -> int:
    return find_run(conn, run_id, dag_id, revision)["run_pk"]


def samples(
    conn,
    run_id: str,
    *,
    tier=None,
    factor: str | None = None,
    dag_id: str | None = None,
    revision: int | None = None,
    limit: int | None = DEFAULT_SAMPLE_LIMIT,
) -> pd.DataFrame:
    """A run's samples (current revision), riskiest first. ``tier`` keeps that tier; ``factor``
    keeps samples where that factor contributes (factor_<name> > 0, i.e. it is in top_factors),
    ordered by its contribution. At most ``limit`` rows (default ``DEFAULT_SAMPLE_LIMIT``; None
    returns every sample, which on a large run is slow). Columns: SAMPLE_COLUMNS."""
    run_pk = _resolve_run(conn, run_id, dag_id, revision)
    where, params = ["run_pk = :run_pk"], {"run_pk": run_pk}
    order = "risk DESC, row_no"
    if tier is not None:
        where.append("tier = :tier")
        params["tier"] = _tier(tier)
    if factor is not None:
        if factor not in FACTORS:
            raise InputError(f"unknown factor {factor!r}; known: {list(FACTORS)}")
        where.append(f"factor_{factor} > 0")
        order = f"factor_{factor} DESC, risk DESC, row_no"
    sql = (
        f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM v_sample_risk WHERE {' AND '.join(where)} ORDER BY {order}"
    )
    if limit is not None:
        if int(limit) < 0:
            raise InputError(f"samples: limit must be >= 0 or None, got {limit}")
        sql += f" LIMIT {int(limit)}"
    frame = pd.DataFrame(conn.execute(sa.text(sql), params).all(), columns=list(SAMPLE_COLUMNS))
    frame["abstained"] = frame["abstained"].astype(bool)
    for col in ("top_factors", "rmf_ids"):
        frame[col] = [_json(v) for v in frame[col]]
    return frame


def _run_view(conn, view: str, columns, run_id, dag_id, revision, order: str) -> pd.DataFrame:
    run_pk = _resolve_run(conn, run_id, dag_id, revision)
    quoted = ", ".join(f'"{c}"' for c in columns)
    rows = conn.execute(
        sa.text(f"SELECT {quoted} FROM {view} WHERE run_pk = :pk ORDER BY {order}"), {"pk": run_pk}
    )
    return pd.DataFrame(rows.all(), columns=list(columns))


def drift_tests(conn, run_id: str, *, dag_id: str | None = None, revision: int | None = None) -> pd.DataFrame:
    """A run's drift tests (current revision) in recorded order, from v_drift_test: test, family,
    feature, statistic, p_value, q_value (corrected across families), effect_size, effect_name,
    drift. Columns: DRIFT_COLUMNS."""
    frame = _run_view(conn, "v_drift_test", DRIFT_COLUMNS, run_id, dag_id, revision, "row_no")
    for col in ("statistic", "p_value", "q_value", "effect_size"):
        frame[col] = frame[col].astype(float)
    frame["drift"] = frame["drift"].astype(bool)
    return frame


def rule_results(
    conn, run_id: str, *, dag_id: str | None = None, revision: int | None = None
) -> pd.DataFrame:
    """A run's per-expectation outcomes (current revision) in recorded order, from v_rule_result.
    Columns: RULE_COLUMNS."""
    frame = _run_view(conn, "v_rule_result", RULE_COLUMNS, run_id, dag_id, revision, "row_no")
    frame["success"] = frame["success"].astype(bool)
    return frame


def method_costs(
    conn, run_id: str, *, dag_id: str | None = None, revision: int | None = None
) -> pd.DataFrame:
    """Per certification method of a run (current revision), from v_method_cost: samples, shares
    certified and abstained (0..1), total seconds, peak bytes, forward passes. Aggregates only:
    no radius or confidence bound. Columns: METHOD_COST_COLUMNS."""
    frame = _run_view(conn, "v_method_cost", METHOD_COST_COLUMNS, run_id, dag_id, revision, "method")
    for col in ("share_certified", "share_abstained", "total_seconds"):
        frame[col] = frame[col].astype(float)
    for col in ("n_samples", "peak_bytes", "forward_passes"):
        frame[col] = frame[col].astype("Int64")
    return frame


def trend(conn, *, model: str | None = None, days: int = 30) -> pd.DataFrame:
    """Per model and UTC day over the last ``days`` days: n_runs, n_samples, abstention_rate and
    mean_risk (sample-weighted over current runs), worst_tier."""
    try:
        n_days = operator.index(days)
    except TypeError:
        n_days = -1
    if not 0 <= n_days <= MAX_TREND_DAYS:
        raise InputError(f"trend: days must be a whole number from 0 to {MAX_TREND_DAYS}, got {days!r}")
    cutoff = (utc_now() - timedelta(days=n_days)).date()
    where, params = ["day >= :cutoff"], {"cutoff": dialect_of(conn).bind_date(cutoff)}
    if model is not None:
        where.append("model = :model")
        params["model"] = model
    sql = (
        "SELECT model, day, n_runs, n_samples, abstention_rate, mean_risk, worst_tier_rank FROM v_daily_trend "
        f"WHERE {' AND '.join(where)} ORDER BY model, day"
    )
    rows = conn.execute(sa.text(sql), params).all()
    frame = pd.DataFrame(
        rows,
        columns=["model", "day", "n_runs", "n_samples", "abstention_rate", "mean_risk", "worst_tier_rank"],
    )
    frame["day"] = pd.to_datetime(frame["day"]).dt.date
    tiers = [t.value for t in Tier]
    frame["worst_tier"] = [tiers[int(r)] for r in frame.pop("worst_tier_rank")]
    for col in ("abstention_rate", "mean_risk"):
        frame[col] = frame[col].astype(float)
    return frame


def rmf_coverage(conn, *, model: str | None = None) -> pd.DataFrame:
    """One row per NIST AI RMF subcategory (Core order): function, category, text, n_runs and
    n_records evidencing it among current runs (of ``model``) and their review decisions,
    evidence_kinds, last_evidenced_at, covered."""
    params: dict = {}
    cond = "e.is_current = 1"
    if model is not None:
        cond += " AND e.model = :model"
        params["model"] = model
    sql = (
        "SELECT c.id, c.function, c.category, c.text, COUNT(DISTINCT e.run_pk) AS n_runs, "
        "COUNT(e.row_no) AS n_records, MAX(e.created_at) AS last_evidenced_at "
        f"FROM v_rmf_subcategory c LEFT JOIN v_rmf_evidence e ON e.subcategory_id = c.id AND {cond} "
        "GROUP BY c.id, c.function, c.category, c.text"
    )
    frame = pd.DataFrame(
        conn.execute(sa.text(sql), params).all(),
        columns=[
            "subcategory_id",
            "function",
            "category",
            "text",
            "n_runs",
            "n_records",
            "last_evidenced_at",
        ],
    )
    kinds_sql = f"SELECT DISTINCT e.subcategory_id, e.evidence_kind FROM v_rmf_evidence e WHERE {cond}"
    kinds: dict[str, list[str]] = {}
    for sub, kind in conn.execute(sa.text(kinds_sql), params).all():
        kinds.setdefault(sub, []).append(kind)
    order = {sid: i for i, sid in enumerate(catalog())}
    frame["order"] = frame["subcategory_id"].map(order)
    frame = frame.sort_values("order").drop(columns="order").reset_index(drop=True)
    frame["evidence_kinds"] = [sorted(kinds.get(s, [])) for s in frame["subcategory_id"]]
    frame["last_evidenced_at"] = _utc_series(frame["last_evidenced_at"])
    frame["covered"] = frame["n_records"] > 0
    return add_review_coverage(conn, frame, model=model)  # review decisions evidence REVIEW_RMF


def export_compliance_csv(conn, path, *, model=None, since=None, until=None) -> int:
    """Stream every current run's samples (EXPORT_COLUMNS; lists joined by ';') to CSV at ``path``.
    Every cell goes through ``certrisk.schemas.spreadsheet.safe_cell``: text a spreadsheet would
    run as a formula (a sample id ``=HYPERLINK(...)``) is written as text."""
    where, params = ["is_current = 1"], {}
    _model_and_dates(conn, where, params, model=model, since=since, until=until)
    sql = (
        f"SELECT {', '.join(EXPORT_COLUMNS)} FROM v_sample_risk WHERE {' AND '.join(where)} "
        "ORDER BY created_at, dag_id, run_id, row_no"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    lists = {EXPORT_COLUMNS.index("top_factors"), EXPORT_COLUMNS.index("rmf_ids")}
    created = EXPORT_COLUMNS.index("created_at")
    abstained = EXPORT_COLUMNS.index("abstained")
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([safe_cell(c) for c in EXPORT_COLUMNS])
        result = conn.execution_options(stream_results=True, yield_per=10_000).execute(sa.text(sql), params)
        for row in result:
            out = list(row)
            for i in lists:
                out[i] = ";".join(_json(out[i]) or [])
            out[abstained] = bool(out[abstained])
            stamp = out[created]
            if isinstance(stamp, str):  # SQLite: naive UTC text
                stamp = datetime.fromisoformat(stamp)
            if isinstance(stamp, datetime):
                out[created] = as_utc(stamp).isoformat()
            writer.writerow([safe_cell(v) for v in out])
            n += 1
    return n
