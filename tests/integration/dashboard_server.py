"""A real Airflow API server for the dashboard's integration tests (test_dashboard_auth,
test_dashboard_screens): a SQLite metadata DB, the simple or the FAB auth manager with users of
known passwords (one with each permission level and one without), the certrisk governance DB
with recorded runs, and for the simple one a real DAG run (``dag.test``) of a report and a score
task whose (dag_id, run_id) has a governance record, for the extra links and the run page's tab.

One server per auth manager per pytest session, kept in the config's stash, stopped at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.cluster import AirflowCluster, free_port, local_executor_env

REPO = Path(__file__).resolve().parents[2]
SIMPLE = "simple"
FAB = "fab"
FAB_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
#: user -> role, per auth manager: "viewer" may read the compliance edition, "op" the engineer
#: edition too, "nobody" neither (no role in the simple manager, a role without certrisk in FAB).
ROLES = {
    SIMPLE: {"viewer": "viewer", "op": "op", "nobody": ""},
    FAB: {"viewer": "Viewer", "op": "Op", "nobody": "NoCertrisk"},
}
PROBE_DAG = """
from airflow.sdk import DAG
from certrisk.operators.report import ComplianceReportOperator
from certrisk.operators.score import RiskScoreOperator

with DAG("certrisk_digits", schedule=None, catchup=False):
    ComplianceReportOperator(task_id="report", policy_path="unused.yaml", formats=["html"])
    RiskScoreOperator(task_id="score", policy_path="unused.yaml", batch={}, certified={})
"""
RUN_PROBE = """
import json
from datetime import datetime, UTC
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder={dags!r}).dags["certrisk_digits"]
run = dag.test(logical_date=datetime(2026, 1, 2, tzinfo=UTC), mark_success_pattern="report|score")
print("PROBE " + json.dumps({{"run_id": run.run_id, "state": str(run.state)}}))
"""
FAB_SETUP = """
import json, sys
from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder
from certrisk.plugin_auth import grant_fab_permissions
with get_application_builder() as appbuilder:
    sm = appbuilder.sm
    grant_fab_permissions(sm)
    for name, (role, password) in json.loads(sys.argv[1]).items():
        sm.add_user(name, name, "test", name + "@example.com", [sm.find_role(role) or sm.add_role(role)], password)
"""


@dataclass
class DashboardServer:
    auth: str
    cluster: AirflowCluster
    passwords: dict[str, str]
    #: The recorded runs' DAG and the run the DAG-run tab and extra links point at.
    dag_id: str = "certrisk_digits"
    run_id: str | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.cluster.base

    def token(self, user: str) -> str:
        if user not in self.tokens:
            body = json.dumps({"username": user, "password": self.passwords[user]}).encode()
            req = urllib.request.Request(
                self.base + "/auth/token",
                data=body,
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                self.tokens[user] = json.loads(resp.read())["access_token"]
        return self.tokens[user]

    def get(self, path: str, *, user: str | None = None, cookie: str | None = None) -> tuple[int, str]:
        headers = {}
        if user:
            headers["Authorization"] = f"Bearer {self.token(user)}"
        if cookie:
            headers["Cookie"] = f"_token={cookie}"
        req = urllib.request.Request(self.base + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")


def _run(env: dict, home: Path, *args: str, timeout: float = 240) -> str:
    done = subprocess.run(
        args, env=env, cwd=home, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args[:3]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def _governance(url: str, probe_run_id: str | None) -> None:
    """Four daily runs (two of them shifted: tiers differ), the probe run's record, a stored verify."""
    sys.path.insert(0, str(REPO / "tests" / "reports"))
    from report_runs import make_run

    from certrisk.governance.store import GovernanceStore

    store = GovernanceStore(url)
    store.upgrade()
    now = datetime.now(UTC)
    for day in range(4, 0, -1):
        created = now - timedelta(days=day, hours=2)
        store.write_run(
            make_run(f"scheduled__day{day}", n=40, seed=100 + day, shift=0.25 * (day % 2), created_at=created)
        )
    if probe_run_id:
        store.write_run(make_run(probe_run_id, shift=0.25, seed=7, created_at=now - timedelta(hours=1)))
    store.verify(record=True, verified_by="ci-auditor")
    store.dispose()


def _environment(home: Path, auth: str, port: int) -> dict[str, str]:
    db = home / "airflow.db"
    extra = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"sqlite+aiosqlite:///{db}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in ROLES[SIMPLE].items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "CERTRISK_DB_URL": f"sqlite:///{home / 'governance.db'}",
        "CERTRISK_HOME": str(home / "certrisk"),
    }
    if auth == FAB:
        extra["AIRFLOW__CORE__AUTH_MANAGER"] = FAB_MANAGER
    return local_executor_env(
        home=home, port=port, metadata_url=f"sqlite:///{db}", dags_folder=home / "dags", extra=extra
    )


def start(home: Path, auth: str) -> DashboardServer:
    """Migrate, set users up, record runs, start the API server and wait until it answers."""
    port = free_port()
    env = _environment(home, auth, port)
    (home / "dags").mkdir(parents=True)
    passwords = {user: f"pw-{user}-{port}" for user in ROLES[auth]}
    (home / "passwords.json").write_text(json.dumps(passwords))
    cluster = AirflowCluster(home, env, port)
    phases = {"start": time.monotonic()}
    cluster.migrate()
    phases["migrate"] = time.monotonic()
    run_id = None
    if auth == FAB:
        users = {u: [ROLES[FAB][u], passwords[u]] for u in passwords}
        _run(
            {**env, "AIRFLOW__FAB__UPDATE_FAB_PERMS": "False"},
            home,
            sys.executable,
            "-c",
            FAB_SETUP,
            json.dumps(users),
        )
    else:
        (home / "dags" / "certrisk_probe.py").write_text(textwrap.dedent(PROBE_DAG))
        out = _run(env, home, sys.executable, "-c", RUN_PROBE.format(dags=str(home / "dags")))
        run_id = json.loads(out.rsplit("PROBE ", 1)[1].splitlines()[0])["run_id"]
    phases["users" if auth == FAB else "dag run"] = time.monotonic()
    _governance(env["CERTRISK_DB_URL"], run_id)
    phases["governance"] = time.monotonic()
    cluster.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1")
    server = DashboardServer(auth, cluster, passwords, run_id=run_id)
    try:
        cluster.wait_for(
            "the API server", lambda: server.get("/api/v2/monitor/health")[0] == 200, timeout=240
        )
    except Exception:
        cluster.stop()
        raise
    phases["api-server"] = time.monotonic()
    steps = list(phases.items())
    print(auth, ", ".join(f"{name} {t - steps[i][1]:.0f} s" for i, (name, t) in enumerate(steps[1:])))
    return server


_KEYS = {auth: pytest.StashKey[DashboardServer]() for auth in (SIMPLE, FAB)}


def shared_server(request: pytest.FixtureRequest, tmp_path_factory, auth: str) -> DashboardServer:
    """The session's server for ``auth`` (started on first use, stopped when the session ends)."""
    stash = request.config.stash
    if _KEYS[auth] not in stash:
        started = time.monotonic()
        server = start(tmp_path_factory.mktemp(f"airflow-{auth}"), auth)
        request.config.add_cleanup(server.cluster.stop)
        print(f"dashboard server ({auth}) ready in {time.monotonic() - started:.0f} s")
        stash[_KEYS[auth]] = server
    return stash[_KEYS[auth]]
