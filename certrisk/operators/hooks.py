"""GovernanceHook: resolves an Airflow connection to a GovernanceStore.

Connection type ``certrisk_governance``: either a full SQLAlchemy URL in the connection's
``host`` field or its extra ``{"url": ...}``, or the parts (host, schema = database, login,
password, port; extra ``{"dialect": "postgresql+psycopg"}``, default postgresql+psycopg).
When the default connection id is not defined, the hook falls back to ``$CERTRISK_DB_URL`` or
SQLite under ``$CERTRISK_HOME`` so the example DAG runs with no set-up; that embedded default is
migrated on first use, while a configured connection is never migrated implicitly (run
``certrisk db upgrade --db URL`` as an administrator). Credentials are never logged: only the URL
with its password masked.
The connection form's labels and extra fields are declared in ``certrisk.provider``.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook
from sqlalchemy.engine import URL, make_url

from certrisk.schemas.settings import default_db_url

if TYPE_CHECKING:
    from certrisk.governance import GovernanceStore


class GovernanceHook(BaseHook):
    """Hook to the certrisk governance database.

    :param certrisk_conn_id: connection id; default ``certrisk_governance_default``.
    """

    conn_name_attr = "certrisk_conn_id"
    default_conn_name = "certrisk_governance_default"
    conn_type = "certrisk_governance"
    hook_name = "certrisk governance DB"

    def __init__(self, certrisk_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.certrisk_conn_id = certrisk_conn_id
        self._embedded_default = False

    def get_url(self) -> URL:
        """The SQLAlchemy URL of the connection (fallback: CERTRISK_DB_URL or the default SQLite)."""
        try:
            conn = self.get_connection(self.certrisk_conn_id)
        except Exception as exc:  # the SDK raises AirflowNotFoundException (or a runtime error outside tasks)
            if self.certrisk_conn_id != self.default_conn_name:
                raise
            self.log.debug(
                "connection %s not defined (%s); using the default URL", self.certrisk_conn_id, exc
            )
            self._embedded_default = True
            return make_url(default_db_url())
        extra = conn.extra_dejson or {}
        if extra.get("url"):
            return make_url(extra["url"])
        if conn.host and "://" in conn.host:
            return make_url(conn.host)
        return URL.create(
            drivername=extra.get("dialect", "postgresql+psycopg"),
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
        )

    @cached_property
    def store(self) -> GovernanceStore:
        """The GovernanceStore behind this connection, built on first use; the embedded default
        database is migrated then (a configured one never is)."""
        from certrisk.governance import GovernanceStore

        url = self.get_url()
        self.log.info("governance DB: %s", url.render_as_string(hide_password=True))
        store = GovernanceStore(url.render_as_string(hide_password=False))
        if self._embedded_default:
            store.upgrade()
        return store

    def get_store(self) -> GovernanceStore:
        """The GovernanceStore behind this connection (created once per hook)."""
        return self.store

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.get_store().current_revision()
        except Exception as exc:  # noqa: BLE001 - the UI shows the message
            return False, str(exc)
        return True, "governance DB reachable"
