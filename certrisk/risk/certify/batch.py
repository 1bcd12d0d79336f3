"""The result of certifying a batch, and the seeds that make it reproducible."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from certrisk.risk.certify.inputs import as_batch, device_name, dtype_name, model_dtype, place
from certrisk.risk.certify.network import sequential_layers
from certrisk.risk.certify.norms import translate_radius
from certrisk.schemas.columns import ABSTAIN, CERTIFICATE_COLUMNS, SAMPLE_ID, conform
from certrisk.schemas.enums import Method, Norm
from certrisk.schemas.errors import InputError

_SEED_MASK = (1 << 63) - 1


def derive_seeds(run_key: str, sample_ids: Sequence[str], method: str) -> np.ndarray:
    """Per-sample seeds that depend only on (run key, sample_id, method).

    Each seed is the first 8 bytes of ``sha256(run_key \\x1f sample_id \\x1f method)`` read
    big-endian with the top bit cleared: a non-negative int64 below 2**63. Retries, shards and
    batch order therefore cannot change a sample's seed.

    Returns an int64 array of shape (len(sample_ids),).
    """
    out = np.empty(len(sample_ids), dtype=np.int64)
    for i, sid in enumerate(sample_ids):
        digest = hashlib.sha256(f"{run_key}\x1f{sid}\x1f{method}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") & _SEED_MASK
    return out


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a bijection on 64-bit integers that scatters nearby inputs."""
    x &= (1 << 64) - 1
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return x ^ (x >> 31)


