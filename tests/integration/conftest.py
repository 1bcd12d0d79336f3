"""Real Airflow: a migrated metadata DB (once per session) and the demo assets (built once per
recipe under the test cache, see ``tests.conftest.demo_assets_cached``)."""

from __future__ import annotations

import pytest

from tests.conftest import demo_assets_cached
from tests.factories import head_batch


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils.db import resetdb

    resetdb()
    yield


@pytest.fixture(scope="session")
def demo_assets():
    """The digits demo: trained CNN, reference set and the clean, shifted and attacked batches."""
    return demo_assets_cached("digits")


@pytest.fixture(scope="session")
def breast_cancer_assets():
    """The tabular demo: an MLP on the breast cancer data, its reference set and batches."""
    return demo_assets_cached("breast_cancer")


@pytest.fixture(scope="session")
def digits_dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    from certrisk.demo_assets import DAGS_FOLDER

    bag = DagBag(dag_folder=str(DAGS_FOLDER / "certrisk_digits.py"))
    assert bag.import_errors == {}
    return bag.get_dag("certrisk_digits")


@pytest.fixture(scope="session")
def small_batches(demo_assets, tmp_path_factory):
    """The first 96 samples of each demo batch, as files."""
    root = tmp_path_factory.mktemp("batches")
    return {
        name: head_batch(path, 96, root / f"{name}.parquet") for name, path in demo_assets.batches.items()
    }
