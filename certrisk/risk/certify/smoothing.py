"""Randomized smoothing (Cohen, Rosenfeld and Kolter 2019), certified for many inputs at once.

The smoothed classifier is ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)``. If the top class's
probability is at least ``p_lower > 1/2``, g is constant on the l2 ball of radius
``sigma * Phi^-1(p_lower)`` around x (Theorem 1).

``smooth_certify`` and ``smooth_predict`` are Cohen et al.'s CERTIFY and PREDICT (``core.py`` in
locuslab/smoothing) for a batch: the sampling (noise streams per input, many inputs packed into
every forward pass, counts kept on the device) lives in ``certrisk.risk.certify.packing``, the
confidence bounds in ``certrisk.risk.certify.stats``.

Each input's noise is a pure function of its seed and the row's index in the stream, so a
certificate does not depend on the batch or shard its input was certified in. The noise is the
same integer bits on every device; CPU and CUDA round the Box-Muller floats differently (a few
ulps), and their convolution kernels differ too, so certificates computed on the two devices can
differ where a noisy copy sits on a decision boundary. Certificates made before the counter-based
generator (certrisk drew noise with one ``torch.Generator`` per stream until then) do not
reproduce bitwise under the same seeds; they agree in distribution.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.stats import binomtest, norm

from certrisk.risk.certify.batch import CertificateBatch, resolve_seeds
from certrisk.risk.certify.inputs import (
    as_batch,
    check_alpha,
    check_positive,
    device_name,
    dtype_name,
    model_dtype,
    place,
    run_model,
)
from certrisk.risk.certify.packing import ESTIMATION, SELECTION, NoiseSampler
from certrisk.risk.certify.precision import ExecutedModel
from certrisk.risk.certify.stats import clopper_pearson_lower, clopper_pearson_upper, smoothing_radius
from certrisk.risk.models import select_device
from certrisk.schemas.columns import ABSTAIN
from certrisk.schemas.enums import Method, Norm
from certrisk.schemas.errors import InputError

#: First stage of sequential mode (noise samples per input); each later stage doubles it.
SEQUENTIAL_FIRST_STAGE = 512


def _validate(model, x, sigma, n0, n, alpha, batch_size, mode, target_radius, device, what):
    """Check the parameters, place the model and the inputs; returns (model, device, x as a tensor)."""
    check_positive(sigma, "sigma", what)
    check_positive(n0, "n0", what, integer=True)
    check_positive(n, "n", what, integer=True)
    check_alpha(alpha, what)
    if batch_size is not None:
        check_positive(batch_size, "batch_size", what, integer=True)
    if mode not in ("fixed", "sequential"):
        raise InputError(f"{what}: mode must be 'fixed' or 'sequential', got {mode!r}")
    if target_radius is not None:
        check_positive(target_radius, "target_radius", what)
    if mode == "sequential" and target_radius is None:
        raise InputError(f"{what}: mode='sequential' needs target_radius (the radius to settle)")
    if isinstance(model, ExecutedModel):
        if device is not None and select_device(device) != model.device:
            raise InputError(f"{what}: an ExecutedModel runs on {model.device}, not on device={device!r}")
        dev = model.device
        xt = as_batch(x, what=what, device=dev, dtype=model_dtype(model.module))
        with torch.inference_mode():
            run_model(model.eager, xt[:1], what)
        return model, dev, xt
    model, dev = place(model, device)
    xt = as_batch(x, what=what, device=dev, dtype=model_dtype(model))
    with torch.inference_mode():
        run_model(model, xt[:1], what)  # fail early, with the shape named, before any measuring
    return model, dev, xt


def _executed(model, precision: str, compile: str, dev) -> ExecutedModel:
    """The model as executed: ``model`` itself when it is an ExecutedModel (its own precision and
    compile mode win), else ``model`` at ``precision`` and ``compile``."""
    if isinstance(model, ExecutedModel):
        return model
    return ExecutedModel(model, precision=precision, compile=compile, device=dev)


def _count_of(table: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """table[i, classes[i]] for every row i: the count of each input's chosen class, shape (B,)."""
    return table[np.arange(len(classes)), classes]


