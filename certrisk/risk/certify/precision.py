"""The base classifier as executed: a model at a precision (fp32, or bf16 / fp16 autocast),
optionally compiled, and the serving-parity measure that says how far that is from serving.

Randomized smoothing certifies whatever function f maps a noisy input to a class; the guarantee
needs the noise to be exactly Gaussian, not the model to be exact. So the noise is drawn and
added in float32 and only the model runs under ``torch.autocast`` at the certification
precision: the certificate holds for the smoothed classifier of *that* f, the model as executed
at that precision (and compiled graph). The deterministic methods (IBP, CROWN, Lipschitz) bound
the model's own float arithmetic soundly and keep float32/float64; they record ``fp32``.

``serving_parity`` measures what the certificate does not cover: the share of reference inputs
whose base prediction differs between the certification precision and the serving precision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np
import torch

from certrisk.schemas.errors import PolicyError

log = logging.getLogger(__name__)

#: Autocast dtype of each precision name; fp32 runs without autocast.
PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("off", "default", "max-autotune")
#: Largest model (parameters) whose compiled forward passes replay as CUDA graphs under compile
#: mode "default" (launch overhead dominates small models; big ones gain nothing and use memory).
CUDA_GRAPH_MAX_PARAMS = 5_000_000


def check_precision(precision: str, device: torch.device, *, key: str = "certification.precision") -> None:
    """PolicyError naming ``key`` unless ``precision`` is one certrisk can run on ``device``."""
    if precision not in PRECISION_DTYPES:
        raise PolicyError(f"{key}: must be one of {', '.join(PRECISION_DTYPES)}, got {precision!r}")
    dtype = PRECISION_DTYPES[precision]
    if dtype is not None and not torch.amp.is_autocast_available(device.type):
        raise PolicyError(f"{key}: {precision} autocast is not available on device {device.type}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PolicyError(f"{key}: bf16 is not supported by {torch.cuda.get_device_name(device)}")


def _is_module(model) -> bool:
    return isinstance(model, torch.nn.Module) and not isinstance(model, torch.jit.ScriptModule)


def _channels_last_helps(model, device: torch.device) -> bool:
    """channels_last pays for convolutions on CUDA at reduced precision or compiled (cuDNN's and
    inductor's tensor-core kernels are NHWC); on CPU oneDNN picks its own layout, so certrisk
    leaves the CPU layout alone, and eager fp32 keeps the model's own layout."""
    if device.type != "cuda" or not _is_module(model):
        return False
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


class ExecutedModel:
    """A callable base classifier: ``model`` under autocast at ``precision``, compiled or eager.

    Calling it maps a float32 tensor of shape (rows, *input_shape) to float32 logits (rows, K).
    With ``compile`` other than "off", ``warm_up`` compiles the model once with a dynamic batch
    axis and runs every forward size it will see (CUDA graphs record one graph per size); the
    time is kept in ``compile_seconds``, apart from certification time. A model that fails to
    compile runs eager for the whole job (``compile`` then reads "off" and ``fallback_reason``
    says why), never compiled for some rows and eager for others. One ExecutedModel can be passed
    to several ``smooth_certify`` calls to compile once.

    ``module`` is the underlying model (for hooks and parameter counts); ``eager`` runs it at the
    precision without compilation.
    """

    def __init__(self, model, *, precision: str = "fp32", compile: str = "off", device: torch.device):
        check_precision(precision, device)
        if compile not in COMPILE_MODES:
            raise PolicyError(
                f"certification.compile: must be one of {', '.join(COMPILE_MODES)}, got {compile!r}"
            )
        self.device = device
        self.precision = precision
        self.requested_compile = compile
        self.compile = compile
        self.dtype = PRECISION_DTYPES[precision]
        self.channels_last = _channels_last_helps(model, device) and (precision != "fp32" or compile != "off")
        self.source = model  # the caller's model (forward sizes are cached per source model)
        if self.channels_last:
            import copy

            model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        self.module = model
        self.cuda_graphs = False
        self.compile_seconds = 0.0
        self.fallback_reason = ""
        self._compiled = None
        self._warmed: set[tuple[int, ...]] = set()
        if compile != "off":
            self._compiled = self._make_compiled(model, compile)

    def _make_compiled(self, model, mode: str):
        n_params = sum(p.numel() for p in getattr(model, "parameters", list)())
        torch_mode = mode
        if mode == "default" and self.device.type == "cuda" and n_params <= CUDA_GRAPH_MAX_PARAMS:
            torch_mode = "reduce-overhead"  # default inductor plus CUDA graphs: static shapes only
        # max-autotune replays CUDA graphs on CUDA by itself
        self.cuda_graphs = self.device.type == "cuda" and torch_mode in ("reduce-overhead", "max-autotune")
        try:
            # dynamic batch axis: one graph for the three forward sizes (one compile, and the same
            # generated kernels for every size, so a row's logits do not depend on its slice)
            return torch.compile(model, mode=torch_mode, dynamic=True)
        except Exception as exc:  # noqa: BLE001 - torch.compile raises many types on unsupported models
            self._fall_back(exc)
            return None

    def _fall_back(self, exc: BaseException) -> None:
        self.fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.warning(
            "torch.compile(mode=%r) failed, certifying with the eager model instead: %s",
            self.requested_compile,
            self.fallback_reason,
        )
        self._compiled = None
        self.compile = "off"
        self.cuda_graphs = False

    def eager(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the uncompiled model at the precision: float32 (rows, K)."""
        return self._run(self.module, x)

    def _run(self, fn, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            return fn(x)
        with torch.autocast(device_type=self.device.type, dtype=self.dtype):
            out = fn(x)
        return out.float() if isinstance(out, torch.Tensor) else out

    def warm_up(self, x: torch.Tensor, sizes: Iterable[int]) -> None:
        """Compile the model for every forward size in ``sizes`` (rows of x[0] repeated), timing it.

        A failure at any size switches the whole job to eager (with a warning). No-op when eager.
        """
        if self._compiled is None:
            return
        start = time.perf_counter()
        try:
            for rows in sorted({int(s) for s in sizes}, reverse=True):
                shape = (rows, *x.shape[1:])
                if shape in self._warmed:
                    continue
                batch = x[:1].expand(shape).contiguous()
                for _ in range(3 if self.cuda_graphs else 1):  # CUDA graphs record on a later call
                    self._run(self._compiled, batch)
                self._warmed.add(shape)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as exc:
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                raise
            self._fall_back(exc)
        self.compile_seconds += time.perf_counter() - start

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is None:
            return self._run(self.module, x)
        if tuple(x.shape) not in self._warmed:
            self.warm_up(x, [x.shape[0]])
            if self._compiled is None:
                return self._run(self.module, x)
        out = self._run(self._compiled, x)
        # CUDA graph outputs live in a buffer the next replay overwrites: the caller reduces them at once
        return out

    def describe(self) -> dict:
        """What ran: precision, effective compile mode, CUDA graphs, channels_last, compile seconds."""
        return {
            "precision": self.precision,
            "compile": self.compile,
            "compile_requested": self.requested_compile,
            "compile_seconds": float(self.compile_seconds),
            "compile_fallback": self.fallback_reason,
            "cuda_graphs": bool(self.cuda_graphs),
            "channels_last": bool(self.channels_last),
        }


def predictions_at(model, x: torch.Tensor, precision: str, *, batch_size: int = 1024) -> np.ndarray:
    """Base predictions (argmax; -1 where a row's logits are not all finite) of ``model`` at a
    precision, eager: int64 array of shape (B,). x: float32 tensor (B, *input_shape) on the model's device."""
    executed = (
        model
        if isinstance(model, ExecutedModel)
        else ExecutedModel(model, precision=precision, device=x.device)
    )
    out = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            logits = executed(x[start : start + batch_size]).float()
            pred = logits.argmax(1).masked_fill_(~torch.isfinite(logits).all(1), -1)
            out.append(pred.cpu())
    return torch.cat(out).numpy().astype(np.int64)


def serving_parity(
    model,
    x: torch.Tensor,
    *,
    precision: str,
    serving_precision: str,
    compile: str = "off",
    threshold: float,
) -> dict:
    """Share of inputs whose base prediction at the certification precision (and compile mode)
    differs from the serving precision's (eager), on x of shape (B, *input_shape).

    Returns {"share", "n", "differ", "precision", "serving_precision", "compile", "threshold",
    "above_threshold", "measured"}; "measured" is False when both run the same arithmetic
    (same precision, eager), where the share is 0 by construction.
    """
    n = int(x.shape[0])
    out = {
        "precision": precision,
        "serving_precision": serving_precision,
        "compile": compile,
        "threshold": float(threshold),
        "n": n,
    }
    if precision == serving_precision and compile == "off":
        return {**out, "share": 0.0, "differ": 0, "above_threshold": False, "measured": False}
    dev = x.device
    check_precision(serving_precision, dev, key="certification.serving_precision")
    served = predictions_at(model, x, serving_precision)
    certified_model = ExecutedModel(model, precision=precision, compile=compile, device=dev)
    certified = predictions_at(certified_model, x, precision)
    differ = int((served != certified).sum())
    share = differ / max(n, 1)
    return {
        **out,
        "compile": certified_model.compile,
        "share": share,
        "differ": differ,
        "above_threshold": bool(share > threshold),
        "measured": True,
    }
