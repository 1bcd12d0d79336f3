"""The error hierarchy. Every message names the file, column, row or key at fault.

``retryable`` tells orchestration whether trying again can help: bad input and bad policy
never get better on retry (operators raise ``AirflowFailException`` for them); an unreachable
database may.
"""


class CertriskError(Exception):
    """Base of every error certrisk raises on purpose."""

    retryable = False


class InputError(CertriskError, ValueError):
    """Bad input data: NaN/inf, wrong shape or dtype, empty batch, duplicate ids, mismatched features."""


class PolicyError(CertriskError, ValueError):
    """A policy file that does not validate: unknown key, wrong type, missing file it names."""


class ModelLoadError(CertriskError):
    """A model file that cannot be loaded safely: corrupt, pickled, wrong hash, unknown factory."""


class StoreError(CertriskError):
    """The governance store refused or failed an operation."""


class StoreUnavailableError(StoreError):
    """The governance database could not be reached. Retrying later may help."""

    retryable = True


class RunNotFoundError(StoreError):
    """No recorded run matches the run id (and DAG id, revision) asked for."""


class RecordConflictError(StoreError):
    """A run with the same (dag_id, run_id) was recorded with a different payload."""


class VerificationError(StoreError):
    """The audit chain or the recorded rows do not match their digests."""
