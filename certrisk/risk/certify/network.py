"""The layer list that the interval, CROWN and Lipschitz bounds walk through."""

from __future__ import annotations

from torch import nn

from certrisk.schemas.errors import InputError

#: Layers the bound methods understand (BatchNorm in eval mode only; CROWN: no MaxPool2d).
SUPPORTED = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.Flatten,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.Identity,
    nn.Dropout,
)


def sequential_layers(model, what: str) -> list[nn.Module]:
    """The layers of an ``nn.Sequential`` model (nested Sequentials flattened), in order.

    Raises InputError naming the first layer the bounds do not support, a BatchNorm in training
    mode, a convolution with a padding mode other than zeros, or a model that is not Sequential.
    """
    if not isinstance(model, nn.Sequential):
        raise InputError(
            f"{what}: needs an nn.Sequential model of {', '.join(t.__name__ for t in SUPPORTED)}; "
            f"got {type(model).__name__}"
        )
    layers: list[nn.Module] = []

    def walk(seq: nn.Sequential, prefix: str) -> None:
        for name, layer in seq.named_children():
            path = f"{prefix}{name}"
            if isinstance(layer, nn.Sequential):
                walk(layer, path + ".")
                continue
            if not isinstance(layer, SUPPORTED):
                raise InputError(
                    f"{what}: unsupported layer {path} ({type(layer).__name__}); supported: "
                    f"{', '.join(t.__name__ for t in SUPPORTED)}"
                )
            if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and (
                layer.training or layer.running_var is None
            ):
                raise InputError(
                    f"{what}: layer {path} ({type(layer).__name__}) must be in eval mode with running statistics"
                )
            if isinstance(layer, nn.Dropout) and layer.training:
                raise InputError(f"{what}: layer {path} (Dropout) must be in eval mode")
            if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
                raise InputError(
                    f"{what}: layer {path} (Conv2d) has padding_mode {layer.padding_mode!r}; only 'zeros' is supported"
                )
            if isinstance(layer, nn.MaxPool2d) and layer.return_indices:
                raise InputError(f"{what}: layer {path} (MaxPool2d) returns indices; not supported")
            layers.append(layer)

    walk(model, "")
    if not any(isinstance(layer, (nn.Linear, nn.Conv2d)) for layer in layers):
        raise InputError(f"{what}: the model has no Linear or Conv2d layer")
    return layers
