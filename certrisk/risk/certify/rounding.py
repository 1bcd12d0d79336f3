"""Outward rounding and a-priori float error bounds, so deterministic certificates hold for the
arithmetic that runs, not only for real numbers (Jin, Ohrimenko and Rubinstein 2024 flip
"certified" predictions through float error alone).

Two float errors are bounded:

- The certifier's own float64 arithmetic. An IEEE operation is correctly rounded, so one step of
  ``torch.nextafter`` toward -inf (``down``) or +inf (``up``) after an elementwise operation gives a
  rigorous lower or upper bound. Sums and products of matrices are not ours to order, so they are
  bounded a priori: for any summation order, with or without FMA,
  ``|fl(sum_i a_i b_i) - sum_i a_i b_i| <= gamma_n sum_i |a_i b_i| + 2 n tiny`` with
  ``gamma_n = n u / (1 - n u)`` (Higham 2002, eq. 3.5; ``tiny`` the smallest normal number covers
  underflow, flushed to zero or not). A computed sum of n non-negative terms is therefore below
  the exact one times ``1 + 2 gamma_n`` (``inflate``).
- The model's forward pass in its own dtype (``Execution``): the same dot-product bound with the
  unit roundoff of the arithmetic that runs the model: 2^-24 for float32, 2^-53 for float64,
  doubled on accelerators (accumulation that may truncate instead of rounding to nearest), and
  with the rounding of matmul and convolution inputs to TF32 (10 mantissa bits) or bfloat16 where
  the platform may use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from certrisk.schemas.errors import InputError

U64 = 2.0**-53
TINY64 = 2.0**-1022
_INF = float("inf")

#: Unit roundoff of each floating dtype a model may run in.
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}
#: Unit roundoff of matmul/convolution inputs under reduced-precision modes (truncation allowed):
#: TF32 keeps 10 mantissa bits, bfloat16 7.
TF32_INPUT_UNIT = 2.0**-10
BF16_INPUT_UNIT = 2.0**-7


_LIMITS: dict[tuple, torch.Tensor] = {}


def _limit(t: torch.Tensor, sign: float) -> torch.Tensor:
    key = (t.dtype, t.device, sign)
    if key not in _LIMITS:
        _LIMITS[key] = torch.tensor(sign * _INF, dtype=t.dtype, device=t.device)
    return _LIMITS[key]


def up(t: torch.Tensor) -> torch.Tensor:
    """The next float above each element: an upper bound on the exact result of the elementwise
    operation that produced ``t``."""
    return torch.nextafter(t, _limit(t, 1.0))


def down(t: torch.Tensor) -> torch.Tensor:
    """The next float below each element (a lower bound, see ``up``)."""
    return torch.nextafter(t, _limit(t, -1.0))


def scalar_up(value: float) -> float:
    """A float64 scalar moved up by a relative 2^-50 and one ulp (covers the few roundings of a
    closed form evaluated in Python floats)."""
    return math.nextafter(value * (1.0 + 2.0**-50), _INF) if value > 0 else math.nextafter(value, _INF)


def gamma(n: int, u: float = U64) -> float:
    """``n u / (1 - n u)`` rounded up; inf when ``n u >= 1/2`` (the bound is then useless)."""
    nu = n * u
    if nu >= 0.5:
        return _INF
    return scalar_up(nu / (1.0 - nu))


def inflate(n: int) -> float:
    """Factor turning a float64 sum of n non-negative terms into an upper bound of the exact sum."""
    return scalar_up(1.0 + 2.0 * gamma(n + 1))


def upper_sum(t: torch.Tensor, dims, n: int) -> torch.Tensor:
    """Upper bound of the exact sum of non-negative ``t`` over ``dims`` (n terms at most)."""
    return up(t.sum(dim=dims) * inflate(n))


def centre_radius(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, r) with ``[c - r, c + r]`` containing ``[lo, hi]`` exactly."""
    c = (lo + hi) * 0.5
    r = torch.maximum(up(hi - c), up(c - lo))
    return c, r


@dataclass(frozen=True)
class Execution:
    """The arithmetic a model's forward pass runs in, and the float error it can make.

    ``unit``: unit roundoff of products and sums (doubled on accelerators); ``input_unit``: the
    rounding of matmul/convolution inputs before their products (TF32, bfloat16; 0 when inputs
    are used as stored); ``tiny``: the dtype's smallest normal number. ``covers`` says in words
    which executions a certificate built with this model holds for.
    """

    dtype: str
    device: str
    unit: float
    input_unit: float
    tiny: float
    covers: str

    def dot_error(self, n: int) -> float:
        """Relative error bound of a matmul/convolution output with n terms (bias included):
        ``|fl(w.x + b) - (w.x + b)| <= dot_error(n) (|w|.|x| + |b|) + absolute(n)``."""
        g = gamma(n, self.unit)
        return scalar_up((1.0 + self.input_unit) ** 2 * (1.0 + g) - 1.0)

    def sum_error(self, n: int) -> float:
        """Relative error bound of n chained elementwise operations (pooling sums, BatchNorm)."""
        return gamma(n, self.unit)

    def absolute(self, n: int) -> float:
        """Absolute error bound from underflow in an operation with n terms."""
        return 2.0 * (n + 2) * self.tiny


def execution_for(dtype: torch.dtype, device: torch.device) -> Execution:
    """The arithmetic a model of ``dtype`` on ``device`` runs in, generous where it is not fixed.

    CPU: IEEE arithmetic of the dtype in any summation order (FMA or not, flush-to-zero allowed);
    float32 matmul inputs are taken as rounded to TF32/bfloat16 when
    ``torch.get_float32_matmul_precision()`` allows it. Other devices (CUDA, ...): accumulation may
    truncate (unit doubled) and float32 matmul/conv inputs may be TF32 (cuDNN allows TF32 for
    convolutions by default). Convolutions are assumed to be evaluated as dot products (direct or
    GEMM-based), not by Winograd or FFT algorithms. Raises InputError for a non-float dtype.
    """
    if dtype not in UNIT_ROUNDOFF:
        raise InputError(f"no float error model for dtype {dtype}; use float64, float32, float16 or bfloat16")
    u = UNIT_ROUNDOFF[dtype]
    precision = torch.get_float32_matmul_precision()
    accelerator = device.type != "cpu"
    unit = 2.0 * u if accelerator else u
    input_unit = 0.0
    if dtype == torch.float32:
        if precision == "medium":
            input_unit = BF16_INPUT_UNIT
        elif accelerator or precision == "high":
            input_unit = TF32_INPUT_UNIT
    name = str(dtype).removeprefix("torch.")
    inputs = {
        0.0: "matmul/conv inputs as stored",
        TF32_INPUT_UNIT: "matmul/conv inputs possibly rounded to TF32",
        BF16_INPUT_UNIT: "matmul/conv inputs possibly rounded to bfloat16",
    }[input_unit]
    accumulation = "rounded to nearest or truncated" if accelerator else "rounded to nearest"
    covers = (
        f"{name} forward pass on {device.type}: {inputs}, products and sums in {name} "
        f"({accumulation}) in any summation order, FMA or not, subnormals kept or flushed; "
        "convolutions evaluated as dot products (direct or GEMM-based, not Winograd/FFT); "
        f"inputs given in {name} inside the certified ball"
    )
    return Execution(name, device.type, unit, input_unit, float(torch.finfo(dtype).tiny), covers)
