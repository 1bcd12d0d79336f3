"""Benchmark the governance write path and the dashboard queries.

    python bench/store.py [--samples 100000] [--naive-samples 5000] [--pg URL] [--query-rows 1000000]

1. Write one run of N samples with two certificate methods each (so 3N rows plus the audit entry)
   through ``GovernanceStore.write_run`` (validation, digests, bulk insert, hash chain) on SQLite
   and on PostgreSQL, and the same kind of rows through a naive ORM ``session.add`` loop (one
   object per row, one commit) in the same run; report sample rows/s and the ratio.
   Targets: >= 20,000 sample rows/s, >= 10x the naive loop.
2. Fill PostgreSQL to ``--query-rows`` sample rows and time the dashboard queries (20 runs
   each after a warm-up); report p50/p95 in ms. Target: p95 < 200 ms.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "governance"))

from records import make_record

from certrisk.governance import GovernanceStore
from certrisk.schemas.tables import Certificate, Model, PipelineRun, Policy, SampleRisk

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def naive_write(url: str, record) -> float:
    """session.add per row, one transaction: the baseline. Returns seconds."""
    engine = sa.create_engine(url)
    t0 = time.perf_counter()
    with Session(engine) as session:
        model = Model(name="naive-" + record.model_name, sha256=record.model_sha256, registered_at=record.created_at)
        policy = Policy(name="naive-" + record.policy_name, sha256=record.policy_sha256, text=record.policy_text,
                        recorded_at=record.created_at)
        session.add_all([model, policy])
        session.flush()
        s = record.summary
        run = PipelineRun(dag_id="naive", run_id=record.run_id, revision=1, batch_id=record.batch_id,
                          created_at=record.created_at, recorded_at=record.created_at, model_id=model.id,
                          policy_id=policy.id, package_version="0", n_samples=s["n_samples"],
                          abstention_rate=s["abstention_rate"], mean_risk=s["mean_risk"], tier=s["tier"],
                          drift=False, summary=s, manifest_digest="0" * 64)
        session.add(run)
        session.flush()
        for i, row in enumerate(record.sample_risk.to_dict(orient="records")):
            session.add(SampleRisk(run_pk=run.id, row_no=i, row_digest="0" * 32, **row))
        certs = record.certificates.astype(object).where(record.certificates.notna(), None)
        for i, row in enumerate(certs.to_dict(orient="records")):
            session.add(Certificate(run_pk=run.id, row_no=i, row_digest="0" * 32, **row))
        session.commit()
    seconds = time.perf_counter() - t0
    engine.dispose()
    return seconds


def bench_write(name: str, url: str, n: int, n_naive: int) -> dict:
    store = GovernanceStore(url)
    store.upgrade()
    record = make_record(f"bench-{uuid.uuid4().hex[:6]}", n)
    t0 = time.perf_counter()
    result = store.write_run(record)
    seconds = time.perf_counter() - t0
    assert result.status == "written"
    rate = n / seconds
    t0 = time.perf_counter()
    report = store.verify()  # before the naive rows, which have no audit entry
    verify_seconds = time.perf_counter() - t0
    naive_record = make_record("naive", n_naive, seed=1)
    naive_seconds = naive_write(url, naive_record)
    naive_rate = n_naive / naive_seconds
    store.dispose()
    print(f"{name:10s} write_run {n:,} samples + {2 * n:,} certificates in {seconds:.2f} s = {rate:,.0f} sample rows/s "
          f"({3 * n / seconds:,.0f} rows/s); naive session.add {n_naive:,} samples in {naive_seconds:.2f} s = "
          f"{naive_rate:,.0f} sample rows/s; ratio {rate / naive_rate:.1f}x; verify {verify_seconds:.2f} s "
          f"(ok={report.ok})")
    return {"rate": rate, "naive": naive_rate}


def bench_queries(url: str, total_rows: int, per_run: int) -> None:
    store = GovernanceStore(url)
    store.upgrade()
    with store.engine.connect() as conn:
        have = conn.execute(sa.text("SELECT COUNT(*) FROM sample_risk")).scalar_one()
    i = 0
    t0 = time.perf_counter()
    while have < total_rows:
        n = min(per_run, total_rows - have)
        store.write_run(make_record(f"fill-{i}", n, seed=i, model=("digits", "tabular")[i % 2]))
        have += n
        i += 1
    print(f"filled PostgreSQL to {have:,} sample rows in {time.perf_counter() - t0:.1f} s")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    runs = store.list_runs()
    target = runs["run_id"].iloc[len(runs) // 2]
    queries = {
        "list_runs(model, tier)": lambda: store.list_runs(model="digits", min_tier="medium"),
        "list_runs(date range)": lambda: store.list_runs(since="2000-01-01", until="2100-01-01"),
        "samples(run, tier=critical)": lambda: store.samples(target, tier="critical"),
        "samples(run, factor=novelty, 100)": lambda: store.samples(target, factor="novelty", limit=100),
        "trend(model, 30 days)": lambda: store.trend("digits", 30),
        "rmf_coverage(model)": lambda: store.rmf_coverage("digits"),
    }
    for name, fn in queries.items():
        fn()
        times = []
        for _ in range(20):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
        p50, p95 = np.percentile(times, [50, 95])
        print(f"  {name:36s} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   {'OK' if p95 < 200 else 'OVER 200 ms'}")
    store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--naive-samples", type=int, default=5_000)
    parser.add_argument("--query-rows", type=int, default=1_000_000)
    parser.add_argument("--per-run", type=int, default=100_000)
    parser.add_argument("--pg", default=None, help="admin URL of a PostgreSQL server (default: local)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_write("sqlite", f"sqlite:///{tmp}/bench.db", args.samples, args.naive_samples)
    admin = sa.create_engine(args.pg or PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"certrisk_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin.url.set(database=name)
    try:
        bench_write("postgresql", url.render_as_string(hide_password=False), args.samples, args.naive_samples)
        if args.query_rows:
            bench_queries(url.render_as_string(hide_password=False), args.query_rows, args.per_run)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
