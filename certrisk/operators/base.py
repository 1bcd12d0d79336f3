"""The bases of certrisk's operators: arguments stored in ``__init__``, work in ``run``.

Retry or fail is decided here, once, for every operator (STYLE.md, 15). ``execute`` calls the
subclass's ``run(context)``; a ``CertriskError`` escaping it is a domain error (bad input, bad
policy, a model that will not load, a conflicting or forged record, ...) that no retry can fix,
so it becomes ``AirflowFailException`` and the task fails at once instead of burning its
retries. Only errors whose class says ``retryable`` (an unreachable governance database) and
infrastructure errors outside the hierarchy (an artifact store that refused a write, a worker
that ran out of memory) propagate as they are, and Airflow retries them.

``GovernanceOperator`` adds the connection to the governance database: a cached ``hook``
property resolving the ``GovernanceHook`` on first use (common-sql's pattern), never in
``__init__``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, Context, ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from certrisk.operators.artifacts import run_root
from certrisk.operators.hooks import GovernanceHook
from certrisk.schemas.errors import CertriskError
from certrisk.schemas.policy import LoadedPolicy, load_policy


def task_failure(exc: CertriskError) -> AirflowFailException | None:
    """The ``AirflowFailException`` a domain error becomes, or None when its class says a retry
    may help (``exc.retryable``, e.g. ``StoreUnavailableError``). The message keeps the error's
    class name and its own message (which names the file, column, row or key at fault)."""
    if exc.retryable:
        return None
    return AirflowFailException(f"{type(exc).__name__}: {exc}")


class CertriskOperator(BaseOperator):
    """Base for certrisk operators. Subclasses implement ``run(context)`` and return a small
    JSON-able dict (XCom carries only paths and summaries).

    :param policy_path: the model's policy YAML (templated).
    :param artifacts_uri: root of run artifacts (templated); default ``file://$CERTRISK_HOME/artifacts``.
    """

    template_fields: Sequence[str] = ("policy_path", "artifacts_uri")
    ui_color = "#e8f0fe"

    def __init__(self, *, policy_path: str, artifacts_uri: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy_path = policy_path
        self.artifacts_uri = artifacts_uri

    @cached_property
    def loaded_policy(self) -> LoadedPolicy:
        """The validated policy, read on first use inside ``run`` (a PolicyError fails the task)."""
        return load_policy(self.policy_path)

    def run_dir(self, context: Context) -> ObjectStoragePath:
        """The run's artifact directory: ``<artifacts_uri>/<dag_id>/<run_id>``."""
        dag_run = context["dag_run"]
        return run_root(self.artifacts_uri, dag_run.dag_id, dag_run.run_id)

    @staticmethod
    def run_key(context: Context) -> str:
        """Key of the DAG run that seeds derive from: retries of a task reproduce its randomness."""
        dag_run = context["dag_run"]
        return f"{dag_run.dag_id}/{dag_run.run_id}"

    @abstractmethod
    def run(self, context: Context) -> Any:
        """The operator's work; ``execute`` calls it and decides retry or fail. Abstract (Airflow's
        operator metaclass is an ABCMeta): an operator without it cannot be constructed."""

    def execute(self, context: Context) -> Any:
        """Call ``run(context)``; a non-retryable ``CertriskError`` fails the task without retry."""
        try:
            return self.run(context)
        except CertriskError as exc:
            failure = task_failure(exc)
            if failure is None:
                raise
            raise failure from exc


class GovernanceOperator(CertriskOperator):
    """Base for operators that read or write the governance database.

    :param certrisk_conn_id: governance connection id (default ``certrisk_governance_default``;
        when that is undefined, ``$CERTRISK_DB_URL`` or SQLite under ``$CERTRISK_HOME``).
    """

    def __init__(self, *, certrisk_conn_id: str = GovernanceHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.certrisk_conn_id = certrisk_conn_id

    @cached_property
    def hook(self) -> GovernanceHook:
        """The hook to the governance database, resolved on first use (never at DAG parse)."""
        return GovernanceHook(certrisk_conn_id=self.certrisk_conn_id)
