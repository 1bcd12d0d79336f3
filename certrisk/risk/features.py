"""The model's penultimate representation: the input of its last executed ``nn.Linear`` layer.

Signals that compare a sample with its reference neighbours can do so in the space the model
itself classifies in (deep k-nearest-neighbours, Papernot and McDaniel 2018): for a classifier
that ends in a linear layer, that space is the linear layer's input. ``penultimate_features`` runs
the model with a forward hook on every ``nn.Linear`` and keeps, per forward pass, the input of the
last one that ran, so the order in which layers are declared does not matter.

Not every loaded model exposes it. TorchScript modules (``torch.jit``) and ``torch.export``
programs run no Python forward hooks on their inner layers, and a model without an ``nn.Linear``
has no such layer: ``feature_layer`` says why, and the feature signal is then recorded as not
measured instead of failing the run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from certrisk.schemas.errors import InputError

#: Inputs per forward pass.
FORWARD_ROWS = 1024


def feature_layer(module) -> tuple[bool, str]:
    """Whether ``module`` exposes a penultimate representation to hook, and why not when it does not.

    Returns (True, "") for a plain ``nn.Module`` holding an ``nn.Linear``; (False, reason) for a
    TorchScript module, a ``torch.export`` program, or a module without a linear layer.
    """
    if isinstance(module, torch.jit.ScriptModule):
        return False, "a TorchScript model runs no Python forward hooks on its layers"
    if not isinstance(module, nn.Module):
        return False, f"the model is a {type(module).__name__}, not a torch nn.Module"
    if not any(isinstance(m, nn.Linear) for m in module.modules()):
        return False, (
            "the model has no nn.Linear layer to hook (a torch.export program runs its layers as inlined "
            "operations; another architecture may have no final linear layer)"
        )
    return True, ""


def penultimate_features(module: nn.Module, inputs, *, device=None, rows: int = FORWARD_ROWS) -> np.ndarray:
    """The input of the model's last executed ``nn.Linear`` layer for each sample.

    module : an ``nn.Module`` in eval mode for which ``feature_layer`` is True.
    inputs : array or tensor of shape (n_samples, *input_shape), in the model's input units.
    device : where to run; default the module's (CPU for a module without parameters).
    Returns float64 array of shape (n_samples, n_features_penultimate). InputError when the
    module exposes no such layer (``feature_layer``'s reason) or the inputs are empty.
    """
    ok, reason = feature_layer(module)
    if not ok:
        raise InputError(f"penultimate features: {reason}")
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    if x.ndim < 2 or len(x) == 0:
        raise InputError(
            f"penultimate features: need a non-empty batch of inputs, got shape {tuple(x.shape)}"
        )
    param = next(iter(module.parameters()), None)
    dev = torch.device(device) if device is not None else (param.device if param is not None else "cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    seen: list[torch.Tensor] = []

    def keep(_layer, args, _output) -> None:
        seen.append(args[0])

    hooks = [m.register_forward_hook(keep) for m in module.modules() if isinstance(m, nn.Linear)]
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(x), rows):
                seen.clear()
                module(x[start : start + rows].to(device=dev, dtype=dtype))
                out.append(seen[-1].reshape(len(seen[-1]), -1).double().cpu())
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(out).numpy()


__all__ = ["FORWARD_ROWS", "feature_layer", "penultimate_features"]