def smooth_certify(
    model,
    x,
    *,
    sigma: float,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int | None = None,
    seed=0,
    device=None,
    mode: str = "fixed",
    target_radius: float | None = None,
    precision: str = "fp32",
    compile: str = "off",
    progress=None,
) -> CertificateBatch:
    """Cohen et al.'s CERTIFY for a batch of inputs, packed into shared forward passes.

    Parameters
    ----------
    model : callable mapping a tensor of shape (rows, *input_shape) to logits (rows, K), in eval mode
    x : tensor or array of shape (B, *input_shape)
    sigma : noise standard deviation (l2 units of the input)
    n0 : selection samples per input; the top class among them is the candidate c_A
    n : estimation samples per input (the most used in sequential mode)
    alpha : failure probability of each input's certificate
    batch_size : rows per forward pass; None measures a few sizes once per model and picks the fastest
    seed : int (per-input seeds derived from it and the input's position) or int array of shape (B,)
    device : torch device; None keeps the model's device
    mode : "fixed" (exactly n estimation samples) or "sequential" (see below)
    target_radius : l2 radius whose certification sequential mode settles per input
    precision : "fp32", "bf16" or "fp16": the model runs under autocast at it (noise is drawn
        and added in float32); the base classifier f is the model as executed at this precision
    compile : "off", "default" or "max-autotune" (torch.compile; eager with a warning on failure).
        ``model`` may be a ``precision.ExecutedModel`` (compiled once, reused); its own precision
        and compile mode then apply.
    progress : None or a callable ``progress(done_rows, total_rows)`` called after every chunk
        (``progress.ProgressLog`` logs it at a bounded rate)

    Guarantee (fixed mode)
    ----------------------
    For each input, with probability at least 1 - alpha over its noise, if the returned
    prediction is not ``ABSTAIN`` (-1) then the smoothed classifier g returns that class everywhere
    in the l2 ball of the returned radius around the input. c_A comes from the n0 selection samples
    only; the n estimation samples are independent of them; ``p_lower`` is the one-sided
    Clopper-Pearson bound at level alpha (float64, rounded down); the input abstains (prediction
    ``ABSTAIN``, radius 0) when p_lower <= 1/2, as Cohen et al. do (at 1/2 no ball is certified);
    the radius is ``sigma * Phi^-1(p_lower)`` rounded down.

    Broken models
    -------------
    A noisy copy whose logits hold a NaN or inf is a vote for no class (it never counts for c_A),
    and any such vote, in selection or estimation, makes the input abstain whatever p_lower says:
    a model with NaN weights abstains on every input instead of being certified everywhere.
    ``extra["nonfinite_votes"]`` counts those copies per input (the reason of the abstention).

    Guarantee (sequential mode)
    ---------------------------
    Estimation samples are drawn in K stages of cumulative sizes 512, 1024, 2048, ... up to n;
    after each stage, the Clopper-Pearson lower and upper bounds at level alpha / K are computed
    for every input still running. An input stops as soon as its lower bound certifies
    ``target_radius``, or its upper bound shows ``target_radius`` cannot be certified (which
    includes settled abstention, since the target needs p_A > 1/2), or after the last stage. It
    reports the stage's lower bound and radius. Since each of the K lower bounds fails with
    probability at most alpha / K, all of them hold together with probability at least 1 - alpha
    (union bound), so the reported radius carries the same guarantee as fixed mode whatever the
    stopping rule looked at. The K upper bounds hold together with probability at least
    1 - alpha too, so an input that stopped on its upper bound has
    ``sigma * Phi^-1(p_A) < target_radius`` with probability at least 1 - alpha; that statement
    and the certificates hold jointly (all 2K bounds) with probability at least 1 - 2 alpha. The
    largest radius sequential mode can report is ``sigma * Phi^-1((alpha / K)^(1/n))``, below
    fixed mode's ``sigma * Phi^-1(alpha^(1/n))``, since the last stage uses level alpha / K.

    Precision
    ---------
    The guarantee is about the smoothed classifier of whatever base classifier f the counts come
    from; it needs exact Gaussian noise (float32 here), not exact arithmetic in f. At bf16 or fp16
    the certificate holds for the smoothed classifier of the model *as executed at that precision*
    (and compiled graph), which the certificate records; how often that f disagrees with the
    served model is the serving parity (``precision.serving_parity``). An fp16 logit that
    overflows is a non-finite vote (the input abstains).

    Returns
    -------
    CertificateBatch with ``n_used`` = ``n_forward`` = n0 + estimation samples used per input,
    ``precision`` and ``compile`` as executed (compile "off" after a fallback), ``seconds``
    without compile time, and ``extra`` holding ``forward_rows`` (the forward size used),
    ``rows_forwarded`` (including padding), ``rows_real`` (without), ``compile_seconds``,
    ``execution`` (``ExecutedModel.describe()``), ``nonfinite_votes`` (int64 (B,), noisy copies with non-finite logits) and, in
    sequential mode, ``stages``.
    """
    what = "smooth_certify"
    model, dev, xt = _validate(model, x, sigma, n0, n, alpha, batch_size, mode, target_radius, device, what)
    seeds = resolve_seeds(seed, xt.shape[0])
    executed = _executed(model, precision, compile, dev)
    total = int(xt.shape[0]) * (int(n0) + int(n))
    report = None if progress is None else (lambda done: progress(done, total))
    compiling, start = executed.compile_seconds, time.perf_counter()
    with torch.inference_mode():
        sampler = NoiseSampler(
            executed, xt, sigma=sigma, seeds=seeds, forward_rows=batch_size, progress=report
        )
        if mode == "fixed":
            sampler.sample([(SELECTION, 0, n0), (ESTIMATION, 0, n)])  # one pass, two independent streams
            selection, estimation = sampler.counts(SELECTION, ESTIMATION)
            c_a = selection.argmax(axis=1)
            used = np.full(len(c_a), n, dtype=np.int64)
            p_lower = clopper_pearson_lower(_count_of(estimation, c_a), used, alpha)
            stages = None
            nonfinite = sampler.nonfinite(SELECTION, ESTIMATION)
        else:
            sampler.sample([(SELECTION, 0, n0)])
            (selection,) = sampler.counts(SELECTION)
            c_a = selection.argmax(axis=1)
            p_lower, used, stages = _sequential(sampler, c_a, n, alpha, sigma, target_radius)
            nonfinite = sampler.nonfinite(SELECTION, ESTIMATION)
        peak = sampler.peak_memory()
    compile_seconds = executed.compile_seconds - compiling  # this call's compiling only
    seconds = time.perf_counter() - start - compile_seconds
    abstained = (p_lower <= 0.5) | (nonfinite > 0)
    extra = {
        "forward_rows": sampler.forward_rows,
        "rows_forwarded": sampler.rows_forwarded,
        "rows_real": sampler.rows_real,
        "compile_seconds": compile_seconds,
        "execution": executed.describe(),
        "nonfinite_votes": nonfinite,
    }
    if stages is not None:
        extra["stages"] = stages
    return CertificateBatch(
        method=Method.SMOOTHING,
        norm=Norm.L2,
        prediction=np.where(abstained, ABSTAIN, c_a).astype(np.int64),
        abstained=abstained,
        radius=np.where(abstained, 0.0, smoothing_radius(p_lower, sigma)).astype(np.float64),
        p_lower=p_lower.astype(np.float64),
        n_used=(used + n0).astype(np.int64),
        n_forward=(used + n0).astype(np.int64),
        seed=seeds,
        alpha=float(alpha),
        seconds=seconds,
        peak_bytes=peak[0],
        peak_bytes_kind=peak[1],
        device=device_name(dev),
        dtype=dtype_name(xt.dtype),
        dim=int(np.prod(xt.shape[1:])),
        sigma=float(sigma),
        precision=executed.precision,
        compile=executed.compile,
        extra=extra,
    )


