"""Shared fixtures. Environment first: Airflow reads its configuration at import, so every
variable is set here before any test module imports airflow.

Each session gets a fresh temporary CERTRISK_HOME and AIRFLOW_HOME. What is expensive and
deterministic (the demo's trained models, reference sets and batches) outlives the session in
``$CERTRISK_TEST_CACHE`` (default ``~/.cache/certrisk-tests``), keyed by the demo's recipe, so a
second ``make test`` does not train again; ``demo_assets_cached`` links it into the session's
home, where the example policies look for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Idempotent: a test module that imports this file again (``from tests.conftest import ...``) must
# not mint a second temporary home in the middle of the session.
_SESSION_TMP = Path(os.environ.get("CERTRISK_TEST_SESSION_TMP") or tempfile.mkdtemp(prefix="certrisk-tests-"))
os.environ["CERTRISK_TEST_SESSION_TMP"] = str(_SESSION_TMP)

os.environ["CERTRISK_HOME"] = str(_SESSION_TMP / "home")
os.environ.pop("CERTRISK_DB_URL", None)
os.environ["AIRFLOW_HOME"] = str(_SESSION_TMP / "airflow")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_SESSION_TMP / 'airflow' / 'airflow.db'}"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
(_SESSION_TMP / "airflow").mkdir(parents=True, exist_ok=True)

#: Where the demo assets of past sessions are kept (delete it to rebuild them).
TEST_CACHE = Path(os.environ.get("CERTRISK_TEST_CACHE") or Path.home() / ".cache" / "certrisk-tests")


def _demo_recipe_key(dataset: str) -> str:
    """What a dataset's assets depend on: the demo's version, seed and spec, the policy text (its
    sigma) and the libraries that train and attack. A change to any of them builds anew."""
    import numpy
    import sklearn
    import torch

    from certrisk import demo_assets

    spec = demo_assets.DATASETS[dataset]
    recipe = {
        "version": demo_assets.DEMO_VERSION,
        "seed": demo_assets.DEMO_SEED,
        "spec": {k: str(v) for k, v in asdict(spec).items() if k != "policy"},
        "policy": spec.policy.read_text(),
        "libraries": [torch.__version__, numpy.__version__, sklearn.__version__],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def demo_assets_cached(dataset: str):
    """A demo dataset's DemoAssets, built at most once per recipe under TEST_CACHE (a file lock
    keeps concurrent sessions from building it twice) and linked as ``$CERTRISK_HOME/demo/<dataset>``."""
    from certrisk.demo_assets import prepare_demo
    from certrisk.schemas.settings import certrisk_home

    cache_home = TEST_CACHE / f"{dataset}-{_demo_recipe_key(dataset)}"
    cache_home.mkdir(parents=True, exist_ok=True)
    with (cache_home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            assets = prepare_demo(cache_home, dataset=dataset, log=lambda *_: None)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    link = certrisk_home() / "demo" / dataset
    if not (link.is_symlink() or link.exists()):
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(assets.root, target_is_directory=True)
    return assets


PG_ADMIN_URL = os.environ.get(
    "CERTRISK_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _pg_reachable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 - any failure means: no server to test against
        return f"PostgreSQL at 127.0.0.1:5432 is not reachable ({type(exc).__name__}: {exc})"


def require_postgres() -> None:
    """Skip with the reason when PostgreSQL is down; fail instead under CI (CERTRISK_REQUIRE_POSTGRES=1)."""
    reason = _pg_reachable()
    if reason is None:
        return
    if os.environ.get("CERTRISK_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL tests must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    yield from _pg_db()


@pytest.fixture
def sqlite_url(tmp_path):
    """A fresh SQLite governance database file."""
    return f"sqlite:///{tmp_path / 'governance.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Both governance backends: SQLite always, PostgreSQL when reachable (always in CI)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'governance.db'}"
    else:
        yield from _pg_db()


def _pg_db():
    require_postgres()
    import psycopg

    name = f"certrisk_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
