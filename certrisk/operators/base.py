"""The base of certrisk's operators: arguments stored in ``__init__``, work in ``execute``.

Domain errors that a retry cannot fix (bad input, bad policy, a model that will not load) become
``AirflowFailException``, so the task fails at once instead of burning its retries; retryable
ones (an unreachable governance database) propagate and Airflow retries them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from certrisk.operators.artifacts import run_root
from certrisk.schemas.errors import CertriskError
from certrisk.schemas.policy import LoadedPolicy, load_policy


class CertriskOperator(BaseOperator):
    """Base for certrisk operators.

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
        return load_policy(self.policy_path)

    def run_dir(self, context: Context):
        dag_run = context["dag_run"]
        return run_root(self.artifacts_uri, dag_run.dag_id, dag_run.run_id)

    @staticmethod
    def run_key(context: Context) -> str:
        """Key of the DAG run that seeds derive from: retries of a task reproduce its randomness."""
        dag_run = context["dag_run"]
        return f"{dag_run.dag_id}/{dag_run.run_id}"

    def execute(self, context: Context) -> Any:
        """Call the subclass's ``run(context)``, translating non-retryable domain errors."""
        try:
            return self.run(context)
        except CertriskError as exc:
            if exc.retryable:
                raise
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
