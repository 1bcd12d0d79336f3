import pytest
from airflow.sdk.exceptions import AirflowFailException

from certrisk.operators.base import CertriskOperator, GovernanceOperator
from certrisk.operators.hooks import GovernanceHook
from certrisk.schemas.errors import (
    InputError,
    ModelLoadError,
    PolicyError,
    RecordConflictError,
    RunNotFoundError,
    StoreError,
    StoreUnavailableError,
    VerificationError,
)


class _Raises(CertriskOperator):
    def __init__(self, *, error, **kwargs):
        super().__init__(**kwargs)
        self.error = error

    def run(self, context):
        raise self.error


class _ReadsPolicy(CertriskOperator):
    def run(self, context):
        return self.loaded_policy


def test_constructor_only_stores_arguments():
    op = _Raises(task_id="t", policy_path="/does/not/exist.yaml", error=None)
    assert op.policy_path == "/does/not/exist.yaml"  # nothing was read at construction


def test_bad_input_fails_without_retry():
    op = _Raises(task_id="t", policy_path="p.yaml", error=InputError("batch.parquet: NaN in row 3"))
    with pytest.raises(AirflowFailException, match="InputError: batch.parquet: NaN in row 3"):
        op.execute({})


@pytest.mark.parametrize(
    "error",
    [
        PolicyError("digits.yaml: unknown key 'sigmaa'"),
        ModelLoadError("model.pt: pickled file refused"),
        StoreError("write refused"),
        RecordConflictError("certrisk_digits/run-1 was recorded with another payload"),
        RunNotFoundError("no run run-9"),
        VerificationError("audit_log row 4 differs"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_domain_error_fails_without_retry(error):
    op = _Raises(task_id="t", policy_path="p.yaml", error=error)
    with pytest.raises(AirflowFailException, match=f"^{type(error).__name__}: ") as info:
        op.execute({})
    assert info.value.__cause__ is error


def test_unreachable_store_is_retried():
    op = _Raises(task_id="t", policy_path="p.yaml", error=StoreUnavailableError("db down"))
    with pytest.raises(StoreUnavailableError):
        op.execute({})


def test_infrastructure_errors_are_retried():
    op = _Raises(task_id="t", policy_path="p.yaml", error=OSError("artifact store refused the write"))
    with pytest.raises(OSError, match="artifact store"):
        op.execute({})


def test_an_unreadable_policy_fails_without_retry(tmp_path):
    missing = tmp_path / "missing.yaml"
    op = _ReadsPolicy(task_id="t", policy_path=str(missing))
    with pytest.raises(AirflowFailException, match=f"PolicyError: {missing}: cannot read policy file"):
        op.execute({})


class _Reader(GovernanceOperator):
    """The smallest concrete governance operator (the base's run is abstract)."""

    def run(self, context):
        return {}


def test_an_operator_without_run_cannot_be_constructed():
    with pytest.raises(TypeError, match="abstract method run"):
        GovernanceOperator(task_id="t", policy_path="p.yaml")


def test_governance_hook_is_resolved_on_first_use_and_cached():
    op = _Reader(task_id="t", policy_path="p.yaml", certrisk_conn_id="gov_x")
    assert "hook" not in op.__dict__  # nothing resolved at construction
    hook = op.hook
    assert isinstance(hook, GovernanceHook) and hook.certrisk_conn_id == "gov_x"
    assert op.hook is hook
    assert _Reader(task_id="u", policy_path="p.yaml").hook.certrisk_conn_id == (
        GovernanceHook.default_conn_name
    )


def test_templated_fields_extend_the_parent():
    from certrisk.operators import CertifyOperator, GovernanceWriteOperator, ValidateBatchOperator

    for cls in (CertifyOperator, GovernanceWriteOperator, ValidateBatchOperator):
        assert {"policy_path", "artifacts_uri"} <= set(cls.template_fields)
    assert "batch_uri" in ValidateBatchOperator.template_fields
    assert issubclass(GovernanceWriteOperator, GovernanceOperator)
