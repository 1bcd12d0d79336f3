"""Benchmark the governance write path and the dashboard queries.

    python bench/store.py [--samples 100000] [--naive-samples 5000] [--pg URL] [--query-rows 1000000]

1. Write one run of N samples with two certificate methods each (so 3N rows plus the audit entry)
   through ``GovernanceStore.write_run`` (validation, digests, bulk insert, hash chain) on SQLite
   and on PostgreSQL, and the same kind of rows through a naive ORM ``session.add`` loop (one
   object per row, one commit) in the same run; report sample rows/s and the ratio.
   Each is repeated ``--repeat`` times (fresh run ids), interleaved; the median and best are
   reported and the ratio is median over median. Targets: >= 20,000 sample rows/s, >= 10x the naive loop.
2. Fill PostgreSQL to ``--query-rows`` sample rows and time the dashboard queries (20 runs
   each after a warm-up); report p50/p95 in ms. Target: p95 < 200 ms. ``samples`` returns its
   default page (1000 riskiest rows); the unpaginated call is timed for reference only.
"""

from __future__ import annotations

import argparse
import os
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
        model = Model(
            name="naive-" + record.run_id, sha256=record.model_sha256, registered_at=record.created_at
        )
        policy = Policy(
            name="naive-" + record.run_id,
            sha256=record.policy_sha256,
            text=record.policy_text,
            recorded_at=record.created_at,
        )
        session.add_all([model, policy])
        session.flush()
        s = record.summary
        run = PipelineRun(
            dag_id="naive",
            run_id=record.run_id,
            revision=1,
            batch_id=record.batch_id,
            created_at=record.created_at,
            recorded_at=record.created_at,
            model_id=model.id,
            policy_id=policy.id,
            package_version="0",
            n_samples=s["n_samples"],
            abstention_rate=s["abstention_rate"],
            mean_risk=s["mean_risk"],
            tier=s["tier"],
            drift=False,
            summary=s,
            manifest_digest="0" * 64,
        )
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


def bench_write(name: str, url: str, n: int, n_naive: int, repeat: int) -> dict:
    store = GovernanceStore(url)
    store.upgrade()
    rates, naive_rates, verify_seconds, ok = [], [], [], True
    for i in range(repeat):
        record = make_record(f"bench-{uuid.uuid4().hex[:6]}", n, seed=i)
        t0 = time.perf_counter()
        result = store.write_run(record)
        rates.append(n / (time.perf_counter() - t0))
        assert result.status == "written"
        t0 = time.perf_counter()
        ok = ok and store.verify().ok  # before the naive rows, which have no audit entry
        verify_seconds.append(time.perf_counter() - t0)
        naive_record = make_record(f"naive-{uuid.uuid4().hex[:6]}", n_naive, seed=100 + i)
        naive_rates.append(n_naive / naive_write(url, naive_record))
        with store.engine.begin() as conn:  # the naive rows break the chain check of the next round
            for table in ("certificate", "sample_risk"):
                conn.execute(
                    sa.text(
                        f"DELETE FROM {table} WHERE run_pk IN (SELECT id FROM pipeline_run "
                        "WHERE dag_id = 'naive')"
                    )
                )
            conn.execute(sa.text("DELETE FROM pipeline_run WHERE dag_id = 'naive'"))
    store.dispose()
    rate, naive = float(np.median(rates)), float(np.median(naive_rates))
    print(
        f"{name:10s} write_run {n:,} samples + {2 * n:,} certificates + audit, x{repeat}: median {rate:,.0f} "
        f"(best {max(rates):,.0f}) sample rows/s = {3 * rate:,.0f} rows/s; naive session.add {n_naive:,} samples: "
        f"median {naive:,.0f} (best {max(naive_rates):,.0f}) sample rows/s; ratio {rate / naive:.1f}x; "
        f"verify {min(verify_seconds):.2f} s (ok={ok})"
    )
    print(
        f"{'':10s} target >= 20,000 sample rows/s: {'OK' if rate >= 20_000 else 'MISSED'}; "
        f"target >= 10x naive: {'OK' if rate >= 10 * naive else 'MISSED'}"
    )
    return {"rate": rate, "naive": naive}


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
        "samples(run)": lambda: store.samples(target),
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
    t = time.perf_counter()
    n_all = len(store.samples(target, tier="critical", limit=None))
    print(
        f"  (reference, not a dashboard query: samples(run, tier=critical, limit=None) -> {n_all:,} rows in "
        f"{(time.perf_counter() - t) * 1000:.0f} ms)"
    )
    store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--naive-samples", type=int, default=5_000)
    parser.add_argument("--query-rows", type=int, default=1_000_000)
    parser.add_argument("--per-run", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="write measurements per backend")
    parser.add_argument("--pg", default=None, help="admin URL of a PostgreSQL server (default: local)")
    args = parser.parse_args()
    print(f"# {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        bench_write("sqlite", f"sqlite:///{tmp}/bench.db", args.samples, args.naive_samples, args.repeat)
    admin = sa.create_engine(args.pg or PG_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"certrisk_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin.url.set(database=name)
    try:
        bench_write(
            "postgresql",
            url.render_as_string(hide_password=False),
            args.samples,
            args.naive_samples,
            args.repeat,
        )
        if args.query_rows:
            bench_queries(url.render_as_string(hide_password=False), args.query_rows, args.per_run)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
