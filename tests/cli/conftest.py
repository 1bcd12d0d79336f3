"""A small wine classifier trained in about a second (TorchScript and safetensors), its labelled
reference set and a batch, for the CLI tests of init, policy check and score."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))


@dataclass(frozen=True)
class WineFiles:
    torchscript: Path
    safetensors: Path
    reference: Path
    batch: Path
    n_features: int


def _split():
    from sklearn.datasets import load_wine

    data = load_wine()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.target))
    train, ref = order[:89], order[89:]
    mean, std = data.data[train].mean(axis=0), data.data[train].std(axis=0)
    x = ((data.data - mean) / std).astype(np.float32)
    names = [n.replace("/", "_") for n in data.feature_names]
    return x, data.target.astype(np.int64), train, ref, names


@pytest.fixture(scope="session")
def wine_files(tmp_path_factory) -> WineFiles:
    import torch

    from certrisk.risk.models import save_safetensors, tabular_mlp, train_classifier

    root = tmp_path_factory.mktemp("wine")
    x, y, train, ref, names = _split()
    model = train_classifier(
        tabular_mlp(13, 3, hidden=16), x[train], y[train], noise_sigma=0.25, epochs=40, device="cpu"
    )
    torch.jit.script(model).save(str(root / "wine.pt"))
    save_safetensors(model, root / "wine.safetensors")
    frame = pd.DataFrame(x[ref], columns=names)
    frame.insert(0, "sample_id", [f"ref-{i}" for i in ref])
    frame["label"] = y[ref]
    frame.to_parquet(root / "reference.parquet", index=False)
    batch = frame.head(24).assign(sample_id=lambda f: "batch-" + f["sample_id"])
    batch.to_parquet(root / "batch.parquet", index=False)  # with the label column: ignored for scoring
    return WineFiles(
        root / "wine.pt", root / "wine.safetensors", root / "reference.parquet", root / "batch.parquet", 13
    )


@pytest.fixture
def cli():
    """Invoke the ``certrisk`` command; returns click's Result (stdout and stderr apart)."""
    from certrisk.cli import app

    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None):
        return runner.invoke(app, [str(a) for a in args], env=env)

    return invoke


@pytest.fixture
def fresh_home(tmp_path, monkeypatch) -> Path:
    """An empty CERTRISK_HOME and no CERTRISK_DB_URL: the default database does not exist."""
    home = tmp_path / "home"
    monkeypatch.setenv("CERTRISK_HOME", str(home))
    monkeypatch.delenv("CERTRISK_DB_URL", raising=False)
    return home
