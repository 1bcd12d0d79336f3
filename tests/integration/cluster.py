"""A local Airflow deployment for tests and benchmarks: api-server, scheduler (LocalExecutor) and
dag-processor as child processes on a PostgreSQL metadata database and a free loopback port.

Used by the real-scheduler test and by ``bench/scale.py``. Importing it has no side effects.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_db(name: str) -> str:
    """Create a PostgreSQL database on the local server; returns its SQLAlchemy URL."""
    import psycopg

    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_db(name: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def local_executor_env(
    *,
    home: Path,
    port: int,
    metadata_url: str,
    dags_folder: Path,
    parallelism: int = 2,
    extra: dict | None = None,
) -> dict[str, str]:
    """The environment all three services share (the parent's, minus its AIRFLOW_* settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            # psycopg 3 serves the async engine too (Airflow's derived default wants asyncpg)
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": metadata_url.replace("+psycopg:", "+psycopg_async:"),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # Only the runs a caller triggers: no run for a schedule's last interval.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "GX_ANALYTICS_ENABLED": "False",
        }
    )
    env.update(extra or {})
    return env


class AirflowCluster:
    """The three Airflow services as child processes, each in its own process group."""

    def __init__(self, home: Path, env: dict[str, str], port: int):
        self.home = home
        self.env = env
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.token: str | None = None

    def migrate(self, timeout: float = 180) -> None:
        done = subprocess.run(
            [AIRFLOW, "db", "migrate"],
            check=False,
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError("airflow db migrate failed:\n" + done.stdout[-3000:] + done.stderr[-3000:])

    def start(self, name: str, *args: str) -> None:
        with open(self.home / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [AIRFLOW, *args],
                env=self.env,
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_all(self) -> None:
        self.start(
            "api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"
        )
        self.start("scheduler", "scheduler")
        self.start("dag-processor", "dag-processor")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # children the service forked (executor workers)
            except ProcessLookupError:
                pass
            proc.wait()

    def log_tails(self, lines: int = 40) -> str:
        out = []
        for name in self.procs:
            text = (self.home / f"{name}.log").read_text(errors="replace").splitlines()
            out.append(f"----- {name} (exit {self.procs[name].poll()}) -----\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"Airflow process(es) exited early: {dead}\n{self.log_tails()}")

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, {"detail": raw.decode(errors="replace")}

    def wait_for(self, what: str, probe, timeout: float, interval: float = 1.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                last = probe()
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(interval)
        raise RuntimeError(
            f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}\n{self.log_tails()}"
        )
