"""Model health, checked before any certificate is trusted (DESIGN.md, Principle 7).

A broken model looks safest to a certificate: a network with NaN weights or a constant classifier
is "certified" at the largest radius everywhere (Cullen et al. give the constant classifier as the
example). So the model's own behaviour is checked first, on the labelled reference set:

- logits must be finite (a non-finite logit makes the sample abstain, with the reason named);
- the number of logits must equal the policy's classes (checked at load: ``check_output_shape``);
- accuracy must beat the best constant guess (the majority class's share), per-class recall must
  reach a floor, and the most-predicted class may exceed its true share by at most a margin.

Any failure is a *problem*: the batch is critical, with the problem as its reason (NIST AI RMF
MEASURE 2.3, 2.5). Everything here is pure: arrays in, a frozen record out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest

from certrisk import __version__
from certrisk.schemas.columns import ABSTAIN
from certrisk.schemas.errors import InputError, ModelLoadError
from certrisk.schemas.policy import HealthSpec

#: Defaults that catch a constant or near-constant classifier and a model at chance (the policy's
#: ``health`` section, ``certrisk.schemas.policy.HealthSpec``, documents them).
MIN_CLASS_RECALL = HealthSpec().min_class_recall
MAX_TOP_CLASS_EXCESS = HealthSpec().max_top_class_excess
CHANCE_TEST_ALPHA = HealthSpec().chance_alpha

#: Reference rows per forward pass of ``reference_logits``.
FORWARD_ROWS = 4096
#: Version of ``reference_logits``' computation, part of its cache key (bump it when it changes).
REFERENCE_LOGITS_VERSION = 1


@dataclass(frozen=True)
class ModelHealth:
    """The model's behaviour on the labelled reference set, and what is wrong with it.

    accuracy : share of reference samples predicted correctly (non-finite rows count as wrong).
    majority_share : share of the most common reference label (the best constant guess).
    chance_p_value : one-sided binomial p-value of "accuracy is no better than majority_share".
    class_recall : recall per class name (NaN where the class has no reference sample).
    top_class, top_class_share : the most-predicted class and its share of predictions.
    n_nonfinite : reference samples whose logits are not all finite.
    problems : why the model cannot be trusted; empty when healthy.
    """

    n_reference: int
    accuracy: float
    majority_share: float
    chance_p_value: float
    class_recall: dict[str, float]
    top_class: str
    top_class_share: float
    n_nonfinite: int
    problems: tuple[str, ...] = field(default=())

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        """JSON-ready (NaN recall as None)."""
        out = asdict(self)
        out["class_recall"] = {k: (None if np.isnan(v) else v) for k, v in self.class_recall.items()}
        out["problems"] = list(self.problems)
        return out


def nonfinite_rows(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """Bool mask of shape (n_samples,): rows of ``logits`` (n_samples, n_classes) with a NaN or inf."""
    if isinstance(logits, torch.Tensor):
        return (~torch.isfinite(logits).all(dim=1)).cpu().numpy()
    return ~np.isfinite(np.asarray(logits)).all(axis=1)


def check_output_shape(module, input_shape: tuple[int, ...], classes: tuple[str, ...], device) -> None:
    """ModelLoadError unless one zero input of ``input_shape`` gives a (1, len(classes)) logit row."""
    with torch.no_grad():
        out = module(torch.zeros((1, *input_shape), dtype=torch.float32, device=device))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, len(classes)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelLoadError(
            f"model output has shape {shape} for one input; the policy's model.classes has "
            f"{len(classes)} classes, so (1, {len(classes)}) was expected"
        )


def assess_model(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...],
    *,
    min_class_recall: float = MIN_CLASS_RECALL,
    max_top_class_excess: float = MAX_TOP_CLASS_EXCESS,
    chance_alpha: float = CHANCE_TEST_ALPHA,
) -> ModelHealth:
    """Assess a classifier from its reference logits.

    Parameters
    ----------
    logits : array of shape (n_reference, n_classes), the base model's outputs on the reference.
    labels : int array of shape (n_reference,), the reference labels (indices into ``classes``).
    classes : class names, in logit order.
    min_class_recall : floor on every class's recall (a constant classifier has 0 on all but one).
    max_top_class_excess : the most-predicted class's share of predictions may exceed its share
        of the labels by at most this much.
    chance_alpha : level of the one-sided binomial test that accuracy beats the majority share.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    k = len(classes)
    if logits.ndim != 2 or logits.shape[1] != k or len(labels) != len(logits) or not len(labels):
        raise InputError(
            f"model health: logits of shape {logits.shape} and {len(labels)} labels do not fit {k} classes"
        )
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= k:
        raise InputError(f"model health: labels must be class indices in [0, {k}), got {labels[:5]}...")
    bad = nonfinite_rows(logits)
    pred = np.where(bad, ABSTAIN, np.argmax(np.where(np.isfinite(logits), logits, -np.inf), axis=1))
    n = len(labels)
    correct = int(((pred == labels) & ~bad).sum())
    label_share = np.bincount(labels, minlength=k) / n
    majority = float(label_share.max())
    chance_p = float(binomtest(correct, n, min(majority, 1.0 - 1e-12), alternative="greater").pvalue)
    recall = {
        name: (
            float(((pred == c) & (labels == c)).sum() / (labels == c).sum())
            if (labels == c).any()
            else np.nan
        )
        for c, name in enumerate(classes)
    }
    pred_share = np.bincount(pred[~bad], minlength=k) / n if (~bad).any() else np.zeros(k)
    top = int(np.argmax(pred_share))
    problems = []
    if bad.any():
        problems.append(f"non-finite logits on {int(bad.sum())} of {n} reference samples")
    if chance_p > chance_alpha:
        problems.append(
            f"reference accuracy {correct / n:.3f} is not better than always predicting the majority class "
            f"({majority:.3f}; binomial p = {chance_p:.3g} > {chance_alpha})"
        )
    low = [f"{name} {r:.3f}" for name, r in recall.items() if not np.isnan(r) and r < min_class_recall]
    if low:
        problems.append(f"class recall below {min_class_recall}: {', '.join(low)}")
    if pred_share[top] - label_share[top] > max_top_class_excess:
        problems.append(
            f"class {classes[top]} takes {pred_share[top]:.3f} of predictions but {label_share[top]:.3f} of labels "
            f"(more than {max_top_class_excess} over: a constant or near-constant classifier)"
        )
    return ModelHealth(
        n_reference=n,
        accuracy=correct / n,
        majority_share=majority,
        chance_p_value=chance_p,
        class_recall=recall,
        top_class=classes[top],
        top_class_share=float(pred_share[top]),
        n_nonfinite=int(bad.sum()),
        problems=tuple(problems),
    )