def sequential_stages(n: int) -> list[int]:
    """Cumulative estimation sample sizes of sequential mode: 512, 1024, ... (doubling), ending at n."""
    stages = []
    size = SEQUENTIAL_FIRST_STAGE
    while size < n:
        stages.append(size)
        size *= 2
    stages.append(n)
    return stages


def _sequential(sampler: NoiseSampler, c_a, n, alpha, sigma, target_radius):
    """Sequential mode's estimation stages (see ``smooth_certify``) for candidate classes c_a (B,).

    Returns (p_lower float64 (B,), estimation samples used int64 (B,), the stages). An input with a
    non-finite vote stops at once (it abstains): before the first stage when a selection copy had
    one (p_lower 0, no estimation samples), else after the stage that saw it.
    """
    stages = sequential_stages(n)
    level = alpha / len(stages)
    p_target = float(norm.cdf(float(target_radius) / float(sigma)))
    active = sampler.nonfinite(SELECTION) == 0
    p_lower = np.zeros(len(c_a))
    used = np.zeros(len(c_a), dtype=np.int64)
    prev = 0
    for k, size in enumerate(stages):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        sampler.sample([(ESTIMATION, prev, size)], inputs=idx)
        (estimation,) = sampler.counts(ESTIMATION)
        n_a = _count_of(estimation, c_a)[idx]
        lo = clopper_pearson_lower(n_a, size, level)
        p_lower[idx] = lo
        used[idx] = size
        if k == len(stages) - 1:
            break
        hi = clopper_pearson_upper(n_a, size, level)
        settled = (smoothing_radius(lo, sigma) >= target_radius) | (hi < p_target)
        settled |= sampler.nonfinite(ESTIMATION)[idx] > 0
        active[idx[settled]] = False
        prev = size
    return p_lower, used, stages


