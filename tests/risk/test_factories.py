"""A policy names model factories; only registered code runs (issue: code execution from a policy)."""

from __future__ import annotations

import pytest
from torch import nn

from certrisk.risk.factories import allowed_target, build_module, registered_factories, resolve_factory
from certrisk.schemas.errors import ModelLoadError, PolicyError
from certrisk.schemas.settings import FACTORY_MODULES_ENV


def test_certrisk_registers_its_demo_architectures():
    reg = registered_factories()
    assert reg["digits_cnn"] == "certrisk.risk.models:digits_cnn"
    assert reg["tabular_mlp"] == "certrisk.risk.models:tabular_mlp"


@pytest.mark.parametrize("spec", ["digits_cnn", "certrisk.risk.models:digits_cnn"])
def test_registered_factory_by_name_or_target(spec):
    module = build_module(spec, {"num_classes": 3})
    assert isinstance(module, nn.Module)
    assert module[-1].out_features == 3


def test_os_system_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolicyError, match=r"model\.factory: 'os:system' is not a factory"):
        build_module("os:system", {"command": "touch pwned"})
    assert not (tmp_path / "pwned").exists()


def test_unregistered_module_is_not_imported(tmp_path, monkeypatch):
    """Refused before import: importing a module runs its code."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_factory_mod.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\ndef build():\n    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PolicyError, match="evil_factory_mod:build"):
        resolve_factory("evil_factory_mod:build")
    assert not marker.exists()


def test_allowlisted_module_and_submodules(tmp_path, monkeypatch):
    pkg = tmp_path / "inhouse_models"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "from torch import nn\n"
        "def net(k=2):\n    return nn.Linear(4, k)\n"
        "def not_a_module():\n    return 'x'\n"
        "CONSTANT = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PolicyError):
        allowed_target("inhouse_models.nets:net")
    monkeypatch.setenv(FACTORY_MODULES_ENV, "other, inhouse_models")
    assert isinstance(build_module("inhouse_models.nets:net", {"k": 3}), nn.Linear)
    with pytest.raises(ModelLoadError, match="returned str, not a torch.nn.Module"):
        build_module("inhouse_models.nets:not_a_module", {})
    with pytest.raises(PolicyError, match="is not a callable"):
        build_module("inhouse_models.nets:CONSTANT", {})
    with pytest.raises(PolicyError, match="factory_kwargs"):
        build_module("inhouse_models.nets:net", {"bogus": 1})


def test_unknown_registered_name():
    with pytest.raises(PolicyError, match="'no_such_net' is not a registered factory"):
        allowed_target("no_such_net")
