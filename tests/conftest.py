"""Shared fixtures. Environment first: Airflow reads its configuration at import, so every
variable is set here before any test module imports airflow."""

from __future__ import annotations

import os
import tempfile
import uuid
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