def smooth_predict(
    model,
    x,
    *,
    sigma: float,
    n: int = 10_000,
    alpha: float = 0.001,
    batch_size: int | None = None,
    seed=0,
    device=None,
    precision: str = "fp32",
) -> np.ndarray:
    """Cohen et al.'s PREDICT for a batch: the smoothed classifier's class, or ``ABSTAIN`` (-1).

    Counts the top two classes (n_A, n_B) among n noisy samples and abstains unless the two-sided
    binomial test of n_A out of n_A + n_B against 1/2 (``scipy.stats.binomtest``) rejects at
    level alpha. With probability at least 1 - alpha, a returned class is g(x). An input with any
    noisy copy whose logits are not all finite abstains.

    x : array of shape (B, *input_shape); precision : as in ``smooth_certify``. Returns int64
    array of shape (B,).
    """
    what = "smooth_predict"
    model, dev, xt = _validate(model, x, sigma, 1, n, alpha, batch_size, "fixed", None, device, what)
    seeds = resolve_seeds(seed, xt.shape[0])
    executed = _executed(model, precision, "off", dev)
    with torch.inference_mode():
        sampler = NoiseSampler(
            executed, xt, sigma=sigma, seeds=seeds, forward_rows=batch_size, streams=(ESTIMATION,)
        )
        sampler.sample([(ESTIMATION, 0, n)])
        (counts,) = sampler.counts(ESTIMATION)
        nonfinite = sampler.nonfinite(ESTIMATION)
    order = np.argsort(-counts, axis=1, kind="stable")
    top, second = order[:, 0], order[:, 1]
    n_a, n_b = _count_of(counts, top), _count_of(counts, second)
    out = np.full(len(top), ABSTAIN, dtype=np.int64)
    for i in range(len(top)):
        if n_a[i] + n_b[i] == 0 or nonfinite[i] > 0:
            continue
        if binomtest(int(n_a[i]), int(n_a[i] + n_b[i]), 0.5).pvalue <= alpha:
            out[i] = top[i]
    return out
