"""Attacks that test soundness: projected gradient descent in l2 and linf.

Used to check that no class change exists inside a certified radius (a failed check means an
unsound certificate), and by the demo to build an attacked batch. An attack finding nothing
proves nothing; it only fails to refute. Every point it evaluates and returns lies inside the
ball, proved in float64 for the values it has in the dtype the model evaluates
(``project_into_ball``): a point just outside a certified ball would report a false break.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from certrisk.schemas.errors import InputError

_SHRINK_ROUNDS = 60


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1)
    norms = flat.norm(dim=1).clamp_min(1e-12)
    factor = torch.clamp(eps / norms, max=1.0)
    return (flat * factor[:, None]).view_as(delta)


def _up(t: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(t, torch.full_like(t, math.inf))


def ball_distance(x: torch.Tensor, points: torch.Tensor, norm: str) -> torch.Tensor:
    """Upper bound of the exact lp distance between each row of ``points`` and of ``x`` (both of
    shape (B, *shape), any float dtype, compared as exact values), float64 (B,)."""
    gap = _up((points.double() - x.double()).abs()).flatten(1)
    if norm == "linf":
        return gap.max(dim=1).values
    n = gap.shape[1]
    factor = 1.0 + 2.0 * (n + 2) * 2.0**-53 / (1.0 - (n + 2) * 2.0**-53) + 2.0**-50
    return _up(_up(_up(gap * gap).sum(dim=1) * factor).sqrt())


def project_into_ball(x: torch.Tensor, points: torch.Tensor, eps, norm: str) -> torch.Tensor:
    """The points moved into the lp ball of radius eps around x, in x's dtype.

    x, points : tensors of shape (B, *shape); eps : a number or a tensor of shape (B,). Each
    returned point p satisfies ``||p - x|| <= eps`` for the exact values of p and x in their
    dtype (checked by ``ball_distance``, an upper bound computed in float64); points inside stay
    unchanged up to rounding to x's dtype.
    """
    if norm not in ("l2", "linf"):
        raise InputError(f"project_into_ball: norm must be 'l2' or 'linf', got {norm!r}")
    b = x.shape[0]
    e = torch.as_tensor(eps, dtype=torch.float64, device=x.device).expand(b).clone()
    x64 = x.double()
    d = points.double() - x64
    view = (-1,) + (1,) * (x.ndim - 1)
    if norm == "linf":
        d = torch.maximum(torch.minimum(d, e.view(view)), -e.view(view))
        factor = torch.ones(b, dtype=torch.float64, device=x.device)
    else:
        length = d.flatten(1).norm(dim=1)
        factor = torch.where(length > e, e / length.clamp_min(1e-300), 1.0)
    for _ in range(_SHRINK_ROUNDS):
        out = (x64 + d * factor.view(view)).to(x.dtype)
        bad = ball_distance(x, out, norm) > e
        if not bool(bad.any()):
            return out
        factor = torch.where(bad, factor * (1.0 - 2.0**-20) - 2.0**-60, factor).clamp_min(0.0)
    return torch.where(bad.view(view), x, out)


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "l2",
    steps: int = 40,
    step_size: float | None = None,
    restarts: int = 1,
    clip: tuple[float, float] | None = (0.0, 1.0),
    seed: int = 0,
    early_stop: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Untargeted PGD (Madry et al. 2018) maximising cross-entropy within an lp ball.

    Parameters
    ----------
    x : tensor of shape (B, *input_shape) on the model's device
    y : tensor of shape (B,), the labels to move away from
    eps : ball radius in ``norm`` ("l2" or "linf")
    restarts : random starts; the first starts at x itself
    early_stop : freeze each input at the first step that changes its prediction. This gives
        near-minimal perturbations that sit just past the decision boundary, the imperceptible
        examples an attacker prefers, instead of points driven deep into another class.

    Returns
    -------
    (x_adv, success): x_adv of shape (B, *input_shape) in x's dtype, inside the ball for its exact
    values (``project_into_ball``) and inside the clip box when x is; success (B,) bool where the
    model's prediction on x_adv (evaluated as returned) differs from y.
    """
    if norm not in ("l2", "linf"):
        raise InputError(f"pgd_attack: norm must be 'l2' or 'linf', got {norm!r}")
    if eps <= 0:
        raise InputError(f"pgd_attack: eps must be > 0, got {eps}")
    step = step_size if step_size is not None else 2.5 * eps / steps
    gen = torch.Generator(device=x.device).manual_seed(seed)
    best = x.detach().clone()
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    for r in range(restarts):
        if r == 0:
            delta = torch.zeros_like(x)
        else:
            delta = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            delta = _project(delta * eps, eps, norm)
        for _ in range(steps):
            delta.requires_grad_(True)
            xa = x + delta
            if clip is not None:
                xa = xa.clamp(*clip)
            loss = loss_fn(model(xa), y)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                if early_stop:
                    active = (model(xa).argmax(dim=1) == y).to(grad.dtype)
                    grad = grad * active.view(-1, *([1] * (grad.dim() - 1)))
                if norm == "linf":
                    delta = delta + step * grad.sign()
                else:
                    g = grad.flatten(1)
                    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    delta = delta + step * g.view_as(delta)
                delta = _project(delta, eps, norm)
                if clip is not None:
                    delta = (x + delta).clamp(*clip) - x
        with torch.no_grad():
            xa = x + delta
            if clip is not None:
                xa = xa.clamp(*clip)
            xa = project_into_ball(x, xa, eps, norm)
            hit = model(xa).argmax(dim=1) != y
            take = hit & ~found
            best[take] = xa[take]
            found |= hit
    return best.detach(), found


def pgd_numpy(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 512, **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """pgd_attack over a numpy array in batches on the model's device, in the model's dtype;
    returns numpy arrays (x_adv in that dtype)."""
    param = next(model.parameters())
    dev, dtype = param.device, param.dtype
    outs, hits = [], []
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[start : start + batch_size], dtype=dtype, device=dev)
        yb = torch.as_tensor(y[start : start + batch_size], dtype=torch.int64, device=dev)
        xa, ok = pgd_attack(model, xb, yb, **kwargs)
        outs.append(xa.cpu().numpy())
        hits.append(ok.cpu().numpy())
    return np.concatenate(outs), np.concatenate(hits)
