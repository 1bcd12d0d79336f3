"""Attacks that test soundness: projected gradient descent in l2 and linf.

Used to check that no class change exists inside a certified radius (a failed check means an
unsound certificate), and by the demo to build an attacked batch. An attack finding nothing
proves nothing; it only fails to refute.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from certrisk.schemas.errors import InputError


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1)
    norms = flat.norm(dim=1).clamp_min(1e-12)
    factor = torch.clamp(eps / norms, max=1.0)
    return (flat * factor[:, None]).view_as(delta)


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
    (x_adv, success): x_adv of shape (B, *input_shape) inside the ball (and the clip box);
    success (B,) bool where the model's prediction on x_adv differs from y.
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
            hit = model(xa).argmax(dim=1) != y
            take = hit & ~found
            best[take] = xa[take]
            found |= hit
    return best.detach(), found


def pgd_numpy(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 512, **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """pgd_attack over a numpy array in batches on the model's device; returns numpy arrays."""
    dev = next(model.parameters()).device
    outs, hits = [], []
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[start : start + batch_size], dtype=torch.float32, device=dev)
        yb = torch.as_tensor(y[start : start + batch_size], dtype=torch.int64, device=dev)
        xa, ok = pgd_attack(model, xb, yb, **kwargs)
        outs.append(xa.cpu().numpy())
        hits.append(ok.cpu().numpy())
    return np.concatenate(outs), np.concatenate(hits)
