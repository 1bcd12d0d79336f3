"""The evaluation's attack suite, set against the data's geometry.

``FAMILIES`` names each attack of ``certrisk.risk.attacks`` with its norm and whether it knows the
detector; ``run_attack`` runs one on a labelled set in batches on the model's device. Budgets are
fractions of ``class_geometry``: the median distance from an evaluation sample to its nearest
reference sample of another class, per norm. ``certrisk.risk.evaluate`` measures what the
production risk catches of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from certrisk.risk.attacks import adaptive_attack, margin_attack, pgd, shift
from certrisk.schemas.errors import InputError

NORMS = ("l2", "linf")


@dataclass(frozen=True)
class LabelledSet:
    """Labelled samples: ids (n,) str, x of shape (n, *input_shape) float32, labels (n,) int64."""

    ids: np.ndarray
    x: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.ids)
        if n == 0 or len(self.x) != n or np.asarray(self.labels).shape != (n,):
            raise InputError(
                f"labelled set: ids ({n}), x ({len(self.x)}) and labels {np.shape(self.labels)} "
                "must be non-empty and of one length"
            )


@dataclass(frozen=True)
class AttackSetting:
    """What the attack functions share: the data box (``clip``, a (low, high) pair of floats or
    of tensors of shape input_shape, or None), the reference the adaptive attack pulls towards,
    the seed (shift noise), optimisation steps and the margin attack's kappa (logit units)."""

    clip: tuple | None
    reference: LabelledSet
    seed: int = 0
    steps: int = 50
    kappa: float = 5.0
    batch_size: int = 256


@dataclass(frozen=True)
class Family:
    """An attack family: its norm (None: not an lp attack, no budget) and whether it knows the detector."""

    name: str
    norm: str | None
    adaptive: bool
    attack: Callable[..., tuple]  # (model, x, y, eps, norm, setting) -> (x_adv, success)


def _pgd_early(model, x, y, eps, norm, s: AttackSetting):
    return pgd(model, x, y, eps=eps, norm=norm, steps=s.steps, early_stop=True, clip=s.clip)


def _pgd_deep(model, x, y, eps, norm, s: AttackSetting):
    return pgd(model, x, y, eps=eps, norm=norm, steps=s.steps, early_stop=False, clip=s.clip)


def _margin(model, x, y, eps, norm, s: AttackSetting):
    return margin_attack(model, x, y, eps=eps, norm=norm, kappa=s.kappa, steps=2 * s.steps, clip=s.clip)


def _shift(model, x, y, eps, norm, s: AttackSetting):
    return shift(x, seed=s.seed, clip=s.clip)


def _adaptive(model, x, y, eps, norm, s: AttackSetting):
    ref_x = torch.as_tensor(s.reference.x, device=x.device, dtype=x.dtype)
    ref_y = torch.as_tensor(s.reference.labels, device=x.device)
    return adaptive_attack(
        model, x, y, eps=eps, norm=norm, reference_x=ref_x, reference_y=ref_y, steps=2 * s.steps, clip=s.clip
    )


#: The attack suite, by name: (norm, knows the detector, attack function).
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("pgd_l2_early", "l2", False, _pgd_early),
        Family("pgd_l2_deep", "l2", False, _pgd_deep),
        Family("pgd_linf_early", "linf", False, _pgd_early),
        Family("pgd_linf_deep", "linf", False, _pgd_deep),
        Family("margin_l2", "l2", False, _margin),
        Family("shift", None, False, _shift),
        Family("adaptive_l2", "l2", True, _adaptive),
    )
}


# --------------------------------------------------------------------------------------------
# running and geometry


def run_attack(
    model: nn.Module, family: Family, data: LabelledSet, eps: float, setting: AttackSetting
) -> tuple[np.ndarray, np.ndarray]:
    """Attack ``data`` in batches on the model's device: (x_adv float32 of data.x's shape, moved
    bool (n,) where the attack reports success)."""
    param = next(model.parameters())
    outs, hits = [], []
    for start in range(0, len(data.ids), setting.batch_size):
        x = torch.as_tensor(
            data.x[start : start + setting.batch_size], dtype=param.dtype, device=param.device
        )
        y = torch.as_tensor(data.labels[start : start + setting.batch_size], device=param.device)
        xa, ok = family.attack(model, x, y, eps, family.norm, setting)
        outs.append(xa.detach().float().cpu().numpy())
        hits.append(ok.cpu().numpy())
    return np.concatenate(outs).reshape(data.x.shape).astype(np.float32), np.concatenate(hits).astype(bool)


def base_predictions(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The model's classes for x of shape (n, *input_shape): int64 of shape (n,)."""
    param = next(model.parameters())
    with torch.no_grad():
        out = [
            model(torch.as_tensor(x[s : s + 1024], dtype=param.dtype, device=param.device))
            .argmax(dim=1)
            .cpu()
            for s in range(0, len(x), 1024)
        ]
    return torch.cat(out).numpy().astype(np.int64)


def nearest_other_class(x: np.ndarray, labels: np.ndarray, reference: LabelledSet, norm: str) -> np.ndarray:
    """Distance from each row of x (shape (n, ...)) to its nearest reference sample of another
    class than ``labels`` (shape (n,)), in ``norm`` ("l2" or "linf"), float64 of shape (n,)."""
    if norm not in NORMS:
        raise InputError(f"nearest_other_class: norm must be one of {NORMS}, got {norm!r}")
    a = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(len(x), -1))
    r = torch.as_tensor(np.asarray(reference.x, dtype=np.float64).reshape(len(reference.x), -1))
    ry = torch.as_tensor(np.asarray(reference.labels, dtype=np.int64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    out = np.empty(len(a), dtype=np.float64)
    for start in range(0, len(a), 512):
        d = torch.cdist(a[start : start + 512], r, p=2.0 if norm == "l2" else float("inf"))
        d = d.masked_fill(ry[None, :] == y[start : start + 512, None], float("inf"))
        out[start : start + 512] = d.min(dim=1).values.numpy()
    if not np.isfinite(out).all():
        raise InputError("nearest_other_class: the reference has no sample of another class for some input")
    return out


def class_geometry(evaluation: LabelledSet, reference: LabelledSet) -> dict[str, float]:
    """Median distance from an evaluation sample to its nearest reference sample of another
    class, per norm: ``{"l2": float, "linf": float}`` (the unit budgets of the attacks)."""
    return {
        norm: float(np.median(nearest_other_class(evaluation.x, evaluation.labels, reference, norm)))
        for norm in NORMS
    }