def resolve_seeds(seed, batch: int) -> np.ndarray:
    """Per-input seeds: an array of length ``batch`` as given, or, for an int, ``mix(seed, i)``.

    Returns int64 (batch,), every value in [0, 2**63).
    """
    if np.ndim(seed) == 0:
        try:
            base = int(seed)
        except (TypeError, ValueError):
            raise InputError(f"seed must be an int or an array of ints, got {seed!r}") from None
        return np.array(
            [_mix64(base * 0x9E3779B97F4A7C15 + i) & _SEED_MASK for i in range(batch)], dtype=np.int64
        )
    arr = np.asarray(seed)
    if arr.shape != (batch,):
        raise InputError(f"seed array must have shape ({batch},) to match the batch, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"seeds must be integers, got dtype {arr.dtype}")
    if (arr < 0).any():
        raise InputError(f"seeds must be non-negative, got {int(arr.min())} at row {int(np.argmin(arr))}")
    return arr.astype(np.int64)


def stream_seed(seed: int, stream: int) -> int:
    """Seed of an independent noise stream of one input (stream 1 = selection, 2 = estimation)."""
    return _mix64(int(seed) ^ _mix64(stream + 0x632BE59BD9B4E019))


@dataclass
class CertificateBatch:
    """Certificates of B inputs by one method.

    Arrays of shape (B,): ``prediction`` (int64, ``ABSTAIN`` where abstained), ``abstained``
    (bool), ``radius`` (float64, in ``norm``, 0 when abstained, rounded down), ``p_lower`` (float64; the lower
    confidence bound on the top class's probability under noise; NaN for deterministic methods),
    ``n_used`` (int64, samples used per input, selection + estimation), ``n_forward`` (int64,
    forward passes or bound propagations per input, see the method's docstring), ``seed`` (int64).

    Scalars: ``method``, ``norm``, ``sigma`` / ``eps`` (NaN where not applicable; for IBP with
    an eps search ``eps`` is NaN and the radius is the searched eps), ``alpha`` (failure
    probability of the certificate, 0 for deterministic methods), ``seconds`` (wall time of the
    whole batch), ``peak_bytes`` (peak memory of the batch: ``torch.cuda.max_memory_allocated``
    on CUDA, an upper-bound estimate on CPU, see ``peak_bytes_kind``), ``device``, ``dtype``,
    ``dim`` (number of input features, for translating radii between norms), ``precision`` (the
    arithmetic the model ran in: fp32, bf16 or fp16 autocast) and ``compile`` (the torch.compile
    mode, "off" for eager). Rows also name the ``worker`` host; the certify task adds its ``queue``.

    ``extra`` holds method-specific facts; ``extra["execution"]`` is always a dict describing
    what ran: ``covers`` (the arithmetic a deterministic bound holds for), or for smoothing the
    executed model (precision, compile mode requested and used, ``compile_fallback``, compile
    seconds).
    """

    method: Method
    norm: Norm
    prediction: np.ndarray
    abstained: np.ndarray
    radius: np.ndarray
    p_lower: np.ndarray
    n_used: np.ndarray
    n_forward: np.ndarray
    seed: np.ndarray
    alpha: float
    seconds: float
    peak_bytes: int
    device: str
    dtype: str
    dim: int
    sigma: float = float("nan")
    eps: float = float("nan")
    peak_bytes_kind: str = "measured"
    precision: str = "fp32"
    compile: str = "off"
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    def radius_in(self, norm: Norm | str) -> np.ndarray:
        """Radii in another norm that the certificates still cover (float64, (B,))."""
        return translate_radius(self.radius, self.norm, norm, self.dim)

    def to_frame(self, sample_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per input with exactly ``CERTIFICATE_COLUMNS`` in order.

        sample_ids : sequence of length B; default ``"0".."B-1"``. ``seconds`` is the batch's
        wall time divided by B so that sums over rows add up to the method's cost.
        """
        b = len(self)
        ids = [str(i) for i in range(b)] if sample_ids is None else [str(s) for s in sample_ids]
        if len(ids) != b:
            raise InputError(f"to_frame: {len(ids)} sample_ids for {b} certificates")
        frame = pd.DataFrame(
            {
                SAMPLE_ID: ids,
                "method": str(self.method),
                "norm": str(self.norm),
                "prediction": self.prediction.astype(np.int64),
                "abstained": self.abstained.astype(bool),
                "radius": self.radius.astype(np.float64),
                "radius_l1": self.radius_in(Norm.L1),
                "radius_l2": self.radius_in(Norm.L2),
                "radius_linf": self.radius_in(Norm.LINF),
                "p_lower": self.p_lower.astype(np.float64),
                "n_forward": self.n_forward.astype(np.int64),
                "alpha": float(self.alpha),
                "sigma": float(self.sigma),
                "eps": float(self.eps),
                "seed": self.seed.astype(np.int64),
                "seconds": float(self.seconds) / max(b, 1),
                "peak_bytes": int(self.peak_bytes),
                "device": str(self.device),
                "dtype": str(self.dtype),
                "precision": str(self.precision),
                "compile": str(self.compile),
                "worker": socket.gethostname(),
                "queue": "",
            }
        )
        return conform(frame, CERTIFICATE_COLUMNS, table="certificates")


@dataclass(frozen=True)
class DeterministicRun:
    """A deterministic certifier's inputs, placed and checked, with its clock and peak counter started.

    ``layers`` are the model's supported layers in order; ``x`` is of shape (B, *input_shape) on
    ``device`` in the model's dtype; ``seeds`` (B,) are recorded only (nothing is random).
    """

    model: object
    device: object
    layers: list
    dtype: object
    x: object
    seeds: np.ndarray
    start: float

    @classmethod
    def begin(cls, model, x, *, seed, device, what: str) -> DeterministicRun:
        sequential_layers(model, what)  # name an unsupported layer before moving anything
        model, dev = place(model, device)
        layers = sequential_layers(model, what)
        dtype = model_dtype(model)
        xt = as_batch(x, what=what, device=dev, dtype=dtype)
        seeds = resolve_seeds(seed, xt.shape[0])
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        return cls(model, dev, layers, dtype, xt, seeds, time.perf_counter())

    def finish(
        self,
        *,
        method: Method,
        norm: Norm,
        y: np.ndarray,
        ok: np.ndarray,
        radius: np.ndarray,
        n_forward: np.ndarray,
        cpu_peak: tuple[int, str],
        **scalars,
    ) -> CertificateBatch:
        """The CertificateBatch of a deterministic method: abstained where not ``ok``, alpha 0,
        p_lower NaN; peak memory measured on CUDA, else the method's own estimate ``cpu_peak``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = (
                int(torch.cuda.max_memory_allocated(self.device)),
                "measured (torch.cuda.max_memory_allocated)",
            )
        else:
            peak = cpu_peak
        b = len(ok)
        return CertificateBatch(
            method=method,
            norm=norm,
            prediction=np.where(ok, y, ABSTAIN).astype(np.int64),
            abstained=~ok,
            radius=np.where(ok, radius, 0.0).astype(np.float64),
            p_lower=np.full(b, np.nan),
            n_used=np.zeros(b, dtype=np.int64),
            n_forward=np.asarray(n_forward, dtype=np.int64),
            seed=self.seeds,
            alpha=0.0,
            seconds=time.perf_counter() - self.start,
            peak_bytes=peak[0],
            peak_bytes_kind=peak[1],
            device=device_name(self.device),
            dtype=dtype_name(self.dtype),
            dim=int(np.prod(self.x.shape[1:])),
            **scalars,
        )
