from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from records import make_record

from certrisk.governance import GovernanceStore


@pytest.fixture
def store(db_url):
    """An upgraded store on each backend."""
    s = GovernanceStore(db_url)
    s.upgrade()
    yield s
    s.dispose()


@pytest.fixture
def record():
    return make_record("run-1", 40)
