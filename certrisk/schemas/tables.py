"""The governance database tables (SQLAlchemy 2 ORM), identical on SQLite and PostgreSQL.

Per-sample and per-test tables take their columns from the specs in ``columns.py`` (one place for
each name), plus three bookkeeping columns: ``run_pk`` (the pipeline_run row), ``row_no`` (the row's
position in the payload frame, the canonical order of the run's digest) and ``row_digest`` (sha256
of the row's canonical serialization, first 32 hex digits; see ``certrisk.governance.chain``).

JSON columns are ``JSON`` on SQLite and on PostgreSQL for documents whose exact text matters to the
digest (the run summary, the audit manifest: PostgreSQL ``json`` keeps the text, ``jsonb`` would
re-render numbers), and ``JSONB`` on PostgreSQL for the lists of names (factors, RMF ids, failed
rules). Schema changes go through the Alembic migrations in ``certrisk/governance/migrations``.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from certrisk.schemas.columns import (
    CERTIFICATE_COLUMNS,
    DRIFT_TEST_COLUMNS,
    RULE_EXPECTATION_COLUMNS,
    RULE_SAMPLE_COLUMNS,
    SAMPLE_ID,
    SAMPLE_RISK_COLUMNS,
)

#: Lists of names: JSON on SQLite, JSONB on PostgreSQL.
NameList = sa.JSON().with_variant(JSONB(), "postgresql")
#: Documents whose exact text is digested: plain JSON on both backends.
Document = sa.JSON()

#: Columns of the rmf_evidence table, in payload order (subcategory_id, evidence_kind, detail).
RMF_EVIDENCE_COLUMNS = {"subcategory_id": "string", "evidence_kind": "string", "detail": "string"}

_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=_NAMING)


def _sa_type(dtype: str):
    return {
        "string": sa.String(),
        "float64": sa.Double(),
        "int64": sa.BigInteger(),
        "bool": sa.Boolean(create_constraint=False),
        "object": NameList,
    }[dtype]


def _row_table(name: str, spec, *, key: tuple[str, ...], indexes=()) -> sa.Table:
    """A per-run row table: run_pk, row_no, the spec's columns, row_digest.

    ``key`` (with run_pk) is the primary key; ``row_no`` is unique per run either way.
    """
    cols = [
        sa.Column("run_pk", sa.Integer, sa.ForeignKey("pipeline_run.id"), nullable=False),
        sa.Column("row_no", sa.Integer, nullable=False),
    ]
    for col, dtype in spec.items():
        nullable = dtype == "float64" or col not in key
        cols.append(sa.Column(col, _sa_type(dtype), nullable=nullable))
    cols.append(sa.Column("row_digest", sa.String(32), nullable=False))
    pk = ("run_pk", *key)
    constraints = [sa.PrimaryKeyConstraint(*pk)]
    if key != ("row_no",):
        constraints.append(sa.UniqueConstraint("run_pk", "row_no"))
    return sa.Table(name, Base.metadata, *cols, *constraints, *indexes)


class Model(Base):
    """A model version, identified by its file's sha256."""

    __tablename__ = "model"
    __table_args__ = (sa.UniqueConstraint("name", "sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    format: Mapped[str | None] = mapped_column(sa.String(50))
    description: Mapped[str | None] = mapped_column(sa.Text)
    registered_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class Policy(Base):
    """A policy file's text, identified by its sha256 (name = the model's name)."""

    __tablename__ = "policy"
    __table_args__ = (sa.UniqueConstraint("name", "sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    text: Mapped[str] = mapped_column(sa.Text)
    recorded_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class PipelineRun(Base):
    """One scored batch: a revision of the record of one (dag_id, run_id).

    Revision 1 is the first record; a superseding write appends revision n+1 whose
    ``supersedes_id`` points at revision n. The current record of a key is the one nothing supersedes.
    """

    __tablename__ = "pipeline_run"
    __table_args__ = (
        sa.UniqueConstraint("dag_id", "run_id", "revision"),
        sa.Index(None, "model_id", "created_at"),
        sa.Index(None, "created_at"),
        sa.Index(None, "tier", "created_at"),
        sa.Index(None, "supersedes_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dag_id: Mapped[str] = mapped_column(sa.String(250))
    run_id: Mapped[str] = mapped_column(sa.String(250))
    revision: Mapped[int] = mapped_column(sa.Integer)
    supersedes_id: Mapped[int | None] = mapped_column(sa.ForeignKey("pipeline_run.id"))
    batch_id: Mapped[str] = mapped_column(sa.String(250))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("model.id"))
    policy_id: Mapped[int] = mapped_column(sa.ForeignKey("policy.id"))
    package_version: Mapped[str] = mapped_column(sa.String(50))
    n_samples: Mapped[int] = mapped_column(sa.Integer)
    abstention_rate: Mapped[float] = mapped_column(sa.Double)
    mean_risk: Mapped[float] = mapped_column(sa.Double)
    tier: Mapped[str] = mapped_column(sa.String(16))
    drift: Mapped[bool] = mapped_column(sa.Boolean(create_constraint=False))
    summary: Mapped[dict] = mapped_column(Document)
    manifest_digest: Mapped[str] = mapped_column(sa.String(64))


sample_risk_table = _row_table(
    "sample_risk",
    SAMPLE_RISK_COLUMNS,
    key=(SAMPLE_ID,),
    # one tier of a run, riskiest first (migration 0002)
    indexes=(sa.Index("ix_sample_risk_run_pk_tier_risk", "run_pk", "tier", sa.text("risk DESC"), "row_no"),),
)
certificate_table = _row_table("certificate", CERTIFICATE_COLUMNS, key=(SAMPLE_ID, "method"))
rule_sample_table = _row_table("rule_sample", RULE_SAMPLE_COLUMNS, key=(SAMPLE_ID,))
rule_result_table = _row_table("rule_result", RULE_EXPECTATION_COLUMNS, key=("row_no",))
drift_test_table = _row_table("drift_test", DRIFT_TEST_COLUMNS, key=("row_no",))
rmf_evidence_table = _row_table(
    "rmf_evidence",
    RMF_EVIDENCE_COLUMNS,
    key=("row_no",),
    indexes=(sa.Index(None, "subcategory_id"),),
)
rmf_evidence_table.append_constraint(sa.ForeignKeyConstraint(["subcategory_id"], ["rmf_subcategory.id"]))


class SampleRisk(Base):
    __table__ = sample_risk_table


class Certificate(Base):
    __table__ = certificate_table


class RuleSample(Base):
    __table__ = rule_sample_table


class RuleResult(Base):
    __table__ = rule_result_table


class DriftTest(Base):
    __table__ = drift_test_table


class RmfEvidence(Base):
    __table__ = rmf_evidence_table


class RmfSubcategory(Base):
    """The NIST AI RMF 1.0 Core subcategories (loaded from ``certrisk.schemas.rmf.catalog()``)."""

    __tablename__ = "rmf_subcategory"

    id: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    function: Mapped[str] = mapped_column(sa.String(20))
    category: Mapped[str] = mapped_column(sa.String(20))
    text: Mapped[str] = mapped_column(sa.Text)
    category_text: Mapped[str] = mapped_column(sa.Text)


class AuditEntry(Base):
    """Append-only hash chain: one entry per recorded run revision.

    ``entry_hash`` = sha256 over the previous entry's hash, this entry's fields and the run's
    manifest (see ``certrisk.governance.chain.entry_hash``). ``prev_hash`` is unique: no forks.
    """

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    run_pk: Mapped[int] = mapped_column(sa.ForeignKey("pipeline_run.id"), unique=True)
    dag_id: Mapped[str] = mapped_column(sa.String(250))
    run_id: Mapped[str] = mapped_column(sa.String(250))
    revision: Mapped[int] = mapped_column(sa.Integer)
    manifest_digest: Mapped[str] = mapped_column(sa.String(64))
    manifest: Mapped[dict] = mapped_column(Document)
    recorded_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    prev_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    entry_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)


#: Per-run row tables in write (and digest) order, with the payload attribute each comes from.
ROW_TABLES = (
    ("sample_risk", sample_risk_table, SAMPLE_RISK_COLUMNS),
    ("certificate", certificate_table, CERTIFICATE_COLUMNS),
    ("rule_sample", rule_sample_table, RULE_SAMPLE_COLUMNS),
    ("rule_result", rule_result_table, RULE_EXPECTATION_COLUMNS),
    ("drift_test", drift_test_table, DRIFT_TEST_COLUMNS),
    ("rmf_evidence", rmf_evidence_table, RMF_EVIDENCE_COLUMNS),
)

metadata = Base.metadata
