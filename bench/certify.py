"""Benchmark of randomized smoothing at the hardware limit; every ratio is measured in this one run.

    python bench/certify.py                  # CPU: digits CNN and CIFAR ResNet-20 (~6-8 min on 2 cores)
    python bench/certify.py --quick          # CPU, smaller jobs (~3 min)
    python bench/certify.py --gpu            # CUDA: digits CNN, CIFAR ResNet-110, ImageNet ResNet-50

For each model (random weights, except the digits CNN, trained here at the noise level), columns:
- limits: forward rows/s of the bare model at its best batch size, eager fp32, eager at the reduced
  precision (bf16), and compiled bf16 (torch.compile, compile time reported apart);
- certrisk (``smooth_certify``) at each precision and compile setting: noisy rows/s and the ratio
  to the matching limit (same precision, compile setting and forward size, measured right before
  and right after each certrisk job: ``paired``), at large N (n per input) and at
  n = 1k with many inputs (small jobs, where padding used to waste work; the share of forwarded
  rows that are real is printed);
- a Cohen-style per-input reference on the same device (their ``core.py``: one input at a time,
  a batch of noisy copies made by ``repeat``, counts on the host), fp32 eager;
- seconds per image at N = 100k: (n0 + 100k) / measured rows/s, extrapolated from the measured
  rate (not timed at 100k unless --n is 100k).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from resnets import cifar_resnet, resnet50

from certrisk.risk.certify import derive_seeds, smooth_certify
from certrisk.risk.certify.noise import normal_rows
from certrisk.risk.certify.packing import measure_forward_rows
from certrisk.risk.certify.precision import ExecutedModel
from certrisk.risk.certify.stats import clopper_pearson_lower, smoothing_radius
from certrisk.risk.models import digits_cnn, select_device, train_classifier

N0, ALPHA, SIGMA = 100, 0.001, 0.25
#: (name, builder, input shape, CPU forward sizes, CUDA forward sizes)
CPU_SIZES = (256, 512, 1024, 2048, 4096)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _digits(dev):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    model = train_classifier(digits_cnn(), x[:1200], y[:1200], noise_sigma=SIGMA, epochs=8, device=dev)
    return model.eval(), torch.as_tensor(x[1200:], device=dev)


def _random_inputs(shape, count, dev):
    gen = torch.Generator().manual_seed(0)
    return torch.rand((count, *shape), generator=gen).to(dev)


def model_plan(args, dev) -> list[dict]:
    """The models of this run, with their job sizes (large N and small-n inputs)."""
    if dev.type == "cuda":
        return [
            {"name": "digits CNN 1x8x8", "build": "digits", "big": (8, args.n), "small": 512,
             "sizes": (1024, 4096, 16384, 65536, 262144)},
            {"name": "CIFAR ResNet-110 3x32x32", "build": lambda: cifar_resnet(110), "shape": (3, 32, 32),
             "big": (2, args.n), "small": 512, "sizes": (1024, 2048, 4096, 8192)},
            {"name": "ImageNet ResNet-50 3x224x224", "build": resnet50, "shape": (3, 224, 224),
             "big": (1, args.n // 2), "small": 64, "sizes": (256, 512, 1024, 2048)},
        ]  # fmt: skip
    quick = args.quick
    return [
        {"name": "digits CNN 1x8x8", "build": "digits", "big": (1, args.n), "small": 128 if quick else 512,
         "sizes": CPU_SIZES},
        {"name": "CIFAR ResNet-20 3x32x32", "build": lambda: cifar_resnet(20), "shape": (3, 32, 32),
         "big": (1, 5_000 if quick else 10_000), "small": 16 if quick else 32, "sizes": (64, 128, 256, 512)},
    ]  # fmt: skip


def limits(model, x, sizes, settings, dev) -> dict:
    """Forward rows/s of the bare model per (precision, compile): {setting: (rate, best size)}.
    Compiled settings are measured at the eager best size of their precision."""
    out = {}
    for precision, compile in settings:
        executed = settings[(precision, compile)]
        if compile == "off":
            measure_forward_rows(executed, x, candidates=sizes, min_seconds=0.05)  # warm-up sweep
            rates = measure_forward_rows(executed, x, candidates=sizes, min_seconds=0.5)
        else:
            size = out[(precision, "off")][1]
            rates = measure_forward_rows(executed, x, candidates=(size,), min_seconds=0.5)
        best = max(rates, key=rates.get)
        out[(precision, compile)] = (rates[best], best)
    return out


def certrisk_rate(executed, x, *, n, batch_size, seeds=None):
    cert = smooth_certify(
        executed,
        x,
        sigma=SIGMA,
        n0=N0,
        n=n,
        alpha=ALPHA,
        batch_size=batch_size,
        seed=0 if seeds is None else seeds,
    )
    return int(cert.n_forward.sum()) / cert.seconds, cert


def paired(executed, pool, x, *, n, size, seeds=None):
    """certrisk's rows/s on x, and the limit at the same forward size measured right before and
    right after it (their mean: on a shared machine the load drifts, and a limit measured minutes
    apart would say more about the neighbours than about certrisk). Returns (rate, limit, cert)."""
    before = measure_forward_rows(executed, pool, candidates=(size,), min_seconds=1.0)[size]
    rate, cert = certrisk_rate(executed, x, n=n, batch_size=size, seeds=seeds)
    after = measure_forward_rows(executed, pool, candidates=(size,), min_seconds=1.0)[size]
    return rate, (before + after) / 2, cert


def cohen_reference(model, x: torch.Tensor, *, n, batch_size, num_classes):
    """Cohen et al.'s reference CERTIFY (their core.py), one input at a time, fp32 eager, counts on
    the host: noisy rows per second."""
    dev = x.device

    def sample(x_i, num):
        counts = np.zeros(num_classes, dtype=int)
        with torch.no_grad():
            remaining = num
            while remaining > 0:
                this = min(batch_size, remaining)
                remaining -= this
                batch = x_i.repeat((this, *([1] * x_i.ndim)))
                noise = torch.randn_like(batch, device=dev) * SIGMA
                p = model(batch + noise).argmax(1)
                counts += np.bincount(p.cpu().numpy(), minlength=num_classes)
        return counts

    _sync(dev)
    start = time.perf_counter()
    for x_i in x:
        c_a = int(sample(x_i, N0).argmax())
        n_a = sample(x_i, n)[c_a]
        p = float(clopper_pearson_lower(n_a, n, ALPHA))
        _radius = float(smoothing_radius(p, SIGMA)) if p > 0.5 else 0.0
    _sync(dev)
    return len(x) * (N0 + n) / (time.perf_counter() - start)


def noise_rate(dev, rows: int, width: int) -> float:
    """Rows of counter-based noise per second for a chunk of ``rows`` rows."""
    keys = torch.arange(rows, device=dev, dtype=torch.int64) // max(1, rows // 64)
    idx = torch.arange(rows, device=dev, dtype=torch.int64)
    out = torch.empty((rows, width), device=dev)
    normal_rows(keys, idx, width, out=out)
    _sync(dev)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.5 or reps < 2:
        normal_rows(keys, idx + reps * rows, width, out=out)
        reps += 1
        _sync(dev)
    return rows * reps / (time.perf_counter() - start)


def bench_model(spec: dict, args, dev) -> list[str]:
    """Measure one model; returns its table lines."""
    t0 = time.perf_counter()
    if spec["build"] == "digits":
        model, pool = _digits(dev)
    else:
        model = spec["build"]().to(dev)
        pool = _random_inputs(spec["shape"], max(spec["small"], spec["big"][0]), dev)
    precisions = ["fp32", "bf16"] + (["fp16"] if dev.type == "cuda" else [])
    settings = {(p, "off"): ExecutedModel(model, precision=p, device=dev) for p in precisions}
    if not args.no_compile:
        compiled = ExecutedModel(model, precision="bf16", compile=args.compile, device=dev)
        settings[("bf16", args.compile)] = compiled
    lim = limits(model, pool, spec["sizes"], settings, dev)
    lines = [f"## {spec['name']} (setup and limits {time.perf_counter() - t0:.0f} s)"]
    inputs, n = spec["big"]
    xb, xs = pool[:inputs], pool[: spec["small"]]
    seeds = derive_seeds("bench", [str(i) for i in range(inputs)], "smoothing")
    width = int(pool[0].numel())
    with torch.inference_mode():
        k = model(pool[:1]).shape[1]
    cohen = cohen_reference(model, pool[:1], n=n, batch_size=lim[("fp32", "off")][1], num_classes=k)
    header = (
        f"{'setting':24s} {'limit rows/s':>13s} {'batch':>7s} {f'certrisk n={n // 1000}k':>15s} {'ratio':>6s}"
        f" {'n=1k x' + str(len(xs)):>13s} {'ratio':>6s} {'real':>6s} {'vs Cohen':>9s} {'s/img@100k':>11s}"
    )
    lines.append(header)
    for (precision, compile), executed in settings.items():
        size = lim[(precision, compile)][1]
        big_rate, big_limit, _ = paired(executed, pool, xb, n=n, size=size, seeds=seeds)
        small_rate, small_limit, small = paired(executed, pool, xs, n=1000, size=size)
        real = small.extra["rows_real"] / small.extra["rows_forwarded"]
        per_image = (N0 + 100_000) / big_rate
        lines.append(
            f"{precision + ' / compile ' + compile:24s} {big_limit:13,.0f} {size:7d} {big_rate:15,.0f}"
            f" {big_rate / big_limit:6.2f} {small_rate:13,.0f} {small_rate / small_limit:6.2f} {real:6.1%}"
            f" {big_rate / cohen:8.1f}x {per_image:11.3f}"
        )
        lim[(precision, compile)] = (max(big_limit, lim[(precision, compile)][0]), size)
        if compile != "off":
            info = executed.describe()
            lines.append(
                f"  compile {info['compile']} ({info['compile_requested']} asked): {info['compile_seconds']:.1f} s"
                f" compile time, apart; cuda graphs {info['cuda_graphs']}; fallback {info['compile_fallback'] or '-'}"
            )
    fp32, bf16 = lim[("fp32", "off")][0], lim[("bf16", "off")][0]
    lines.append(
        f"{'Cohen-style reference':24s} {'':13s} {lim[('fp32', 'off')][1]:7d} {cohen:15,.0f}"
        f" {cohen / fp32:6.2f} {'':13s} {'':6s} {'':6s} {'1.0x':>9s} {(N0 + 100_000) / cohen:11.3f}"
    )
    lines.append(
        f"eager bf16 limit / eager fp32 limit: {bf16 / fp32:.2f}"
        + (
            f"; compiled bf16 / eager fp32: {lim[('bf16', args.compile)][0] / fp32:.2f}"
            if ("bf16", args.compile) in lim
            else ""
        )
        + f"; counter-based noise alone: {noise_rate(dev, lim[('fp32', 'off')][1], width):,.0f} rows/s"
    )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="torch device; default: cuda when present")
    ap.add_argument("--gpu", action="store_true", help="the GPU table (needs CUDA)")
    ap.add_argument("--quick", action="store_true", help="smaller CPU jobs")
    ap.add_argument("--n", type=int, default=100_000, help="estimation samples per input at large N")
    ap.add_argument("--compile", default="default", choices=("default", "max-autotune"))
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled settings")
    ap.add_argument("--only", default=None, help="run only models whose name contains this")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = select_device("cuda" if args.gpu else args.device)
    if args.quick and args.n == 100_000:
        args.n = 50_000
    where = (
        torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"# device {dev} ({where}), torch {torch.__version__}; sigma {SIGMA}, n0 {N0}, alpha {ALPHA}")
    start = time.perf_counter()
    for spec in model_plan(args, dev):
        if args.only and args.only.lower() not in spec["name"].lower():
            continue
        for line in bench_model(spec, args, dev):
            print(line, flush=True)
        print()
    print(
        f"# total {time.perf_counter() - start:.0f} s. ratio: certrisk rows/s over the limit of the same precision and"
        " compile setting at the same forward size, measured just before and after each job; limit column: the"
        " large-N job's; real: share of forwarded rows that belong to an input at"
        " n = 1k; s/img@100k: (n0 + 100k) / rows/s at large N, extrapolated from the measured rate."
    )


if __name__ == "__main__":
    main()
