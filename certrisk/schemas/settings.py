"""Where state lives. Everything certrisk writes by default goes under ``CERTRISK_HOME``."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "CERTRISK_HOME"
DB_URL_ENV = "CERTRISK_DB_URL"


def certrisk_home() -> Path:
    """The state directory: ``$CERTRISK_HOME``, default ``./.certrisk``, as an absolute path."""
    return Path(os.environ.get(HOME_ENV) or ".certrisk").expanduser().resolve()


def default_db_url() -> str:
    """The governance DB URL: ``$CERTRISK_DB_URL``, default SQLite under ``CERTRISK_HOME``."""
    url = os.environ.get(DB_URL_ENV)
    if url:
        return url
    return f"sqlite:///{certrisk_home() / 'governance.db'}"


def artifacts_root() -> Path:
    """Default root of per-run artifacts (a local directory; production uses object storage)."""
    return certrisk_home() / "artifacts"


def cache_dir() -> Path:
    """Cache of derived data keyed by content hashes (reference radii, Lipschitz constants)."""
    return certrisk_home() / "cache"


def expand_path(value: str) -> str:
    """Expand ``${CERTRISK_HOME}``, other environment variables and ``~`` in a path string."""
    env = dict(os.environ)
    env.setdefault(HOME_ENV, str(certrisk_home()))
    expanded = value
    for key, val in env.items():
        expanded = expanded.replace("${" + key + "}", val)
    return os.path.expanduser(expanded)
