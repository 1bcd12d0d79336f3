"""The governed tables as the write path and ``verify`` use them, with what migrations 0005 and 0007 added.

``certrisk.schemas.tables`` declares the tables of migrations 0001 to 0004. Migration 0005 adds
the supersede trail to ``pipeline_run`` (``recorded_by``, ``revision_reason``), audit entries of
other kinds than runs (``audit_log.kind``, ``record_pk``, ``record_key``, ``facts``; a run's key
columns become nullable) and the evaluation records (``evaluation``, one row per evaluation, and
``evaluation_result``, one row per attack family and budget with
``certrisk.schemas.columns.EVALUATION_COLUMNS``). They are declared here, on the same metadata,
until ``certrisk.schemas.tables`` carries them.

Migration 0007 adds ``review`` (one append-only row per human review decision on a recorded run
revision, chained as audit entries of kind "review" with ``RECORD_COLUMNS["review"]`` digested)
and ``verification`` (one row per stored ``certrisk verify`` result: observations, not chained;
see ``certrisk.governance.verifications``).
"""

from __future__ import annotations

from types import MappingProxyType

import sqlalchemy as sa

from certrisk.schemas.columns import EVALUATION_COLUMNS
from certrisk.schemas.tables import (
    ROW_TABLES,
    Document,
    Model,
    Policy,
    RmfSubcategory,
    metadata,
)

run_table = sa.Table(
    "pipeline_run",
    metadata,
    sa.Column("recorded_by", sa.String(200), nullable=True),
    sa.Column("revision_reason", sa.Text, nullable=True),
    extend_existing=True,
)
audit_table = sa.Table(
    "audit_log",
    metadata,
    sa.Column("kind", sa.String(16), nullable=False, server_default="run"),
    sa.Column("record_pk", sa.Integer, nullable=True),
    sa.Column("record_key", sa.String(500), nullable=True),
    sa.Column("facts", Document, nullable=True),
    extend_existing=True,
)
evaluation_table = sa.Table(
    "evaluation",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model_id", sa.ForeignKey("model.id"), nullable=False),
    sa.Column("policy_id", sa.ForeignKey("policy.id"), nullable=False),
    sa.Column("reference_sha256", sa.String(64), nullable=False),
    sa.Column("evaluation_key", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("package_version", sa.String(50), nullable=False),
    sa.Column("n_clean", sa.Integer, nullable=False),
    sa.Column("seeds", Document, nullable=False),
    sa.Column("meta", Document, nullable=False),
    sa.Column("manifest_digest", sa.String(64), nullable=False),
    sa.UniqueConstraint("model_id", "evaluation_key"),
    sa.Index(None, "model_id", "created_at"),
)
_SA_TYPES = {"string": sa.String(), "float64": sa.Double(), "int64": sa.BigInteger(), "bool": sa.Boolean()}
evaluation_result_table = sa.Table(
    "evaluation_result",
    metadata,
    sa.Column("evaluation_pk", sa.ForeignKey("evaluation.id"), nullable=False),
    sa.Column("row_no", sa.Integer, nullable=False),
    *(sa.Column(name, _SA_TYPES[dtype], nullable=True) for name, dtype in EVALUATION_COLUMNS.items()),
    sa.Column("row_digest", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("evaluation_pk", "row_no"),
)

#: Row tables of an evaluation, as ``ROW_TABLES`` lists a run's.
EVALUATION_ROW_TABLES = (("evaluation_result", evaluation_result_table, EVALUATION_COLUMNS),)

review_table = sa.Table(
    "review",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_pk", sa.ForeignKey("pipeline_run.id"), nullable=False),
    sa.Column("dag_id", sa.String(250), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("run_manifest_digest", sa.String(64), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("reviewer", sa.String(200), nullable=False),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("review_key", sa.String(200), nullable=False, unique=True),
    sa.Column("recorded_by", sa.String(200), nullable=True),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index(None, "run_pk", "decided_at"),
)
verification_table = sa.Table(
    "verification",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("verified_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("verified_by", sa.String(200), nullable=False),
    sa.Column("recorded_by", sa.String(200), nullable=True),
    sa.Column("ok", sa.Boolean(create_constraint=False), nullable=False),
    sa.Column("head", sa.String(64), nullable=False),
    sa.Column("expected_head", sa.String(64), nullable=True),
    sa.Column("runs_checked", sa.Integer, nullable=False),
    sa.Column("rows_checked", sa.BigInteger, nullable=False),
    sa.Column("first_bad_run", sa.Text, nullable=True),
    sa.Column("first_bad_row", sa.Text, nullable=True),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("seconds", sa.Double, nullable=True),
    sa.Index(None, "verified_at"),
)

model_table = Model.__table__
policy_table = Policy.__table__
catalog_table = RmfSubcategory.__table__

#: Audit-entry kinds: what a chain entry records.
RUN, MODEL, POLICY, EVALUATION, REVIEW = "run", "model", "policy", "evaluation", "review"
#: Columns of a model, policy or review row its audit entry digests, with their canonical dtypes.
RECORD_COLUMNS = MappingProxyType(
    {
        MODEL: (("name", "string"), ("sha256", "string"), ("format", "string"),
                ("description", "string"), ("registered_at", "timestamp")),
        POLICY: (("name", "string"), ("sha256", "string"), ("text", "string"), ("recorded_at", "timestamp")),
        REVIEW: (("dag_id", "string"), ("run_id", "string"), ("revision", "int64"),
                 ("run_manifest_digest", "string"), ("decision", "string"), ("comment", "string"),
                 ("reviewer", "string"), ("decided_at", "timestamp"), ("source", "string"),
                 ("review_key", "string"), ("recorded_by", "string"), ("recorded_at", "timestamp")),
    }
)  # fmt: skip
#: Model and policy tables (chained when their rows are created; rows from before 0005 on upgrade).
RECORD_TABLES = MappingProxyType({MODEL: model_table, POLICY: policy_table})

__all__ = [
    "EVALUATION",
    "EVALUATION_ROW_TABLES",
    "MODEL",
    "POLICY",
    "RECORD_COLUMNS",
    "RECORD_TABLES",
    "REVIEW",
    "ROW_TABLES",
    "RUN",
    "audit_table",
    "catalog_table",
    "evaluation_result_table",
    "evaluation_table",
    "model_table",
    "policy_table",
    "review_table",
    "run_table",
    "verification_table",
]
