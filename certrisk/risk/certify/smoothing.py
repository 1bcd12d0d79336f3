"""Randomized smoothing (Cohen, Rosenfeld and Kolter 2019), certified for many inputs at once.

The smoothed classifier is ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)``. If the top class's
probability is at least ``p_lower > 1/2``, g is constant on the l2 ball of radius
``sigma * Phi^-1(p_lower)`` around x (Theorem 1).

How the work is laid out
------------------------
Every input owns two noise streams, selection and estimation, whose 64-bit keys come from the
input's own seed (``batch.stream_seed``). Row r of a stream is noise computed from (key, r)
alone by the counter-based generator of ``certrisk.risk.certify.noise`` (splitmix64 words,
Box-Muller), so an input sees the same noise whether it is certified alone, in a shard of 3 or in
a batch of 500, and however its rows fall into chunks. The rows of many inputs' streams are
packed back to back into fixed-size chunks; each chunk's noise is computed at once (~30
elementwise kernels however many inputs it holds), the chunk is forwarded in slices of
``batch_size`` rows (the last chunk is padded to a whole slice, so every forward pass has the
same number of rows), and the predictions are counted per (input, stream, class) with one
``index_add_`` on the device. Nothing is copied to the host until an input's counts are needed
(once at the end in fixed mode, once per stage in sequential mode), and nothing in a chunk waits
for the device, so on CUDA the host queues the next chunk while the device runs this one. Only
one chunk of noisy copies exists at a time.

The noise is the same integer bits on every device; CPU and CUDA round the Box-Muller floats
differently (a few ulps), and their convolution kernels differ too, so certificates computed on
the two devices can differ where a noisy copy sits on a decision boundary. Certificates made
before this generator (certrisk drew noise with one ``torch.Generator`` per stream until then) do
not reproduce bitwise under the same seeds; they agree in distribution.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binomtest, norm

from certrisk.risk.certify.batch import CertificateBatch, resolve_seeds, stream_seed
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
from certrisk.risk.certify.noise import BLOCK_WORDS, as_int64, normal_rows
from certrisk.risk.certify.stats import clopper_pearson_lower, clopper_pearson_upper, smoothing_radius
from certrisk.schemas.enums import Method, Norm
from certrisk.schemas.errors import InputError

#: Fewest rows whose noise is computed at once, by device type (a chunk is this rounded up to a
#: multiple of the forward size), so that the generator's ~30 kernel calls are amortised over
#: many rows; capped at ``CHUNK_ELEMENTS`` noise elements. Not part of the reproducibility
#: contract: the noise of a row does not depend on the chunk it lands in, and the last chunk is
#: padded only to a whole forward slice.
MIN_CHUNK_ROWS = {"cpu": 4096, "cuda": 8192}
CHUNK_ELEMENTS = 1 << 24
#: Candidate forward-pass sizes measured when ``batch_size`` is None.
CANDIDATE_ROWS = {"cpu": (256, 512, 1024, 2048, 4096), "cuda": (2048, 8192, 32768, 65536, 131072, 262144)}
#: First stage of sequential mode (noise samples per input); each later stage doubles it.
SEQUENTIAL_FIRST_STAGE = 512

_SELECTION, _ESTIMATION = 1, 2
_best_rows: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _chunk_rows(dev: torch.device, forward_rows: int, width: int) -> int:
    """Rows per chunk: a multiple of ``forward_rows``, at least MIN_CHUNK_ROWS within CHUNK_ELEMENTS."""
    want = max(1, min(MIN_CHUNK_ROWS.get(dev.type, MIN_CHUNK_ROWS["cpu"]), CHUNK_ELEMENTS // width))
    return -(-max(forward_rows, want) // forward_rows) * forward_rows


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure_forward_rows(
    model, x: torch.Tensor, *, candidates=None, min_seconds: float = 0.05
) -> dict[int, float]:
    """Forward passes per second of ``model`` at each candidate batch size (rows of x[0] plus noise).

    x : tensor of shape (B, *input_shape) on the model's device. Sizes that run out of CUDA
    memory are left out. Returns {rows: rows per second}.
    """
    dev = x.device
    sizes = candidates or CANDIDATE_ROWS.get(dev.type, CANDIDATE_ROWS["cpu"])
    rates: dict[int, float] = {}
    with torch.inference_mode():
        for rows in sizes:
            try:
                batch = x[:1].expand(rows, *x.shape[1:]) + torch.randn(
                    (rows, *x.shape[1:]), device=dev, dtype=x.dtype
                )
                model(batch)
                _sync(dev)
                reps, start = 0, time.perf_counter()
                while True:
                    model(batch).argmax(1)
                    reps += 1
                    _sync(dev)
                    elapsed = time.perf_counter() - start
                    if elapsed >= min_seconds and reps >= 2:
                        break
                rates[rows] = rows * reps / elapsed
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                break
    return rates


def _auto_rows(model, x: torch.Tensor) -> int:
    """The fastest measured forward size that fits, cached per model, input shape, device and dtype.

    The choice does not depend on the batch being certified (short jobs are padded), so that
    within a process every call forwards the same number of rows and a sample's certificate does
    not depend on its shard. Across processes the measurement may pick another size; on CUDA,
    kernels can differ with the size, so pass ``batch_size`` (the policy's) for certificates that
    must be bitwise reproducible across processes.
    """
    key = (tuple(x.shape[1:]), str(x.device), x.dtype)
    try:
        cache = _best_rows.setdefault(model, {})
    except TypeError:
        cache = {}
    if key in cache:
        return cache[key]
    sizes = CANDIDATE_ROWS.get(x.device.type, CANDIDATE_ROWS["cpu"])
    rates = measure_forward_rows(model, x, candidates=sizes)
    best = max(rates, key=rates.get) if rates else sizes[0]
    cache[key] = best
    return best


@dataclass
class _Plan:
    """Stream segments in packing order, each of shape (S,): count-table row, input, stream key,
    first row within the stream, number of rows."""

    slot: list
    owner: list
    key: list
    first: list
    rows: list

    @classmethod
    def empty(cls) -> _Plan:
        return cls([], [], [], [], [])

    def add(self, slot: int, owner: int, key: int, first: int, stop: int) -> None:
        """Rows [first, stop) of the stream with this key, counted in ``slot``."""
        if stop > first:
            self.slot.append(slot)
            self.owner.append(owner)
            self.key.append(key)
            self.first.append(first)
            self.rows.append(stop - first)


class _NoisyCounter:
    """Computes noise chunk by chunk, forwards it and counts predictions per slot on the device."""

    def __init__(self, model, x: torch.Tensor, sigma: float, n_slots: int, forward_rows: int):
        self.model = model
        self.x = x
        self.sigma = float(sigma)
        self.dev = x.device
        self.forward_rows = int(forward_rows)
        self.width = int(np.prod(x.shape[1:]))
        self.chunk_rows = _chunk_rows(self.dev, self.forward_rows, self.width)
        self.n_slots = n_slots
        self.trash = n_slots  # padded rows are counted here and ignored
        self.noise = torch.empty((self.chunk_rows, *x.shape[1:]), device=self.dev, dtype=x.dtype)
        self.ones = torch.ones(self.chunk_rows, dtype=torch.int64, device=self.dev)
        self.counts: torch.Tensor | None = None
        self.k: int | None = None
        self.rows_forwarded = 0
        self.activation_bytes = 0

    def run(self, plan: _Plan) -> None:
        """Compute, forward and count every row of the plan; pads the last chunk to a whole forward slice."""
        if not plan.rows:
            return
        dev = self.dev
        count = torch.tensor(plan.rows, dtype=torch.int64)
        ends = torch.cumsum(count, 0)
        total = int(ends[-1])
        ends, count = ends.to(dev), count.to(dev)
        slot, owner, key, first = (
            torch.tensor(v, dtype=torch.int64, device=dev)
            for v in (plan.slot, plan.owner, plan.key, plan.first)
        )
        first = first - (ends - count)  # stream row = first + packed position
        last = len(plan.rows) - 1
        steps = torch.arange(self.chunk_rows, dtype=torch.int64, device=dev)
        for g0 in range(0, total, self.chunk_rows):
            fwd = self.forward_rows
            rows = min(self.chunk_rows, -(-(total - g0) // fwd) * fwd)
            pos = steps[:rows] + g0
            seg = torch.searchsorted(ends, pos, right=True)
            padded = seg > last
            seg.clamp_(max=last)
            slots = slot[seg].masked_fill_(padded, self.trash)
            noise = self.noise[:rows]
            normal_rows(key[seg], first[seg] + pos, self.width, out=noise.view(rows, self.width))
            batch = self.x.index_select(0, owner[seg])
            batch.add_(noise, alpha=self.sigma)
            preds = self._predict(batch)
            if self.counts is None:
                self.counts = torch.zeros((self.n_slots + 1) * self.k, dtype=torch.int64, device=dev)
            # index_add_, not bincount: CUDA's bincount reads the largest index back to the host
            self.counts.index_add_(0, slots * self.k + preds, self.ones[:rows])
            self.rows_forwarded += rows

    def _predict(self, batch: torch.Tensor) -> torch.Tensor:
        preds = []
        start = 0
        while start < batch.shape[0]:
            piece = batch[start : start + self.forward_rows]
            try:
                if self.k is None:
                    logits = self._first_forward(piece)
                else:
                    logits = self.model(piece)
            except torch.cuda.OutOfMemoryError:
                if self.forward_rows <= 1:
                    raise
                self.forward_rows //= 2
                torch.cuda.empty_cache()
                continue
            preds.append(logits.argmax(1))
            start += piece.shape[0]
        return preds[0] if len(preds) == 1 else torch.cat(preds)

    def _first_forward(self, piece: torch.Tensor) -> torch.Tensor:
        """Forward once with hooks that add up the leaf modules' output bytes (CPU peak estimate)."""
        handles = []
        total = [0]

        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor):
                total[0] += output.numel() * output.element_size()

        leaves = []
        if isinstance(self.model, torch.nn.Module) and not isinstance(self.model, torch.jit.ScriptModule):
            leaves = [m for m in self.model.modules() if not list(m.children())]
        for m in leaves:
            handles.append(m.register_forward_hook(hook))
        try:
            logits = run_model(self.model, piece, "smooth_certify")
        finally:
            for h in handles:
                h.remove()
        self.k = int(logits.shape[1])
        self.activation_bytes = total[0]
        return logits

    def table(self) -> np.ndarray:
        """Counts as int64 of shape (n_slots, K) on the host (one device sync)."""
        if self.counts is None:
            raise RuntimeError("no forward pass has run")
        return self.counts.view(self.n_slots + 1, self.k)[: self.n_slots].cpu().numpy()

    def cpu_peak_estimate(self) -> int:
        """Estimate of the working set: certrisk's buffers, the inputs, the parameters,
        the model's leaf outputs for one forward slice, and the count table."""
        rows = self.chunk_rows
        words = min(rows * ((self.width + 1) // 2), max(BLOCK_WORDS, (self.width + 1) // 2))
        # noise and the noisy batch; the generator's int64 and float temporaries; per-row indices
        buffers = self.noise.numel() * self.noise.element_size() * 2 + words * 8 * 3 + rows * 8 * 10
        params = sum(p.numel() * p.element_size() for p in getattr(self.model, "parameters", list)())
        counts = 0 if self.counts is None else self.counts.numel() * 8
        x_bytes = self.x.numel() * self.x.element_size()
        return int(buffers + params + counts + x_bytes + self.activation_bytes)


def _stream_keys(seeds: np.ndarray, which: int) -> list[int]:
    """The noise key (int64 reading of ``stream_seed``) of each input's selection or estimation stream."""
    return [as_int64(stream_seed(int(s), which)) for s in seeds]


def _validate(model, x, sigma, n0, n, alpha, batch_size, mode, target_radius, device, what):
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
    model, dev = place(model, device)
    xt = as_batch(x, what=what, device=dev, dtype=model_dtype(model))
    with torch.inference_mode():
        run_model(model, xt[:1], what)  # fail early, with the shape named, before any measuring
    return model, dev, xt


def _peak_start(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_end(dev: torch.device, counter: _NoisyCounter) -> tuple[int, str]:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev)), "measured (torch.cuda.max_memory_allocated)"
    return counter.cpu_peak_estimate(), "estimate (buffers + inputs + parameters + leaf outputs)"


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

    Guarantee (fixed mode)
    ----------------------
    For each input, with probability at least 1 - alpha over its noise, if the returned
    prediction is not -1 then the smoothed classifier g returns that class everywhere in the l2
    ball of the returned radius around the input. c_A comes from the n0 selection samples only; the
    n estimation samples are independent of them; ``p_lower`` is the one-sided Clopper-Pearson
    bound at level alpha (float64, rounded down); the input abstains (prediction -1, radius 0)
    when p_lower < 1/2; the radius is ``sigma * Phi^-1(p_lower)`` rounded down.

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
    stopping rule looked at. With the same probability, an input that stopped on its upper bound
    has ``sigma * Phi^-1(p_A) < target_radius``. The radius reported at the last stage uses level
    alpha / K and is therefore slightly below fixed mode's at the same n.

    Returns
    -------
    CertificateBatch with ``n_used`` = ``n_forward`` = n0 + estimation samples used per input, and
    ``extra`` holding ``forward_rows`` (the forward size used), ``rows_forwarded`` (including
    padding) and, in sequential mode, ``stages``.
    """
    what = "smooth_certify"
    model, dev, xt = _validate(model, x, sigma, n0, n, alpha, batch_size, mode, target_radius, device, what)
    b = xt.shape[0]
    seeds = resolve_seeds(seed, b)
    start = time.perf_counter()
    _peak_start(dev)
    with torch.inference_mode():
        rows = batch_size or _auto_rows(model, xt)
        counter = _NoisyCounter(model, xt, sigma, 2 * b, rows)
        sel = _stream_keys(seeds, _SELECTION)
        est = _stream_keys(seeds, _ESTIMATION)
        if mode == "fixed":
            plan = _Plan.empty()
            for i in range(b):
                plan.add(b + i, i, sel[i], 0, n0)
                plan.add(i, i, est[i], 0, n)
            counter.run(plan)
            table = counter.table()
            c_a = table[b:].argmax(axis=1)
            n_a = table[np.arange(b), c_a]
            used = np.full(b, n, dtype=np.int64)
            p_lower = clopper_pearson_lower(n_a, used, alpha)
            stages = None
        else:
            plan = _Plan.empty()
            for i in range(b):
                plan.add(b + i, i, sel[i], 0, n0)
            counter.run(plan)
            c_a = counter.table()[b:].argmax(axis=1)
            p_lower, used, stages = _sequential(counter, est, c_a, b, n, alpha, sigma, target_radius)
        peak, peak_kind = _peak_end(dev, counter)
    seconds = time.perf_counter() - start
    abstained = p_lower < 0.5
    radius = np.where(abstained, 0.0, smoothing_radius(p_lower, sigma))
    extra = {"forward_rows": counter.forward_rows, "rows_forwarded": counter.rows_forwarded}
    if stages is not None:
        extra["stages"] = stages
    return CertificateBatch(
        method=Method.SMOOTHING,
        norm=Norm.L2,
        prediction=np.where(abstained, -1, c_a).astype(np.int64),
        abstained=abstained,
        radius=radius.astype(np.float64),
        p_lower=p_lower.astype(np.float64),
        n_used=(used + n0).astype(np.int64),
        n_forward=(used + n0).astype(np.int64),
        seed=seeds,
        alpha=float(alpha),
        seconds=seconds,
        peak_bytes=peak,
        peak_bytes_kind=peak_kind,
        device=device_name(dev),
        dtype=dtype_name(xt.dtype),
        dim=int(np.prod(xt.shape[1:])),
        sigma=float(sigma),
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


def _sequential(counter, est, c_a, b, n, alpha, sigma, target_radius):
    stages = sequential_stages(n)
    level = alpha / len(stages)
    p_target = float(norm.cdf(float(target_radius) / float(sigma)))
    active = np.ones(b, dtype=bool)
    p_lower = np.zeros(b)
    used = np.zeros(b, dtype=np.int64)
    prev = 0
    rows = np.arange(b)
    for k, size in enumerate(stages):
        idx = np.flatnonzero(active)
        plan = _Plan.empty()
        for i in idx:
            plan.add(int(i), int(i), est[i], prev, size)
        counter.run(plan)
        table = counter.table()
        n_a = table[rows, c_a][idx]
        lo = clopper_pearson_lower(n_a, size, level)
        p_lower[idx] = lo
        used[idx] = size
        if k == len(stages) - 1:
            break
        hi = clopper_pearson_upper(n_a, size, level)
        settled = (smoothing_radius(lo, sigma) >= target_radius) | (hi < p_target)
        active[idx[settled]] = False
        if not active.any():
            break
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
) -> np.ndarray:
    """Cohen et al.'s PREDICT for a batch: the smoothed classifier's class, or -1 (abstain).

    Counts the top two classes (n_A, n_B) among n noisy samples and abstains unless the two-sided
    binomial test of n_A out of n_A + n_B against 1/2 (``scipy.stats.binomtest``) rejects at
    level alpha. With probability at least 1 - alpha, a returned class is g(x).

    x : array of shape (B, *input_shape). Returns int64 array of shape (B,).
    """
    what = "smooth_predict"
    model, _, xt = _validate(model, x, sigma, 1, n, alpha, batch_size, "fixed", None, device, what)
    b = xt.shape[0]
    seeds = resolve_seeds(seed, b)
    with torch.inference_mode():
        rows = batch_size or _auto_rows(model, xt)
        counter = _NoisyCounter(model, xt, sigma, b, rows)
        est = _stream_keys(seeds, _ESTIMATION)
        plan = _Plan.empty()
        for i in range(b):
            plan.add(i, i, est[i], 0, n)
        counter.run(plan)
        table = counter.table()
    order = np.argsort(-table, axis=1, kind="stable")
    top, second = order[:, 0], order[:, 1]
    n_a = table[np.arange(b), top]
    n_b = table[np.arange(b), second]
    out = np.full(b, -1, dtype=np.int64)
    for i in range(b):
        if n_a[i] + n_b[i] == 0:
            continue
        if binomtest(int(n_a[i]), int(n_a[i] + n_b[i]), 0.5).pvalue <= alpha:
            out[i] = top[i]
    return out
