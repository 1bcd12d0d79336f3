"""The evaluation's attacks on a linear model, whose distance to the boundary is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from certrisk.risk.attacks import adaptive_attack, margin_attack, pgd, project, shift
from certrisk.schemas.errors import InputError


def _linear(d=8, seed=0):
    torch.manual_seed(seed)
    net = nn.Linear(d, 2).double()
    return net


def _boundary_distance(net, x):
    """Exact l2 and linf distances to the decision boundary of a 2-class linear model."""
    w = (net.weight[1] - net.weight[0]).detach()
    b = (net.bias[1] - net.bias[0]).detach()
    m = (x @ w + b).abs()
    return m / w.norm(), m / w.abs().sum()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_succeeds_exactly_beyond_the_boundary(norm):
    net = _linear()
    x = torch.rand(200, 8, dtype=torch.float64) * 0.2 + 0.4
    y = net(x).argmax(dim=1)
    d2, dinf = _boundary_distance(net, x)
    dist = d2 if norm == "l2" else dinf
    eps = float(dist.median())
    xa, ok = pgd(net, x, y, eps=eps, norm=norm, steps=200, early_stop=False, clip=None)
    reachable = dist < eps * 0.98
    unreachable = dist > eps * 1.02
    assert ok[reachable].float().mean() > 0.95
    assert not ok[unreachable].any()
    delta = (xa - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert (size <= eps * (1 + 1e-9)).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_margin_attack_reaches_kappa_inside_the_ball(norm):
    net = _linear(seed=1)
    x = torch.rand(100, 8, dtype=torch.float64)
    y = net(x).argmax(dim=1)
    xa, ok = margin_attack(net, x, y, eps=5.0, norm=norm, kappa=1.0, steps=200, clip=None)
    logits = net(xa)
    wrong = logits.gather(1, (1 - y)[:, None])[:, 0] - logits.gather(1, y[:, None])[:, 0]
    assert ok.all()
    assert (wrong >= 1.0 - 1e-6).float().mean() > 0.95
    delta = (xa - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert (size <= 5.0 * (1 + 1e-9)).all()


def test_adaptive_attack_moves_towards_the_target_class():
    torch.manual_seed(0)
    ref0 = torch.randn(50, 4, dtype=torch.float64) * 0.1 + torch.tensor(
        [0.3, 0.5, 0.5, 0.5], dtype=torch.float64
    )
    ref1 = torch.randn(50, 4, dtype=torch.float64) * 0.1 + torch.tensor(
        [0.7, 0.5, 0.5, 0.5], dtype=torch.float64
    )
    ref_x, ref_y = torch.cat([ref0, ref1]), torch.cat([torch.zeros(50), torch.ones(50)]).long()
    net = nn.Linear(4, 2).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[-10.0, 0, 0, 0], [10.0, 0, 0, 0]]))
        net.bias.copy_(torch.tensor([5.0, -5.0]))  # boundary at x0 = 0.5
    x = ref0[:20].clone()
    y = torch.zeros(20, dtype=torch.long)
    plain, ok_plain = pgd(net, x, y, eps=0.6, norm="l2", steps=100, early_stop=True, clip=None)
    adapt, ok_adapt = adaptive_attack(
        net, x, y, eps=0.6, norm="l2", reference_x=ref_x, reference_y=ref_y, pull=2.0, clip=None
    )
    assert ok_adapt.all()

    def to_target(z):
        return torch.cdist(z, ref1).topk(10, largest=False).values.mean(dim=1)

    assert to_target(adapt).mean() < to_target(plain[ok_plain]).mean()
    assert ((adapt - x).norm(dim=1) <= 0.6 * (1 + 1e-9)).all()


def test_shift_and_projection():
    x = torch.full((4, 3), 0.5)
    xs, changed = shift(x, seed=0)
    assert changed.all() and xs.min() >= 0 and xs.max() <= 1 and not torch.equal(xs, x)
    d = torch.tensor([[3.0, 4.0]])
    assert project(d, 1.0, "l2").norm().item() == pytest.approx(1.0)
    assert project(d, 1.0, "linf").tolist() == [[1.0, 1.0]]


def test_bad_budget():
    net = _linear()
    x = torch.zeros(1, 8, dtype=torch.float64)
    with pytest.raises(InputError, match="eps"):
        margin_attack(net, x, torch.zeros(1, dtype=torch.long), eps=np.inf, norm="l2")
    with pytest.raises(InputError, match="norm"):
        pgd(net, x, torch.zeros(1, dtype=torch.long), eps=1.0, norm="l1", early_stop=True)