def reference_logits(module, inputs, *, device=None, rows: int = FORWARD_ROWS) -> np.ndarray:
    """The base model's logits on ``inputs``, one forward pass per ``rows`` inputs.

    module : torch module mapping (rows, *input_shape) to logits (rows, n_classes), in eval mode.
    inputs : array or tensor of shape (n_samples, *input_shape), in the model's input units.
    device : where to run; default the module's (CPU for a module without parameters).
    Returns float64 array of shape (n_samples, n_classes); NaN and inf are kept, not raised.
    """
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    if x.ndim < 2 or len(x) == 0:
        raise InputError(f"model health: need a non-empty batch of inputs, got shape {tuple(x.shape)}")
    param = next(iter(module.parameters()), None)
    dev = torch.device(device) if device is not None else (param.device if param is not None else "cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), rows):
            logits = module(x[start : start + rows].to(device=dev, dtype=dtype))
            out.append(logits.double().cpu())
    return torch.cat(out).numpy()


def reference_logits_key(
    *, model_sha256: str, policy_sha256: str, reference_sha256: str, device: str | None
) -> dict[str, Any]:
    """Everything ``reference_logits`` on the reference set depends on, as a JSON-able cache key:
    the model, policy (input shape) and reference hashes, the requested device (CPU and CUDA
    round differently) and the computation's and certrisk's versions."""
    return {
        "model_sha256": model_sha256,
        "policy_sha256": policy_sha256,
        "reference_sha256": reference_sha256,
        "device": device,
        "algorithm": REFERENCE_LOGITS_VERSION,
        "certrisk": __version__,
    }


def health_from_logits(
    logits: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], spec: HealthSpec
) -> ModelHealth:
    """``assess_model`` under the policy's ``health`` floors, for reference logits of shape
    (n_reference, n_logits). Raises ModelLoadError when n_logits is not ``len(classes)``."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] != len(classes):
        raise ModelLoadError(
            f"model output has shape {logits.shape} on {len(logits)} reference inputs; the policy's "
            f"model.classes has {len(classes)} classes, so ({len(logits)}, {len(classes)}) was expected"
        )
    return assess_model(
        logits,
        labels,
        classes,
        min_class_recall=spec.min_class_recall,
        max_top_class_excess=spec.max_top_class_excess,
        chance_alpha=spec.chance_alpha,
    )


def check_model(
    module, inputs, labels: np.ndarray, classes: tuple[str, ...], spec: HealthSpec, *, device=None
) -> ModelHealth:
    """Model health of ``module`` on the labelled reference, under the policy's floors.

    inputs : array of shape (n_reference, *input_shape); labels : int array of shape
    (n_reference,), indices into ``classes``; spec : the policy's ``health`` section. One
    forward pass over the reference (``reference_logits``), then ``health_from_logits``.
    """
    return health_from_logits(reference_logits(module, inputs, device=device), labels, classes, spec)
