"""The model check: does the policy's model load, through the factory allowlist, and give one logit
per policy class? And ``check_policy``, what ``certrisk policy check`` prints.

``load_checked_model`` is the one place that check lives. The DAG's first task
(``ValidateBatchOperator``) runs it before it stages the batch, so a model that will not load (an
unregistered factory, weights that do not fit it, a pickled file, a wrong sha256) or that gives the
wrong number of logits fails the run before rules and drift run; ``check_policy`` runs it first too.

``check_policy`` then goes further, on this machine: the base model's accuracy and health on the
labelled reference set, and every policy method certifying a handful of reference samples, timed,
so the user sees what a batch of 1,000 samples will cost before a DAG runs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from certrisk.operators.reference import load_reference
from certrisk.risk.certify import certify_with_spec, derive_seeds, method_available
from certrisk.risk.data import Batch
from certrisk.risk.health import check_model, check_output_shape
from certrisk.risk.models import LoadedModel, load_model
from certrisk.schemas.columns import ABSTAIN
from certrisk.schemas.errors import InputError
from certrisk.schemas.policy import LoadedPolicy, MethodSpec, load_policy

#: Reference samples ``check_policy`` certifies by default.
CHECK_SAMPLES = 16
#: The run key the check's certification seeds derive from (nothing is recorded).
CHECK_RUN_KEY = "certrisk-policy-check"


def load_checked_model(lp: LoadedPolicy, *, device: str | torch.device | None = None) -> LoadedModel:
    """The policy's model, loaded without pickle through the factory allowlist, after one zero
    input of ``model.input_shape`` gave exactly one logit per ``model.classes`` entry.

    Raises PolicyError (an unregistered factory, bad ``factory_kwargs``) or ModelLoadError (a
    missing, pickled, corrupt or re-pinned file; weights that do not fit; a wrong output shape),
    each naming the file or policy key at fault.
    """
    pol = lp.policy
    loaded = load_model(pol.model, lp.model_path, device=device)
    check_output_shape(loaded.module, pol.model.input_shape, pol.model.classes, loaded.device)
    return loaded


def labelled_reference(lp: LoadedPolicy) -> Batch:
    """The policy's reference set, which must carry labels that index ``model.classes``."""
    reference = load_reference(lp)
    classes = lp.policy.model.classes
    if reference.labels is None:
        raise InputError(
            f"{lp.reference_path}: the reference set needs a label column "
            f"({lp.policy.data.label_column!r}, integers indexing model.classes)"
        )
    bad = (reference.labels < 0) | (reference.labels >= len(classes))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{lp.reference_path}: label {int(reference.labels[row])} in row {row} (sample_id "
            f"{reference.ids[row]!r}) is not an index into model.classes ({len(classes)} classes)"
        )
    return reference


@dataclass(frozen=True)
class MethodTiming:
    """One method on the check's samples: how long it took and what it certified."""

    method: str
    available: bool
    seconds_per_1000: float | None = None
    abstention_rate: float | None = None
    accuracy: float | None = None
    note: str = ""


@dataclass(frozen=True)
class PolicyCheck:
    """What ``certrisk policy check`` found. Accuracies are shares of samples whose (certified)
    prediction equals the label; an abstained sample counts as wrong."""

    policy: str
    model: str
    model_sha256: str
    device: str
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    n_reference: int
    reference_accuracy: float
    health_problems: tuple[str, ...]
    n_checked: int
    methods: tuple[MethodTiming, ...] = field(default=())

    @property
    def seconds_per_1000(self) -> float:
        """Certification of 1,000 samples by every available method, estimated from the check."""
        return float(sum(m.seconds_per_1000 or 0.0 for m in self.methods))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["seconds_per_1000"] = self.seconds_per_1000
        return out


def time_method(model: LoadedModel, spec: MethodSpec, sample: Batch, input_shape) -> MethodTiming:
    """Certify ``sample`` with one method, timed; accuracy against the sample's labels."""
    name = str(spec.method)
    ok, why = method_available(model.module, spec.method)
    if not ok:
        return MethodTiming(name, False, note=why)
    x = sample.inputs(input_shape)
    seeds = derive_seeds(CHECK_RUN_KEY, sample.ids.tolist(), name)
    certify_with_spec(model.module, x[:1], spec, seeds=seeds[:1], device=model.device)  # warm-up, untimed
    start = time.perf_counter()
    cert = certify_with_spec(model.module, x, spec, seeds=seeds, device=model.device)
    seconds = time.perf_counter() - start
    correct = (cert.prediction == sample.labels) & (cert.prediction != ABSTAIN)
    return MethodTiming(
        name,
        True,
        seconds_per_1000=seconds / len(sample) * 1000.0,
        abstention_rate=float(np.mean(cert.abstained)),
        accuracy=float(np.mean(correct)),
    )


def check_policy(path: str, *, samples: int = CHECK_SAMPLES, device: str | None = None) -> PolicyCheck:
    """Validate the policy at ``path``, load and check its model, measure the base model on the
    labelled reference and certify ``samples`` reference samples (seeded choice) with every
    method of the policy, timed on this machine (first on the device the policy or ``device`` names).
    """
    if samples < 1:
        raise InputError(f"--samples must be >= 1, got {samples}")
    lp = load_policy(path)
    pol = lp.policy
    model = load_checked_model(lp, device=device or pol.certification.device)
    reference = labelled_reference(lp)
    health = check_model(
        model.module,
        reference.inputs(pol.model.input_shape),
        reference.labels,
        pol.model.classes,
        pol.health,
        device=model.device,
    )
    sample = reference.subsample(samples, seed=0)
    if pol.certification.torch_threads:
        torch.set_num_threads(pol.certification.torch_threads)
    timings = tuple(
        time_method(model, spec, sample, pol.model.input_shape) for spec in pol.certification.methods
    )
    return PolicyCheck(
        policy=str(lp.path),
        model=pol.model.name,
        model_sha256=model.sha256,
        device=str(model.device),
        classes=pol.model.classes,
        input_shape=pol.model.input_shape,
        n_reference=len(reference),
        reference_accuracy=health.accuracy,
        health_problems=health.problems,
        n_checked=len(sample),
        methods=timings,
    )
