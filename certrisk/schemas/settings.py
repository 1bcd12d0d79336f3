"""Where state lives. Everything certrisk writes by default goes under ``CERTRISK_HOME``."""

from __future__ import annotations

import os
import re
from pathlib import Path

from certrisk.schemas.errors import InputError

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


#: Comma-separated names of further environment variables a path may name as ``${NAME}``.
PATH_VARIABLES_ENV = "CERTRISK_PATH_VARIABLES"
#: Comma-separated module names (and their submodules) whose callables a policy may name as a
#: model factory, beside the factories registered under the ``certrisk.models`` entry points.
FACTORY_MODULES_ENV = "CERTRISK_FACTORY_MODULES"
_TEMPLATE = re.compile(r"\$\{([^}]*)\}")


def _names(env: str) -> frozenset[str]:
    return frozenset(n.strip() for n in os.environ.get(env, "").split(",") if n.strip())


def allowed_path_variables() -> frozenset[str]:
    """Variables a path may name: CERTRISK_HOME always, plus those the deployment lists in
    ``$CERTRISK_PATH_VARIABLES``. Anything else in a path (a connection's secret in
    ``AIRFLOW_CONN_*``, say) is refused, never expanded."""
    return frozenset({HOME_ENV}) | _names(PATH_VARIABLES_ENV)


def allowed_factory_modules() -> frozenset[str]:
    """Modules whose callables policies may name as factories (``$CERTRISK_FACTORY_MODULES``)."""
    return _names(FACTORY_MODULES_ENV)


def expand_path(value: str, *, what: str = "path") -> str:
    """Expand ``${CERTRISK_HOME}``, the deployment's allowed variables and ``~`` in a path.

    Any other ``${NAME}`` raises InputError naming the variable (never its value): a path comes
    from DAG params and policies, which must not be a way to read the worker's environment.
    """
    allowed = allowed_path_variables()
    refused = sorted({m.group(1) for m in _TEMPLATE.finditer(value)} - allowed)
    if refused:
        raise InputError(
            f"{what} names ${{{refused[0]}}}, which is not an allowed path variable "
            f"(allowed: {', '.join(sorted(allowed))}; a deployment allows more in ${PATH_VARIABLES_ENV})"
        )

    def substitute(match: re.Match) -> str:
        name = match.group(1)
        return str(certrisk_home()) if name == HOME_ENV else os.environ.get(name, "")

    return os.path.expanduser(_TEMPLATE.sub(substitute, value))
