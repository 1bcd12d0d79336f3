import json
import logging

import pytest

from certrisk.operators.hooks import GovernanceHook
from certrisk.schemas.settings import default_db_url


def test_default_connection_falls_back_to_embedded_sqlite(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_CERTRISK_GOVERNANCE_DEFAULT", raising=False)
    url = GovernanceHook().get_url()
    assert url.render_as_string(hide_password=False) == default_db_url()


def test_full_url_in_extra(monkeypatch):
    conn = {"conn_type": "certrisk_governance", "extra": {"url": "postgresql+psycopg://w:s3cr3t@db:5432/gov"}}
    monkeypatch.setenv("AIRFLOW_CONN_GOV_A", json.dumps(conn))
    url = GovernanceHook("gov_a").get_url()
    assert (url.host, url.database, url.username, url.password) == ("db", "gov", "w", "s3cr3t")


def test_parts_build_a_postgres_url(monkeypatch):
    conn = {
        "conn_type": "certrisk_governance",
        "host": "db.internal",
        "schema": "certrisk",
        "login": "writer",
        "password": "pw",
        "port": 6432,
    }
    monkeypatch.setenv("AIRFLOW_CONN_GOV_B", json.dumps(conn))
    url = GovernanceHook("gov_b").get_url()
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.database, url.username) == ("db.internal", 6432, "certrisk", "writer")


def test_undefined_custom_connection_is_an_error(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NOPE", raising=False)
    with pytest.raises(Exception, match="nope"):
        GovernanceHook("nope").get_url()


def test_password_never_logged(monkeypatch, caplog, capsys, tmp_path):
    """Airflow 3 hooks log through structlog to stdout; check both it and the logging records."""
    db = tmp_path / "g.db"
    conn = {"conn_type": "certrisk_governance", "extra": {"url": f"sqlite:///{db}"}}
    monkeypatch.setenv("AIRFLOW_CONN_GOV_C", json.dumps(conn))
    hook = GovernanceHook("gov_c")
    with caplog.at_level(logging.DEBUG):
        store = hook.get_store()
    logged = caplog.text + capsys.readouterr().out
    assert str(db) in logged
    assert store.url.endswith("g.db")
    conn = {
        "conn_type": "certrisk_governance",
        "extra": {"url": "postgresql+psycopg://u:topsecret@127.0.0.1:1/x"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_GOV_D", json.dumps(conn))
    with caplog.at_level(logging.DEBUG):
        GovernanceHook("gov_d").store  # noqa: B018 - building the store logs its URL
        ok, message = GovernanceHook("gov_d").test_connection()
    logged = caplog.text + capsys.readouterr().out
    assert not ok
    assert "127.0.0.1" in logged and "***" in logged
    assert "topsecret" not in logged and "topsecret" not in message
