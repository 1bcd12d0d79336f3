"""The packing engine of randomized smoothing: many inputs' noisy copies in shared forward passes.

Every input owns two noise streams, selection and estimation, whose 64-bit keys come from the
input's own seed (``batch.stream_seed``). Row r of a stream is noise computed from (key, r)
alone by the counter-based generator of ``certrisk.risk.certify.noise`` (splitmix64 words,
Box-Muller), so an input sees the same noise whether it is certified alone, in a shard of 3 or in
a batch of 500, and however its rows fall into chunks. The rows of many inputs' streams are
packed back to back into fixed-size chunks; each chunk's noise is computed at once (~30
elementwise kernels however many inputs it holds), the chunk is forwarded in slices of
``forward_rows`` rows, and the last chunk's remainder in slices of ``forward_rows / 4`` and
``forward_rows / 16`` rows (``slice_sizes``), padded only to a whole 1/16 slice: padding stays
below ``forward_rows / 16`` rows per job, and every forward pass has one of three static shapes
(what compiled graphs and CUDA graphs need). The predictions are counted per (input, stream, class) with one
``index_add_`` on the device; a copy whose logits hold a NaN or inf is counted apart, for no
class (``nonfinite``: a broken model must not vote for the class argmax picks from NaN). A
``progress`` callback hears the rows done after every chunk. Nothing is copied to the host until
counts are asked for, and
nothing in a chunk waits for the device, so on CUDA the host queues the next chunk while the
device runs this one. Only one chunk of noisy copies exists at a time.

What "independent of the shard" means
-------------------------------------
The noise of every row is a pure function of (input seed, stream, row index): bitwise the same in
any shard, batch or chunk, on any device. The model's outputs on a row are the same bits whatever
the other rows of its forward pass when its kernels compute each row alone with a reduction order
that does not depend on the number of rows; certrisk forwards only the three sizes of
``slice_sizes`` so that at most three kernel configurations occur. On CPU (float32 and bf16
autocast, oneDNN) this holds for the convolution, linear and pooling layers certrisk was tested
with: a sample's certificate is identical whatever shard, shard size or batch it lands in
(``tests/risk/certify/test_packing.py``). On CUDA, cuDNN and cuBLAS may pick other algorithms for
other batch sizes; a noisy copy within float rounding of a decision boundary can then vote
differently, so counts can differ by a few votes between shard compositions (each certificate is
still valid, for the model as executed in its forward pass). Across devices and precisions the
noise is the same but the model's floats differ. Pass ``batch_size`` (a fixed forward size) and
keep device, precision, compile mode and library versions fixed for certificates that must
reproduce across processes.

``NoiseSampler`` is the whole interface: ``sample`` draws rows of streams, ``counts`` reads the
class counts back and ``nonfinite`` the copies with non-finite logits. The smoothing algorithms
(``smoothing.smooth_certify``, ``smooth_predict``) never see chunks, slots or padding.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from certrisk.risk.certify.batch import stream_seed
from certrisk.risk.certify.inputs import run_model
from certrisk.risk.certify.noise import BLOCK_WORDS, as_int64, normal_rows

#: Fewest rows whose noise is computed at once, by device type (a chunk is this rounded up to a
#: multiple of the forward size), so that the generator's ~30 kernel calls are amortised over
#: many rows; capped at ``CHUNK_ELEMENTS`` noise elements. Not part of the reproducibility
#: contract: the noise of a row does not depend on the chunk it lands in, and the last chunk is
#: padded only to a whole forward slice.
MIN_CHUNK_ROWS = {"cpu": 4096, "cuda": 8192}
CHUNK_ELEMENTS = 1 << 24
#: Candidate forward-pass sizes measured when no forward size is given.
CANDIDATE_ROWS = {"cpu": (256, 512, 1024, 2048, 4096), "cuda": (2048, 8192, 32768, 65536, 131072, 262144)}
#: The remainder of a job is forwarded in slices of forward_rows / 4 and forward_rows / 16 rows.
SLICE_DIVISORS = (1, 4, 16)
#: Smallest slice (rows): below it CPU kernels may round a row's output differently by batch size.
MIN_SLICE_ROWS = 32
#: The two noise streams of an input (the ``stream`` argument of ``batch.stream_seed``): selection
#: samples choose the top class, estimation samples bound its probability.
SELECTION, ESTIMATION = 1, 2

_best_rows: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def slice_sizes(forward_rows: int) -> tuple[int, ...]:
    """The forward sizes used with ``forward_rows``: it, a quarter and a sixteenth of it (at least
    ``MIN_SLICE_ROWS``, or forward_rows when smaller), largest first."""
    fwd = int(forward_rows)
    floor = min(fwd, MIN_SLICE_ROWS)
    return tuple(sorted({max(fwd // d, floor) for d in SLICE_DIVISORS}, reverse=True))


def slice_plan(rows: int, forward_rows: int) -> list[int]:
    """Sizes of the forward slices that cover ``rows`` rows: whole forward slices, then the
    remainder greedily in the smaller sizes, the last one padded. Sum >= rows, waste < the smallest size."""
    sizes = slice_sizes(forward_rows)
    out: list[int] = []
    left = int(rows)
    for size in sizes:
        out.extend([size] * (left // size))
        left -= size * (left // size)
    if left > 0:
        out.append(sizes[-1])
    return out


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


def fastest_forward_rows(model, x: torch.Tensor) -> int:
    """The fastest measured forward size that fits, cached per model, input shape, device, dtype
    and precision.

    ``model`` may be an ``ExecutedModel`` (``precision``): sizes are measured on its eager forward
    at its precision (compiling every candidate size would cost more than it tells). The choice
    does not depend on the batch being certified, so that within a process every call forwards the
    same sizes (``slice_sizes``) and a sample's certificate does not depend on its shard. Across
    processes the measurement may pick another size; pass ``batch_size`` (the policy's) for
    certificates that must be bitwise reproducible across processes.
    """
    owner = getattr(model, "source", model)
    forward = getattr(model, "eager", model)
    key = (
        tuple(x.shape[1:]),
        str(x.device),
        x.dtype,
        getattr(model, "precision", "fp32"),
        getattr(model, "channels_last", False),
    )
    try:
        cache = _best_rows.setdefault(owner, {})
    except TypeError:
        cache = {}
    if key in cache:
        return cache[key]
    sizes = CANDIDATE_ROWS.get(x.device.type, CANDIDATE_ROWS["cpu"])
    rates = measure_forward_rows(forward, x, candidates=sizes)
    best = max(rates, key=rates.get) if rates else sizes[0]
    cache[key] = best
    return best


def _chunk_rows(dev: torch.device, forward_rows: int, width: int) -> int:
    """Rows per chunk: a multiple of ``forward_rows``, at least MIN_CHUNK_ROWS within CHUNK_ELEMENTS."""
    want = max(1, min(MIN_CHUNK_ROWS.get(dev.type, MIN_CHUNK_ROWS["cpu"]), CHUNK_ELEMENTS // width))
    return -(-max(forward_rows, want) // forward_rows) * forward_rows


@dataclass
class _Plan:
    """Stream segments in packing order, each of shape (S,): count-table slot, input, stream key,
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

    def __init__(self, model, x: torch.Tensor, sigma: float, n_slots: int, forward_rows: int, progress=None):
        self.model = model
        self.progress = progress
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
        self.rows_real = 0
        self.activation_bytes = 0
        self._probe(x[:1])
        warm_up = getattr(model, "warm_up", None)
        if warm_up is not None:
            warm_up(x, slice_sizes(self.forward_rows))

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
            rows = min(self.chunk_rows, sum(slice_plan(total - g0, self.forward_rows)))
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
            # index_add_, not bincount: CUDA's bincount reads the largest index back to the host
            self.counts.index_add_(0, slots * (self.k + 1) + preds, self.ones[:rows])
            self.rows_forwarded += rows
            self.rows_real += min(rows, total - g0)
            if self.progress is not None:
                self.progress(self.rows_real)

    def _predict(self, batch: torch.Tensor) -> torch.Tensor:
        """Predicted class per row of the chunk (K where a logit is not finite), in ``slice_plan`` slices."""
        preds = []
        start = 0
        plan = slice_plan(batch.shape[0], self.forward_rows)
        while start < batch.shape[0]:
            piece = batch[start : start + plan[0]]
            try:
                logits = self.model(piece)
            except torch.cuda.OutOfMemoryError:
                if self.forward_rows <= 1:
                    raise
                self.forward_rows //= 2
                torch.cuda.empty_cache()
                plan = slice_plan(batch.shape[0] - start, self.forward_rows)
                continue
            # a row with a NaN or inf logit votes for no class: column k, "non-finite"
            preds.append(logits.argmax(1).masked_fill_(~torch.isfinite(logits).all(1), self.k))
            start += piece.shape[0]
            plan.pop(0)
        return preds[0] if len(preds) == 1 else torch.cat(preds)

    def _probe(self, one: torch.Tensor) -> None:
        """Forward one row eagerly with hooks that add up the leaf modules' output bytes: the number
        of classes K, and the activations of a forward slice (CPU peak estimate)."""
        handles = []
        total = [0]

        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor):
                total[0] += output.numel() * output.element_size()

        module = getattr(self.model, "module", self.model)
        forward = getattr(self.model, "eager", self.model)
        leaves = []
        if isinstance(module, torch.nn.Module) and not isinstance(module, torch.jit.ScriptModule):
            leaves = [m for m in module.modules() if not list(m.children())]
        for m in leaves:
            handles.append(m.register_forward_hook(hook))
        try:
            logits = run_model(forward, one, "smooth_certify")
        finally:
            for h in handles:
                h.remove()
        self.k = int(logits.shape[1])
        self.activation_bytes = total[0] * self.forward_rows
        self.counts = torch.zeros((self.n_slots + 1) * (self.k + 1), dtype=torch.int64, device=self.dev)

    def table(self) -> np.ndarray:
        """Counts as int64 of shape (n_slots, K + 1) on the host (one device sync); column K counts
        the rows whose logits were not all finite."""
        return self.counts.view(self.n_slots + 1, self.k + 1)[: self.n_slots].cpu().numpy()

    def cpu_peak_estimate(self) -> int:
        """Estimate of the working set: certrisk's buffers, the inputs, the parameters,
        the model's leaf outputs for one forward slice, and the count table."""
        rows = self.chunk_rows
        words = min(rows * ((self.width + 1) // 2), max(BLOCK_WORDS, (self.width + 1) // 2))
        # noise and the noisy batch; the generator's int64 and float temporaries; per-row indices
        buffers = self.noise.numel() * self.noise.element_size() * 2 + words * 8 * 3 + rows * 8 * 10
        module = getattr(self.model, "module", self.model)
        params = sum(p.numel() * p.element_size() for p in getattr(module, "parameters", list)())
        counts = 0 if self.counts is None else self.counts.numel() * 8
        x_bytes = self.x.numel() * self.x.element_size()
        return int(buffers + params + counts + x_bytes + self.activation_bytes)


class NoiseSampler:
    """Counts of a base classifier's predictions on noisy copies of B inputs, per input and stream.

    Construct it under ``torch.inference_mode()``. It resets the CUDA peak-memory counter, then
    picks the forward size (``forward_rows`` when given, else ``fastest_forward_rows``).

    Parameters
    ----------
    model : callable mapping a tensor of shape (rows, *input_shape) to logits (rows, K)
    x : tensor of shape (B, *input_shape) on the model's device, in its dtype
    sigma : noise standard deviation (l2 units of the input)
    seeds : int64 array of shape (B,), each input's seed (``batch.resolve_seeds``)
    forward_rows : rows per forward pass, or None to measure
    streams : the streams this sampler will draw from (a count table per stream)
    progress : None, or a callable given the real (not padding) rows forwarded so far, after
        every chunk
    """

    def __init__(
        self,
        model,
        x: torch.Tensor,
        *,
        sigma: float,
        seeds: np.ndarray,
        forward_rows: int | None,
        streams: Sequence[int] = (ESTIMATION, SELECTION),
        progress=None,
    ):
        self.device = x.device
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.n_inputs = int(x.shape[0])
        self.streams = tuple(streams)
        self._keys = {s: [as_int64(stream_seed(int(seed), s)) for seed in seeds] for s in self.streams}
        rows = forward_rows or fastest_forward_rows(model, x)
        self._counter = _NoisyCounter(model, x, sigma, len(self.streams) * self.n_inputs, rows, progress)

    def sample(self, draws: Iterable[tuple[int, int, int]], inputs: Iterable[int] | None = None) -> None:
        """Forward rows [start, stop) of each (stream, start, stop) in ``draws``, for every input in
        ``inputs`` (all by default), and add their predictions to the counts.

        Rows are packed input by input, each input's draws in the order given.
        """
        draws = list(draws)
        owners = range(self.n_inputs) if inputs is None else (int(i) for i in inputs)
        plan = _Plan.empty()
        for i in owners:
            for stream, start, stop in draws:
                plan.add(self._first_slot(stream) + i, i, self._keys[stream][i], int(start), int(stop))
        self._counter.run(plan)

    def counts(self, *streams: int) -> tuple[np.ndarray, ...]:
        """Per stream asked for, the class counts so far: int64 arrays of shape (B, K) (one device
        sync). A noisy copy whose logits were not all finite is counted in no class (``nonfinite``)."""
        table = self._counter.table()
        return tuple(table[self._first_slot(s) : self._first_slot(s) + self.n_inputs, :-1] for s in streams)

    def nonfinite(self, *streams: int) -> np.ndarray:
        """Noisy copies per input, over the streams asked for, whose logits held a NaN or inf:
        int64 array of shape (B,) (one device sync)."""
        table = self._counter.table()
        return sum(
            (table[self._first_slot(s) : self._first_slot(s) + self.n_inputs, -1] for s in streams),
            np.zeros(self.n_inputs, dtype=np.int64),
        )

    def _first_slot(self, stream: int) -> int:
        """Row of the count table where the stream's counts begin (input i's is this plus i)."""
        return self.streams.index(stream) * self.n_inputs

    @property
    def forward_rows(self) -> int:
        """Rows per forward pass (halved from the first choice if CUDA ran out of memory)."""
        return self._counter.forward_rows

    @property
    def rows_forwarded(self) -> int:
        """Rows forwarded so far, padding included."""
        return self._counter.rows_forwarded

    @property
    def rows_real(self) -> int:
        """Rows forwarded so far that belong to an input (padding excluded)."""
        return self._counter.rows_real

    def peak_memory(self) -> tuple[int, str]:
        """Peak bytes since construction and how they were obtained: measured on CUDA
        (``torch.cuda.max_memory_allocated``), an estimate of the working set on CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(
                torch.cuda.max_memory_allocated(self.device)
            ), "measured (torch.cuda.max_memory_allocated)"
        return self._counter.cpu_peak_estimate(), "estimate (buffers + inputs + parameters + leaf outputs)"
