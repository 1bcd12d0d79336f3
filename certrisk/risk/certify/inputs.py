"""Input checks and device placement shared by every certification method."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from certrisk.risk.inputs import check_samples
from certrisk.risk.models import select_device
from certrisk.schemas.errors import InputError


def model_device(model) -> torch.device | None:
    """The device of the model's first parameter or buffer, None when it has neither."""
    for getter in ("parameters", "buffers"):
        fn = getattr(model, getter, None)
        if fn is None:
            continue
        for t in fn():
            return t.device
    return None


def model_dtype(model) -> torch.dtype:
    """The floating dtype of the model's first floating parameter; float32 when there is none."""
    fn = getattr(model, "parameters", None)
    if fn is not None:
        for t in fn():
            if t.is_floating_point():
                return t.dtype
    return torch.float32


def place(model, device) -> tuple[object, torch.device]:
    """The model on the device to run on, and that device.

    ``device`` None keeps the model where its parameters are (or picks one with ``select_device``
    for a parameter-free model). A model on another device than the one asked for is copied
    there; the caller's model is never moved.
    """
    current = model_device(model)
    if device is None:
        dev = current if current is not None else select_device(None)
    else:
        dev = select_device(device)
    if current is not None and _same_device(current, dev) is False:
        model = copy.deepcopy(model).to(dev)
    return model, dev


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    ia = a.index if a.index is not None else torch.cuda.current_device()
    ib = b.index if b.index is not None else torch.cuda.current_device()
    return ia == ib


def as_batch(x, *, what: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``x`` (array or tensor of shape (B, *input_shape)) as a tensor on ``device`` in ``dtype``.

    InputError (from ``certrisk.risk.inputs.check_samples``, naming the row at fault) unless x is
    a non-empty batch of numeric, finite inputs with at least one axis besides the batch axis.
    """
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise InputError(f"{what}: x must be a torch tensor or numpy array, got {type(x).__name__}")
    check_samples(x, what=what)
    if x.ndim < 2:
        raise InputError(f"{what}: x must have shape (B, *input_shape), got shape {tuple(x.shape)}")
    # np.require copies a read-only array (parquet-backed, pandas copy-on-write): torch warns on those
    xt = torch.from_numpy(np.require(x, requirements=["C", "W"])) if isinstance(x, np.ndarray) else x.detach()
    return xt.to(device=device, dtype=dtype).contiguous()


def check_positive(value, name: str, what: str, *, integer: bool = False) -> None:
    """InputError unless ``value`` is a finite number > 0 (an int >= 1 when ``integer``)."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"{what}: {name} must be an integer >= 1, got {value!r}")
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what}: {name} must be a number > 0, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{what}: {name} must be a finite number > 0, got {value!r}")


def check_alpha(alpha, what: str) -> None:
    """InputError unless 0 < alpha < 1."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise InputError(f"{what}: alpha must be a number in (0, 1), got {alpha!r}") from None
    if not 0.0 < a < 1.0:
        raise InputError(f"{what}: alpha must lie in (0, 1), got {alpha!r}")


def run_model(model, batch: torch.Tensor, what: str) -> torch.Tensor:
    """Logits of shape (rows, K); InputError when the model rejects the input shape or returns another shape."""
    try:
        out = model(batch)
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InputError(
            f"{what}: the model rejected inputs of shape {tuple(batch.shape[1:])} (batch axis first): {exc}"
        ) from exc
    if (
        not isinstance(out, torch.Tensor)
        or out.ndim != 2
        or out.shape[0] != batch.shape[0]
        or out.shape[1] < 2
    ):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"{what}: the model must return logits of shape (rows, K >= 2), got {shape}")
    return out


def device_name(dev: torch.device) -> str:
    """ "cpu" or "cuda:<index>"."""
    if dev.type == "cuda":
        return f"cuda:{dev.index if dev.index is not None else torch.cuda.current_device()}"
    return str(dev)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
