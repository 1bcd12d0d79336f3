"""Path templating: only CERTRISK_HOME and variables the deployment allows are expanded."""

from __future__ import annotations

import pytest

from certrisk.schemas.errors import InputError
from certrisk.schemas.settings import PATH_VARIABLES_ENV, certrisk_home, expand_path


def test_certrisk_home_and_user_expand():
    assert expand_path("${CERTRISK_HOME}/x.parquet") == f"{certrisk_home()}/x.parquet"
    assert not expand_path("~/x").startswith("~")


def test_other_variables_are_refused_and_never_printed(monkeypatch):
    secret = "postgresql://u:s3cr3t-pw@db/x"
    monkeypatch.setenv("AIRFLOW_CONN_X", secret)
    with pytest.raises(InputError) as err:
        expand_path("${AIRFLOW_CONN_X}")
    assert "${AIRFLOW_CONN_X}" in str(err.value)
    assert "s3cr3t" not in str(err.value)


def test_deployment_allows_more(monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "/data")
    monkeypatch.setenv(PATH_VARIABLES_ENV, "DATA_ROOT")
    assert expand_path("${DATA_ROOT}/b.parquet") == "/data/b.parquet"
    with pytest.raises(InputError, match="HOME"):
        expand_path("${HOME}/b.parquet")
