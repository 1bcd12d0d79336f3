"""The demo's assets: real data, a trained model, a reference set and four production batches.

``prepare_demo`` builds (once, cached under ``$CERTRISK_HOME/demo/<dataset>``): a model trained
with Gaussian-noise augmentation at the policy's sigma and saved as safetensors; a reference set
of held-out samples with labels; and four production batches without labels:

- ``clean``: held-out samples;
- ``shifted``: a visible distribution shift (digits: lower contrast plus pixel noise; breast
  cancer: every size feature reads 0.8 standard deviations high, plus noise);
- ``attacked``: PGD l2 adversarial examples against the base model, each stopped at its first
  success (near-minimal perturbations, as an attacker who wants to stay unnoticed makes them);
- ``deep``: PGD l2 run to the end of its budget, no early stop, at half the data's geometry (the
  median l2 distance from a clean sample to its nearest reference sample of another class):
  examples deep inside another class, which certificates certify like clean inputs.

Beside the batches, ``batches/labels.parquet`` holds the ground truth the pipeline never reads
(each production row's label and whether each attack changed its class) and
``batches/labelled.parquet`` the clean batch with its labels, a held-out labelled set for
``certrisk evaluate --labelled``.

Datasets: ``digits`` (scikit-learn's 8x8 handwritten digits, a small CNN; the main demo) and
``breast_cancer`` (scikit-learn's Wisconsin breast cancer data, z-scored, an MLP; rule-heavy).
No Airflow here: ``certrisk.demo`` runs the example DAGs on these assets. The recipe is
deterministic (``DEMO_SEED``); bump ``DEMO_VERSION`` when it changes, so caches rebuild.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from certrisk.schemas.settings import certrisk_home

DEMO_VERSION = 4
DEMO_SEED = 20261124
PGD_STEPS = 40
BATCHES = ("clean", "shifted", "attacked", "deep")
#: The ``deep`` batch's budget: this fraction of the median l2 distance to another class.
DEEP_FRACTION = 0.5
REPO_ROOT = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO_ROOT / "dags"


@dataclass(frozen=True)
class DemoDataset:
    """How one demo dataset is built: data, architecture, training and the batches' recipes."""

    name: str
    dag_id: str
    policy: Path
    model_file: str
    train_size: int
    reference_size: int
    epochs: int
    pgd_eps: float
    pgd_clip: tuple[float, float] | None


DATASETS = {
    "digits": DemoDataset(
        name="digits",
        dag_id="certrisk_digits",
        policy=DAGS_FOLDER / "policies" / "digits.yaml",
        model_file="digits_cnn.safetensors",
        train_size=1000,
        reference_size=400,
        epochs=60,
        pgd_eps=1.0,
        pgd_clip=(0.0, 1.0),
    ),
    "breast_cancer": DemoDataset(
        name="breast_cancer",
        dag_id="certrisk_breast_cancer",
        policy=DAGS_FOLDER / "policies" / "breast_cancer.yaml",
        model_file="breast_cancer_mlp.safetensors",
        train_size=300,
        # 200 reference samples leave >= 19 in the tier-calibration role (a 5% split-conformal
        # threshold needs 19) and about 58 for evaluation.
        reference_size=200,
        epochs=80,
        pgd_eps=3.0,
        pgd_clip=None,
    ),
}


@dataclass(frozen=True)
class DemoAssets:
    root: Path
    model_path: Path
    reference_path: Path
    batches: dict[str, Path]
    manifest: dict
    labelled: Path | None = None


def _load(dataset: DemoDataset):
    """Features in model space, labels, feature names and the model factory call."""
    from sklearn.datasets import load_breast_cancer, load_digits

    from certrisk.risk.models import digits_cnn, tabular_mlp

    if dataset.name == "digits":
        d = load_digits()
        x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
        names = [f"px_{r}_{c}" for r in range(8) for c in range(8)]
        return x, d.target.astype(np.int64), names, digits_cnn, None
    d = load_breast_cancer()
    names = [n.replace(" ", "_") for n in d.feature_names]
    return d.data.astype(np.float64), d.target.astype(np.int64), names, lambda: tabular_mlp(30, 2), d


def _frame(ids: list[str], x: np.ndarray, names: list[str], labels: np.ndarray | None) -> pd.DataFrame:
    frame = pd.DataFrame(x.reshape(len(x), -1).astype(np.float32), columns=names)
    frame.insert(0, "sample_id", ids)
    if labels is not None:
        frame["label"] = labels.astype(np.int64)
    return frame


