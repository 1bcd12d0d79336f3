"""A CeleryExecutor deployment for tests and benchmarks: a private ``redis-server`` broker on a
free loopback port, the api-server, scheduler and dag-processor of ``cluster.py`` with the
CeleryExecutor (result backend: the PostgreSQL metadata database), and Celery workers as child
processes, each consuming its own queues under its own name.

Worker names: Airflow records the host a task instance ran on as ``[core] hostname_callable``
gives it (``ti.hostname`` in the task, ``hostname`` in the REST API). On one machine every worker
has the same host name, so each worker here gets ``CERTRISK_WORKER_NAME`` and
``AIRFLOW__CORE__HOSTNAME_CALLABLE=tests.integration.celery_cluster.worker_hostname``, which answers
that name: the record then says which worker ran each task, as separate machines would.

Importing it has no side effects.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.integration.cluster import AIRFLOW, AirflowCluster, free_port, local_executor_env

REPO = Path(__file__).resolve().parents[2]
WORKER_NAME_ENV = "CERTRISK_WORKER_NAME"
HOSTNAME_CALLABLE = "tests.integration.celery_cluster.worker_hostname"

#: Lost-task detection (seconds): the task supervisor heartbeats every MIN_HEARTBEAT_INTERVAL; the
#: scheduler looks for task instances silent for HEARTBEAT_TIMEOUT every DETECTION_INTERVAL, fails
#: them and, with retries left, queues the next try. Airflow's defaults are 5, 300 and 10.
MIN_HEARTBEAT_INTERVAL = 2
HEARTBEAT_TIMEOUT = 20
DETECTION_INTERVAL = 3


def worker_hostname() -> str:
    """``[core] hostname_callable`` of a test worker: its ``CERTRISK_WORKER_NAME``, else the FQDN."""
    return os.environ.get(WORKER_NAME_ENV) or socket.getfqdn()


def redis_server_binary() -> str | None:
    """Path of Debian's ``redis-server`` (package redis-server), or None when it is not installed."""
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).exists()), None
    )


class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port: no persistence, data dir ``workdir``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        with open(self.workdir / "redis.log", "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                + ["--dir", str(self.workdir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.workdir / 'redis.log').read_text()[-2000:]}")
            try:
                if client.ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def celery_executor_env(
    *,
    home: Path,
    port: int,
    metadata_url: str,
    dags_folder: Path,
    broker_url: str,
    extra: dict | None = None,
) -> dict[str, str]:
    """The environment of the services and workers: ``local_executor_env`` with the CeleryExecutor,
    the Redis broker, the metadata DB as result backend and fast lost-task detection."""
    env = local_executor_env(home=home, port=port, metadata_url=metadata_url, dags_folder=dags_folder)
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": "16",
            "AIRFLOW__CELERY__BROKER_URL": broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata_url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            # Longer than any task: Redis redelivers an unacknowledged message after this.
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": str(MIN_HEARTBEAT_INTERVAL),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": str(DETECTION_INTERVAL),
            # This checkout first: its certrisk, and this module for the workers' hostname_callable.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
    )
    env.update(extra or {})
    return env


def signal_tree(pid: int, sig: int) -> list[int]:
    """Send ``sig`` to ``pid`` and every descendant, as a machine's loss would end them all.

    The task supervisor puts each task process in its own process group, so ``killpg`` of the
    worker's group misses it. The tree is first frozen with SIGSTOP (until no new descendant
    appears: a stopped process cannot fork), then signalled. Returns the pids signalled.
    """
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    seen: dict[int, psutil.Process] = {}
    while True:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = list(seen.values())
        new = [p for p in procs if p.pid not in seen]
        if not new:
            break
        for p in new:
            seen[p.pid] = p
            try:
                p.send_signal(signal.SIGSTOP)
            except psutil.NoSuchProcess:
                pass
    for p in seen.values():
        try:
            p.send_signal(sig)
            if sig != signal.SIGKILL:
                p.send_signal(signal.SIGCONT)
        except psutil.NoSuchProcess:
            pass
    return list(seen)


class CeleryCluster(AirflowCluster):
    """``AirflowCluster`` with the CeleryExecutor: the three services plus named Celery workers."""

    def __init__(self, home: Path, env: dict[str, str], port: int):
        super().__init__(home, env, port)
        self.workers: list[str] = []
        self.lost: dict[str, subprocess.Popen] = {}

    def start_worker(self, name: str, queues: list[str], concurrency: int = 1) -> None:
        """Start ``airflow celery worker`` consuming ``queues``; its tasks record ``name`` as host."""
        env = {**self.env, WORKER_NAME_ENV: name, "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE}
        args = ["celery", "worker", "--queues", ",".join(queues), "--concurrency", str(concurrency)]
        args += [
            "--celery-hostname",
            f"{name}@%h",
            "--skip-serve-logs",
            "--without-mingle",
            "--without-gossip",
        ]
        with open(self.home / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [AIRFLOW, *args],
                env=env,
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.workers.append(name)

    def worker_ready(self, name: str) -> bool:
        """Whether the worker answers a Celery remote-control ping (it consumes its queues then)."""
        from celery import Celery

        app = Celery(broker=self.env["AIRFLOW__CELERY__BROKER_URL"])
        try:
            replies = app.control.ping(destination=[f"{name}@{socket.gethostname()}"], timeout=1.0)
        finally:
            app.close()
        return bool(replies)

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL a worker and every process under it (its task processes included): a lost
        machine. Returns the pids killed."""
        proc = self.procs.pop(name)
        pids = signal_tree(proc.pid, signal.SIGKILL) if proc.poll() is None else []  # not reaped: still ours
        proc.wait()
        self.lost[name] = proc
        return pids

    def stop(self, grace: float = 5) -> None:
        """Kill the workers at once (a warm shutdown would wait for running tasks), ask the
        services to stop, and kill whatever still runs after ``grace`` seconds, children included."""
        for name in [w for w in self.workers if w in self.procs]:
            self.kill_worker(name)
        for proc in self.procs.values():
            if proc.poll() is None:  # not reaped, so the pid is still this child's
                signal_tree(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            if proc.poll() is None:
                signal_tree(proc.pid, signal.SIGKILL)
            proc.wait()

    def log_tails(self, lines: int = 40) -> str:
        out = [super().log_tails(lines)]
        for name, proc in self.lost.items():
            text = (self.home / f"{name}.log").read_text(errors="replace").splitlines()
            out.append(f"----- {name} (killed, exit {proc.returncode}) -----\n" + "\n".join(text[-lines:]))
        return "\n".join(out)
