import pytest
from airflow.sdk.exceptions import AirflowFailException

from certrisk.operators.base import CertriskOperator
from certrisk.schemas.errors import InputError, StoreUnavailableError


class _Raises(CertriskOperator):
    def __init__(self, *, error, **kwargs):
        super().__init__(**kwargs)
        self.error = error

    def run(self, context):
        raise self.error


def test_constructor_only_stores_arguments():
    op = _Raises(task_id="t", policy_path="/does/not/exist.yaml", error=None)
    assert op.policy_path == "/does/not/exist.yaml"  # nothing was read at construction


def test_bad_input_fails_without_retry():
    op = _Raises(task_id="t", policy_path="p.yaml", error=InputError("batch.parquet: NaN in row 3"))
    with pytest.raises(AirflowFailException, match="InputError: batch.parquet: NaN in row 3"):
        op.execute({})


def test_unreachable_store_is_retried():
    op = _Raises(task_id="t", policy_path="p.yaml", error=StoreUnavailableError("db down"))
    with pytest.raises(StoreUnavailableError):
        op.execute({})


def test_templated_fields_extend_the_parent():
    from certrisk.operators import CertifyOperator, GovernanceWriteOperator, ValidateBatchOperator

    for cls in (CertifyOperator, GovernanceWriteOperator, ValidateBatchOperator):
        assert {"policy_path", "artifacts_uri"} <= set(cls.template_fields)
    assert "batch_uri" in ValidateBatchOperator.template_fields
