"""Real Airflow: a migrated metadata DB (once per session) and the demo assets (cached)."""

from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils.db import resetdb

    resetdb()
    yield


@pytest.fixture(scope="session")
def demo_assets():
    from certrisk.demo import prepare_demo

    return prepare_demo(log=lambda *_: None)


@pytest.fixture(scope="session")
def digits_dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    from certrisk.demo import DAGS_FOLDER

    bag = DagBag(dag_folder=str(DAGS_FOLDER / "certrisk_digits.py"))
    assert bag.import_errors == {}
    return bag.get_dag("certrisk_digits")


@pytest.fixture(scope="session")
def small_batches(demo_assets, tmp_path_factory):
    """The first 96 samples of each demo batch, as files."""
    root = tmp_path_factory.mktemp("batches")
    out = {}
    for name, path in demo_assets.batches.items():
        p = root / f"{name}.parquet"
        pd.read_parquet(path).head(96).to_parquet(p, index=False)
        out[name] = p
    return out
