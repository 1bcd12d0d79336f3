"""Model factories a policy may name, and nothing else.

A safetensors policy names the function that builds its architecture (``model.factory``). A
policy file is data, and data must not choose what code runs: a factory is called only when the
deployment registered it, either

- as an entry point in the ``certrisk.models`` group of an installed package (certrisk registers
  its own demo architectures there; an in-house package adds
  ``[project.entry-points."certrisk.models"] my_net = "my_pkg.nets:my_net"``), named in the policy
  by its entry-point name (``factory: my_net``) or by its target (``factory: my_pkg.nets:my_net``);
- or as a callable of a module the deployment lists in ``$CERTRISK_FACTORY_MODULES``
  (comma-separated; a listed package allows its submodules).

Anything else is refused before its module is imported (importing runs a module's code), naming
the policy key. What a factory builds must be a ``torch.nn.Module``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

from torch import nn

from certrisk.schemas.errors import ModelLoadError, PolicyError
from certrisk.schemas.settings import FACTORY_MODULES_ENV, allowed_factory_modules

ENTRY_POINT_GROUP = "certrisk.models"
KEY = "model.factory"


def registered_factories() -> dict[str, str]:
    """Entry-point name -> ``module:function`` target, for every factory installed packages register."""
    return {ep.name: ep.value.replace(" ", "") for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _module_allowed(module: str, allowed: frozenset[str]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in allowed)


def allowed_target(spec: str) -> str:
    """The ``module:function`` target a policy's ``model.factory`` may call, or PolicyError.

    ``spec`` is an entry-point name or a ``module:function`` target; nothing is imported here.
    """
    registered = registered_factories()
    if ":" not in spec:
        if spec in registered:
            return registered[spec]
        raise PolicyError(
            f"{KEY}: {spec!r} is not a registered factory (registered: {', '.join(sorted(registered)) or 'none'})"
        )
    module = spec.partition(":")[0]
    if spec in registered.values() or _module_allowed(module, allowed_factory_modules()):
        return spec
    raise PolicyError(
        f"{KEY}: {spec!r} is not a factory this deployment registered; register it as a "
        f"'{ENTRY_POINT_GROUP}' entry point or list its module in ${FACTORY_MODULES_ENV} "
        f"(registered: {', '.join(sorted(registered)) or 'none'})"
    )


def resolve_factory(spec: str) -> Callable[..., nn.Module]:
    """Import and return the factory ``spec`` names, after ``allowed_target`` admitted it."""
    target = allowed_target(spec)
    module_name, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"{KEY}: {spec!r} cannot be imported: {exc}") from None
    if not callable(obj) or isinstance(obj, type(importlib)):
        raise PolicyError(f"{KEY}: {spec!r} is not a callable")
    return obj


def build_module(spec: str, kwargs: dict) -> nn.Module:
    """Call the registered factory ``spec`` with ``kwargs``; the result must be an nn.Module."""
    factory = resolve_factory(spec)
    try:
        module = factory(**kwargs)
    except TypeError as exc:
        raise PolicyError(f"model.factory_kwargs: {spec!r} does not accept them: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"{KEY}: {spec!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module
