"""Real processes: a writer SIGKILLed mid-transaction leaves nothing; racing writers record once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from records import make_record

CHILD = str(Path(__file__).with_name("writer_child.py"))
N_KILL = 20_000


def _spawn(*args):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(
        [sys.executable, CHILD, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _counts(store):
    with store.engine.connect() as conn:
        return {
            t: conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
            for t in ("pipeline_run", "sample_risk", "certificate", "audit_log", "model", "policy")
        }


def test_sigkill_mid_write_leaves_nothing_then_rerun_writes_once(store):
    store.write_run(make_record("before", 10, seed=3))
    before = _counts(store)
    child = _spawn(store.url, "big", N_KILL, "hang")
    try:
        line = child.stdout.readline()  # every row of the run is inserted, not committed
        assert line.strip() == "rows inserted", child.stderr.read()
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    store.dispose()
    assert _counts(store) == before
    assert store.verify().ok
    rerun = _spawn(store.url, "big", N_KILL, "write")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert out.strip() == "written"
    after = _counts(store)
    assert after["pipeline_run"] == before["pipeline_run"] + 1
    assert after["sample_risk"] == before["sample_risk"] + N_KILL
    assert after["certificate"] == before["certificate"] + 2 * N_KILL
    assert store.write_run(make_record("big", N_KILL)).status == "already recorded"
    report = store.verify()
    assert report.ok and report.runs_checked == 2


def test_two_processes_write_the_same_run_once(store, tmp_path):
    go = tmp_path / "go"
    children = [_spawn(store.url, "raced", 3000, "race", go) for _ in range(2)]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        go.touch()
        results = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    for child, (_out, err) in zip(children, results, strict=True):
        assert child.returncode == 0, err
    assert sorted(out.strip() for out, _ in results) == ["already recorded", "written"]
    counts = _counts(store)
    # one entry for the run, one each for its model and policy rows (created by the winner)
    assert (counts["pipeline_run"], counts["sample_risk"], counts["audit_log"]) == (1, 3000, 3)
    assert (counts["model"], counts["policy"]) == (1, 1)
    assert store.verify().ok
