"""Benchmark of the deterministic bound methods; every ratio is measured in this one run.

    python bench/bounds.py [--home DIR] [--batch 64] [--threads N]

On the demo's digits CNN and breast-cancer MLP (``certrisk.demo.prepare_demo``: built once and
cached under ``<home>/demo``), for the first ``batch`` samples of the held-out clean batch:

- IBP, CROWN-IBP and CROWN in linf and l2: the median largest certified eps (search to a
  relative 1e-3) and seconds per input of that search, each also as a ratio to IBP's in the same
  run, plus the seconds per input of one bound evaluation at a fixed eps (the method's own
  median certified eps, where its bounds are hardest to compute) and the bound passes per input
  of the search (CROWN's include the IBP search that seeds it);
- the median radius before and after the soundness fix (issue 13) for IBP and Lipschitz. "Before"
  is the old rule, re-implemented inline here and labelled so: float64 bounds without outward
  rounding and no bound on the model's own float error, certified when the margin is > 0
  (IBP) or radius = float64 margin / Lipschitz constant (Lipschitz).

Targets (issue 19; reference auto_LiRPA on the same digits CNN): CROWN median certified eps
>= 0.071 (linf) and >= 0.246 (l2), at most 14 ms per input at batch 64.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certrisk.demo import DATASETS, prepare_demo
from certrisk.risk.certify import ibp_certify, lipschitz_certify, lipschitz_constant
from certrisk.risk.certify.crown import crown_certify
from certrisk.risk.certify.search import largest_certified
from certrisk.risk.models import load_model
from certrisk.schemas.policy import load_policy

TARGETS = {("digits", "crown", "linf"): 0.071, ("digits", "crown", "l2"): 0.246}
TARGET_SECONDS = 0.014


def _demo(home: Path, name: str) -> tuple[nn.Module, np.ndarray]:
    assets = prepare_demo(home, dataset=name, log=lambda *_: None)
    policy = load_policy(DATASETS[name].policy).policy
    model = load_model(policy.model, assets.model_path, device="cpu").module
    frame = pd.read_parquet(assets.batches["clean"])
    x = frame.drop(columns=["sample_id"]).to_numpy(np.float32).reshape(-1, *policy.model.input_shape)
    return model, x


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ---- the old rule (before the soundness fix), inline and labelled ---------------------------


def old_ibp_margin(model: nn.Sequential, x64: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str):
    """OLD, UNSOUND (issue 13): float64 IBP without outward rounding or forward-error bound."""
    layers = [m for m in model if not isinstance(m, (nn.Identity, nn.Dropout))]
    c, r, ball = x64, None, norm == "l2"
    for layer in layers[:-1]:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            w, b = layer.weight.double(), layer.bias.double()
            if isinstance(layer, nn.Linear):
                fwd = lambda t, ww, bb=None: F.linear(t, ww, bb)
            else:
                args = (layer.stride, layer.padding, layer.dilation, layer.groups)
                fwd = lambda t, ww, bb=None, a=args: F.conv2d(t, ww, bb, *a)
            if ball:
                norms = fwd(torch.ones_like(c[:1]), w * w).sqrt()
                r = eps.view(-1, *[1] * (norms.ndim - 1)) * norms
                c, ball = fwd(c, w, b), False
            else:
                r = eps.view(-1, *[1] * (c.ndim - 1)).expand_as(c) if r is None else r
                c, r = fwd(c, w, b), fwd(r, w.abs())
        elif isinstance(layer, nn.ReLU):
            lo, hi = (c - r).clamp_min(0), (c + r).clamp_min(0)
            c, r = (hi + lo) / 2, (hi - lo) / 2
        else:  # AvgPool2d, Flatten
            c, r = layer(c), layer(r)
    w, b = layers[-1].weight.double(), layers[-1].bias.double()
    d = w[y][:, None, :] - w[None, :, :]
    m = torch.einsum("bkh,bh->bk", d, c.flatten(1)) + (b[y][:, None] - b[None, :])
    m = m - torch.einsum("bkh,bh->bk", d.abs(), r.flatten(1))
    return m.scatter(1, y[:, None], float("inf")).min(dim=1).values


def old_ibp_radius(model, x: np.ndarray, norm: str) -> np.ndarray:
    x64 = torch.as_tensor(np.array(x, dtype=np.float64))
    with torch.no_grad():
        y = model(torch.as_tensor(np.array(x))).argmax(1)

        def certified(idx, trial):
            sel = torch.as_tensor(idx)
            e = torch.as_tensor(trial, dtype=torch.float64)
            ok = (old_ibp_margin(model, x64[sel], y[sel], e, norm) > 0).numpy()
            return np.where(ok, trial, 0.0)

        return largest_certified(certified, len(x))[0]


def old_lipschitz_radius(model, x: np.ndarray) -> np.ndarray:
    """OLD, UNSOUND: float64 margin at x over ||W_y - W_j|| L_body, no forward-error bound."""
    body = model[:-1]
    last = model[-1]
    body_l = lipschitz_constant(body) if any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in body) else 1.0
    with torch.no_grad():
        y = model(torch.as_tensor(np.array(x))).argmax(1)
        m64 = _double(model)
        h = m64[:-1](torch.as_tensor(np.array(x, dtype=np.float64))).flatten(1)
        w, b = last.weight.double(), last.bias.double()
        z = h @ w.T + b
        d = (w[y][:, None, :] - w[None, :, :]).norm(dim=2)
        ratio = (z.gather(1, y[:, None]) - z) / (d * body_l)
        return ratio.scatter(1, y[:, None], float("inf")).min(dim=1).values.numpy()


def _double(model):
    import copy

    return copy.deepcopy(model).double()


# ---- the table ---------------------------------------------------------------------------------


def _methods(model, x, norm):
    yield "IBP", lambda eps=None: ibp_certify(model, x, eps=eps, norm=norm)
    yield "CROWN-IBP", lambda eps=None: crown_certify(model, x, eps=eps, norm=norm, intermediate="ibp")
    yield "CROWN", lambda eps=None: crown_certify(model, x, eps=eps, norm=norm)


def bench_dataset(name: str, model, x: np.ndarray) -> list[dict]:
    rows = []
    b = len(x)
    for norm in ("linf", "l2"):
        base = None
        for method, run in _methods(model, x, norm):
            cert, seconds = _timed(run)
            median = float(np.median(cert.radius))
            base = base or {"eps": median, "seconds": seconds}
            fixed = median if median > 0 else 1e-3
            _, fixed_seconds = _timed(lambda r=run, e=fixed: r(e))
            rows.append(
                {
                    "model": name,
                    "norm": norm,
                    "method": method,
                    "median_eps": median,
                    "eps_vs_ibp": median / base["eps"] if base["eps"] > 0 else float("nan"),
                    "s_per_input_search": seconds / b,
                    "time_vs_ibp": seconds / base["seconds"],
                    "s_per_input_one_eval": fixed_seconds / b,
                    "passes_per_input": float(np.mean(cert.n_forward - 1)),
                    "target_eps": TARGETS.get((name, method.lower(), norm), float("nan")),
                }
            )
    return rows


def before_after(name: str, model, x: np.ndarray) -> list[dict]:
    rows = []
    for norm in ("linf", "l2"):
        before = float(np.median(old_ibp_radius(model, x, norm)))
        after = float(np.median(ibp_certify(model, x, norm=norm).radius))
        rows.append({"model": name, "method": f"IBP {norm}", "before (old rule)": before, "after": after})
    before = float(np.median(old_lipschitz_radius(model, x)))
    after = float(np.median(lipschitz_certify(model, x).radius))
    rows.append({"model": name, "method": "Lipschitz l2", "before (old rule)": before, "after": after})
    for r in rows:
        r["after / before"] = (
            r["after"] / r["before (old rule)"] if r["before (old rule)"] > 0 else float("nan")
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=None, help="CERTRISK_HOME of the demo assets")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    table, soundness = [], []
    for name in ("digits", "breast_cancer"):
        model, x = _demo(args.home, name)
        xs = x[: args.batch]
        table += bench_dataset(name, model, xs)
        soundness += before_after(name, model, xs)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, CPU")
    print(pd.DataFrame(table).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print()
    print(pd.DataFrame(soundness).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print()
    for r in table:
        if np.isfinite(r["target_eps"]):
            ok_eps = r["median_eps"] >= r["target_eps"]
            ok_time = r["s_per_input_one_eval"] <= TARGET_SECONDS
            print(
                f"target {r['model']} {r['method']} {r['norm']}: median eps {r['median_eps']:.4f} "
                f"(>= {r['target_eps']}: {'met' if ok_eps else 'MISSED'}); one evaluation "
                f"{1000 * r['s_per_input_one_eval']:.1f} ms/input (<= 14 ms: {'met' if ok_time else 'MISSED'}); "
                f"search {1000 * r['s_per_input_search']:.1f} ms/input"
            )


if __name__ == "__main__":
    main()
