import pickle

import numpy as np
import pytest
import torch

from certrisk.risk.models import digits_cnn, file_sha256, load_model, predict, save_safetensors, select_device
from certrisk.schemas.errors import ModelLoadError
from certrisk.schemas.policy import ModelSpec


def spec(path, **kw):
    base = {
        "name": "m",
        "path": str(path),
        "factory": "certrisk.risk.models:digits_cnn",
        "input_shape": (1, 8, 8),
        "classes": tuple(str(i) for i in range(10)),
    }
    base.update(kw)
    return ModelSpec(**base)


def test_safetensors_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = digits_cnn().eval()
    p = tmp_path / "m.safetensors"
    sha = save_safetensors(m, p)
    assert sha == file_sha256(p)
    loaded = load_model(spec(p), p, device="cpu")
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded.module(x), m(x))
    assert loaded.sha256 == sha and not loaded.module.training


def test_pinned_hash_mismatch(tmp_path):
    p = tmp_path / "m.safetensors"
    save_safetensors(digits_cnn(), p)
    with pytest.raises(ModelLoadError, match="differs from the policy's pinned"):
        load_model(spec(p, sha256="0" * 64), p)


def test_torch_save_pickle_refused(tmp_path):
    p = tmp_path / "m.pt"
    torch.save(digits_cnn(), p)
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model(spec(p), p)


def test_raw_pickle_refused_before_reading(tmp_path):
    p = tmp_path / "m.pkl"
    p.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ModelLoadError, match="raw pickle stream"):
        load_model(spec(p), p)


def test_corrupt_and_missing(tmp_path):
    p = tmp_path / "m.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_model(spec(p), p)
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(spec(tmp_path / "nope"), tmp_path / "nope")


def test_weights_must_fit_factory(tmp_path):
    p = tmp_path / "m.safetensors"
    save_safetensors(digits_cnn(width=8), p)
    with pytest.raises(ModelLoadError, match="do not fit factory"):
        load_model(spec(p), p)


def test_torchscript_loads(tmp_path):
    m = digits_cnn().eval()
    p = tmp_path / "m.ts"
    torch.jit.script(m).save(str(p))
    loaded = load_model(spec(p, format="torchscript", factory=None), p)
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(loaded.module(x), m(x))


def test_predict_and_device():
    assert select_device("cpu").type == "cpu"
    assert select_device().type in ("cpu", "cuda")
    pred, conf = predict(digits_cnn().eval(), np.random.rand(5, 1, 8, 8).astype(np.float32), device="cpu")
    assert pred.shape == (5,) and pred.dtype == np.int64
    assert np.all((conf > 0) & (conf <= 1))
