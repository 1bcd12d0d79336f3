"""The evaluation's attack suite: what an adversary with a budget does to an input.

Families (DESIGN.md, Principle 8), each returning ``(x_adv, success)`` with x_adv inside the lp
ball of radius ``eps`` around x (and the data box), success where the model's prediction changed:

* ``pgd`` (l2 or linf): untargeted projected gradient ascent on cross-entropy, either stopped at
  each input's first success (near the boundary: what certificates catch) or run to the full
  budget (deep inside another class: certified like clean inputs);
* ``margin``: drive the best wrong logit above the true one by ``kappa`` (Carlini and Wagner's
  high-confidence objective), so the smoothed classifier is confident too;
* ``shift``: a distribution shift (contrast, brightness, noise), not an lp attack;
* ``adaptive``: knows the detector: besides the wrong class it pulls the input towards the
  reference samples of its target class, a differentiable proxy of the neighbour-disagreement
  and novelty signals. Adaptive attackers may evade: it is reported, never a target.

An attack finding nothing proves nothing about robustness.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from certrisk.risk.audit import pgd_attack
from certrisk.schemas.errors import InputError

NORMS = ("l2", "linf")


def _check(norm: str, eps: float, what: str) -> None:
    if norm not in NORMS:
        raise InputError(f"{what}: norm must be 'l2' or 'linf', got {norm!r}")
    if not eps > 0 or not np.isfinite(eps):
        raise InputError(f"{what}: eps must be finite and > 0, got {eps}")


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``delta`` of shape (B, ...) projected onto the lp ball of radius ``eps``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1)
    scale = torch.clamp(eps / flat.norm(dim=1).clamp_min(1e-12), max=1.0)
    return (flat * scale[:, None]).view_as(delta)


def _step(grad: torch.Tensor, step: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return step * grad.sign()
    g = grad.flatten(1)
    return (step * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(grad)


def _ascend(objective, x: torch.Tensor, *, eps: float, norm: str, steps: int, clip) -> torch.Tensor:
    """Projected gradient ascent of ``objective(x_adv) -> (B,)`` from x; returns x_adv."""
    step = 2.5 * eps / steps
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        xa = x + delta
        (grad,) = torch.autograd.grad(objective(xa).sum(), delta)
        with torch.no_grad():
            delta = project(delta + _step(grad, step, norm), eps, norm)
            if clip is not None:
                delta = (x + delta).clamp(*clip) - x
    xa = (x + delta).detach()
    return xa.clamp(*clip) if clip is not None else xa


def _wrong_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Best wrong logit minus the true logit, shape (B,)."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - true


def pgd(model: nn.Module, x, y, *, eps: float, norm: str, steps: int = 50, early_stop: bool, clip=(0.0, 1.0)):
    """PGD on cross-entropy, stopped at first success (``early_stop``) or run to the full budget."""
    _check(norm, eps, "pgd")
    return pgd_attack(model, x, y, eps=eps, norm=norm, steps=steps, clip=clip, early_stop=early_stop)


def margin_attack(
    model: nn.Module, x, y, *, eps: float, norm: str, kappa: float = 5.0, steps: int = 100, clip=(0.0, 1.0)
):
    """Maximise min(best wrong logit - true logit, kappa) inside the ball: a high-confidence
    misclassification once the margin reaches ``kappa`` (logit units)."""
    _check(norm, eps, "margin_attack")

    def objective(xa):
        return _wrong_margin(model(xa), y).clamp(max=kappa)

    xa = _ascend(objective, x, eps=eps, norm=norm, steps=steps, clip=clip)
    with torch.no_grad():
        return xa, model(xa).argmax(dim=1) != y


def shift(
    x: torch.Tensor,
    *,
    contrast: float = 0.55,
    brightness: float = 0.2,
    noise: float = 0.12,
    seed: int = 0,
    clip=(0.0, 1.0),
):
    """A distribution shift: ``contrast * x + brightness`` plus Gaussian noise, in the data box.
    Returns (x_shifted, changed) where changed is all True (every input was moved)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
    xs = contrast * x + brightness + noise * z
    xs = xs.clamp(*clip) if clip is not None else xs
    return xs, torch.ones(x.shape[0], dtype=torch.bool, device=x.device)


def adaptive_attack(
    model: nn.Module,
    x,
    y,
    *,
    eps: float,
    norm: str,
    reference_x: torch.Tensor,
    reference_y: torch.Tensor,
    k: int = 10,
    pull: float = 1.0,
    kappa: float = 2.0,
    steps: int = 100,
    clip=(0.0, 1.0),
):
    """Misclassify while looking like the target class to a neighbour-based detector.

    The target of each input is the class of its nearest reference sample of another class. The
    objective is min(target logit - best other logit, kappa) minus ``pull`` times the mean
    distance (in ``norm``-matched l2, flattened) to the k nearest reference samples of the target
    class, scaled by the median such distance so the two terms are comparable.
    """
    _check(norm, eps, "adaptive_attack")
    ref = reference_x.flatten(1).to(x.device, x.dtype)
    ref_y = reference_y.to(x.device)
    with torch.no_grad():
        d = torch.cdist(x.flatten(1), ref)
        d_other = d.masked_fill(ref_y[None, :] == y[:, None], float("inf"))
        target = ref_y[d_other.argmin(dim=1)]
    masks = ref_y[None, :] == target[:, None]  # (B, R): reference samples of the target class
    kk = int(min(k, int(masks.sum(dim=1).min())))
    scale = float(torch.cdist(x.flatten(1), ref).median().clamp_min(1e-6))

    def objective(xa):
        logits = model(xa)
        gain = (-_wrong_margin(logits, target)).clamp(max=kappa)
        dist = torch.cdist(xa.flatten(1), ref).masked_fill(~masks, float("inf"))
        near = dist.topk(kk, dim=1, largest=False).values.mean(dim=1)
        return gain - pull * near / scale

    xa = _ascend(objective, x, eps=eps, norm=norm, steps=steps, clip=clip)
    with torch.no_grad():
        return xa, model(xa).argmax(dim=1) != y