def _shift(dataset: DemoDataset, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if dataset.name == "digits":
        # lower contrast, brighter background, pixel noise
        return np.clip(0.55 * clean + 0.2 + rng.normal(0.0, 0.12, size=clean.shape), 0.0, 1.0).astype(
            np.float32
        )
    # a recalibrated instrument: every size feature (radius, perimeter, area) reads 0.8 sd high
    shifted = clean.copy()
    size_cols = [i for i in range(clean.shape[1]) if i % 10 in (0, 2, 3)]
    shifted[:, size_cols] += 0.8
    return (shifted + rng.normal(0.0, 0.2, size=clean.shape)).astype(np.float32)


def _asset_paths(spec: DemoDataset, root: Path) -> dict[str, Path]:
    return {
        "model": root / spec.model_file,
        "reference": root / "reference.parquet",
        # the training split, labelled: the policies' data.index (the signals' neighbour index)
        "index": root / "index.parquet",
        **{b: root / "batches" / f"{b}.parquet" for b in BATCHES},
        "labelled": root / "batches" / "labelled.parquet",
    }


def _assets(root: Path, paths: dict[str, Path], manifest: dict) -> DemoAssets:
    return DemoAssets(
        root, paths["model"], paths["reference"], {b: paths[b] for b in BATCHES}, manifest, paths["labelled"]
    )


def _cached_manifest(root: Path, paths: dict[str, Path]) -> dict | None:
    """The manifest of a complete cache of this DEMO_VERSION under ``root``, else None."""
    manifest_path = root / "manifest.json"
    if not (manifest_path.is_file() and all(p.is_file() for p in paths.values())):
        return None
    manifest = json.loads(manifest_path.read_text())
    return manifest if manifest.get("version") == DEMO_VERSION else None


def _split(spec: DemoDataset, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified row indices (train, reference, production) of the dataset."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train_idx, rest_idx = train_test_split(idx, train_size=spec.train_size, stratify=y, random_state=seed)
    ref_idx, prod_idx = train_test_split(
        rest_idx, train_size=spec.reference_size, stratify=y[rest_idx], random_state=seed
    )
    return train_idx, ref_idx, prod_idx


def _train(spec: DemoDataset, factory, x, y, split, *, sigma: float, seed: int, model_path: Path, log):
    """Train with Gaussian noise at ``sigma``, save as safetensors: (model, accuracy, sha256)."""
    from certrisk.risk.models import predict, save_safetensors, train_classifier

    train_idx, _, prod_idx = split
    t0 = time.perf_counter()
    log(
        f"demo assets ({spec.name}): training with Gaussian noise sigma={sigma} on {len(train_idx)} samples ..."
    )
    model = train_classifier(
        factory(), x[train_idx], y[train_idx], noise_sigma=sigma, epochs=spec.epochs, seed=seed, device="cpu"
    )
    pred, _ = predict(model, x[prod_idx], device="cpu")
    accuracy = float((pred == y[prod_idx]).mean())
    model_sha = save_safetensors(model, model_path)
    log(
        f"demo assets ({spec.name}): model trained in {time.perf_counter() - t0:.1f}s, "
        f"held-out accuracy {accuracy:.3f}"
    )
    return model, accuracy, model_sha


def _attack(
    spec: DemoDataset,
    model,
    clean: np.ndarray,
    labels: np.ndarray,
    *,
    eps: float,
    early_stop: bool,
    seed: int,
    log,
):
    """PGD l2 against the base model: (attacked, success).

    Stopped at each input's first success (``early_stop``), the examples sit just past the
    decision boundary, the smallest change an attacker who wants to stay unnoticed makes; run to
    the end of the budget eps, they lie deep inside another class."""
    from certrisk.risk.audit import pgd_numpy

    attacked, success = pgd_numpy(
        model,
        clean,
        labels,
        eps=eps,
        norm="l2",
        steps=PGD_STEPS,
        restarts=1,
        seed=seed,
        clip=spec.pgd_clip,
        early_stop=early_stop,
    )
    log(
        f"demo assets ({spec.name}): PGD l2 eps={eps:.3g} ({'early stop' if early_stop else 'full budget'}) "
        f"against the base model: {success.mean():.1%} of inputs misclassified"
    )
    return attacked, success


def _geometry_l2(
    clean: np.ndarray, labels: np.ndarray, reference: np.ndarray, ref_labels: np.ndarray
) -> float:
    """Median l2 distance from a clean sample to its nearest reference sample of another class."""
    from certrisk.risk.attack_suite import LabelledSet, nearest_other_class

    ids = np.array([str(i) for i in range(len(reference))])
    ref = LabelledSet(ids, reference, ref_labels)
    return float(np.median(nearest_other_class(clean, labels, ref, "l2")))


def _write_sets(
    root: Path, paths: dict[str, Path], x, y, names, split, batches: dict[str, np.ndarray], success: dict
) -> None:
    """The reference set (with labels), the training split as the neighbour index (with labels),
    the production batches (without) and their ground truth."""
    train_idx, ref_idx, prod_idx = split
    (root / "batches").mkdir(parents=True, exist_ok=True)
    _frame([f"train:{i}" for i in train_idx], x[train_idx], names, y[train_idx]).to_parquet(
        paths["index"], index=False
    )
    _frame([f"ref:{i}" for i in ref_idx], x[ref_idx], names, y[ref_idx]).to_parquet(
        paths["reference"], index=False
    )
    for name, arr in batches.items():
        _frame([f"{name}:{i}" for i in prod_idx], arr, names, None).to_parquet(paths[name], index=False)
    # Ground truth stays beside the batches for evaluation; the pipeline never reads it.
    truth = pd.DataFrame({"row": prod_idx, "label": y[prod_idx]})
    for name, hit in success.items():
        truth[f"{name}_success"] = np.asarray(hit, dtype=bool)
    truth.to_parquet(root / "batches" / "labels.parquet")
    _frame([f"heldout:{i}" for i in prod_idx], batches["clean"], names, y[prod_idx]).to_parquet(
        paths["labelled"], index=False
    )


def prepare_demo(
    home: Path | None = None, *, dataset: str = "digits", force: bool = False, log=print
) -> DemoAssets:
    """Build (or reuse) a demo dataset's model, reference set and batches under ``<home>/demo/<dataset>``."""
    import torch

    from certrisk.schemas.policy import load_policy

    spec = DATASETS[dataset]
    root = (home or certrisk_home()) / "demo" / spec.name
    paths = _asset_paths(spec, root)
    cached = None if force else _cached_manifest(root, paths)
    if cached is not None:
        log(f"demo assets ({spec.name}): cached in {root}")
        return _assets(root, paths, cached)

    # Rebuilding: no manifest until every file is rewritten, so an interrupted build is not a cache.
    (root / "manifest.json").unlink(missing_ok=True)
    sigma = load_policy(spec.policy).policy.certification.smoothing.sigma
    seed = DEMO_SEED
    torch.manual_seed(seed)
    x, y, names, factory, raw = _load(spec)
    split = train_idx, ref_idx, prod_idx = _split(spec, y, seed)
    scaling = None
    if raw is not None:
        # Tabular features reach the model as z-scores with the training split's statistics.
        mean, std = x[train_idx].mean(axis=0), x[train_idx].std(axis=0)
        x = ((x - mean) / std).astype(np.float32)
        scaling = {"mean": mean.tolist(), "std": std.tolist()}
    model, accuracy, model_sha = _train(
        spec, factory, x, y, split, sigma=sigma, seed=seed, model_path=paths["model"], log=log
    )
    rng = np.random.default_rng(seed)
    clean, labels = x[prod_idx], y[prod_idx]
    shifted = _shift(spec, clean, rng)
    attacked, success = _attack(
        spec, model, clean, labels, eps=spec.pgd_eps, early_stop=True, seed=seed, log=log
    )
    geometry = _geometry_l2(clean, labels, x[ref_idx], y[ref_idx])
    deep_eps = DEEP_FRACTION * geometry
    deep, deep_success = _attack(
        spec, model, clean, labels, eps=deep_eps, early_stop=False, seed=seed, log=log
    )
    _write_sets(
        root,
        paths,
        x,
        y,
        names,
        split,
        {"clean": clean, "shifted": shifted, "attacked": attacked, "deep": deep},
        {"attacked": success, "deep": deep_success},
    )
    manifest = {
        "version": DEMO_VERSION,
        "dataset": spec.name,
        "seed": seed,
        "sigma": sigma,
        "model_sha256": model_sha,
        "heldout_accuracy": accuracy,
        "scaling": scaling,
        "pgd": {
            "norm": "l2",
            "eps": spec.pgd_eps,
            "steps": PGD_STEPS,
            "early_stop": True,
            "success_rate": float(success.mean()),
            "mean_l2": float(np.linalg.norm((attacked - clean).reshape(len(clean), -1), axis=1).mean()),
        },
        "deep": {
            "norm": "l2",
            "geometry_l2": geometry,
            "fraction": DEEP_FRACTION,
            "eps": deep_eps,
            "steps": PGD_STEPS,
            "early_stop": False,
            "success_rate": float(deep_success.mean()),
            "mean_l2": float(np.linalg.norm((deep - clean).reshape(len(clean), -1), axis=1).mean()),
        },
        "sizes": {"train": len(train_idx), "reference": len(ref_idx), **{b: len(prod_idx) for b in BATCHES}},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return _assets(root, paths, manifest)
