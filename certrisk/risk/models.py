"""Models: safe loading (no arbitrary pickle), content hashing, the demo architecture, training.

Formats (DESIGN.md, Contracts): safetensors weights with a named factory (``module:function``),
TorchScript archives, or ``torch.export`` programs. The file's sha256 identifies the version.
A pickled file (``torch.save`` output or a raw pickle stream) is refused before anything in it
is read.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from certrisk.risk.factories import build_module
from certrisk.schemas.columns import ABSTAIN
from certrisk.schemas.errors import InputError, ModelLoadError
from certrisk.schemas.policy import ModelSpec


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to use: the one given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def digits_cnn(num_classes: int = 10, width: int = 16, hidden: int = 64) -> nn.Sequential:
    """The demo CNN for 8x8 single-channel digits: input (B, 1, 8, 8), logits (B, num_classes).

    Conv(1->w, 3x3) - ReLU - Conv(w->2w, 3x3) - ReLU - AvgPool(2) - Flatten - Linear(2w*16 -> hidden)
    - ReLU - Linear(hidden -> num_classes). Built only from layers that interval bounds and the
    Lipschitz bound support.
    """
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 16, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def tabular_mlp(n_features: int, num_classes: int = 2, hidden: int = 64) -> nn.Sequential:
    """A two-hidden-layer MLP for tabular data: input (B, n_features), logits (B, num_classes)."""
    return nn.Sequential(
        nn.Linear(n_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode on its device, with the identity of the file it came from."""

    module: nn.Module
    sha256: str
    format: str
    path: Path
    device: torch.device


_PICKLE_PROTOCOL_BYTE = 0x80


def _refuse_pickle(path: Path, head: bytes) -> None:
    if head[:1] and head[0] == _PICKLE_PROTOCOL_BYTE:
        raise ModelLoadError(f"{path}: is a raw pickle stream; pickled models are refused (use safetensors)")
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as exc:
            raise ModelLoadError(f"{path}: corrupt zip archive: {exc}") from None
        is_torchscript = any(n.endswith("/code/__torch__.py") or "/code/" in n for n in names)
        if any(n.endswith("data.pkl") for n in names) and not is_torchscript:
            raise ModelLoadError(
                f"{path}: is a torch.save pickle archive; pickled models are refused "
                "(save weights with safetensors, or use TorchScript or torch.export)"
            )


def load_model(spec: ModelSpec, path: str | Path, *, device: str | torch.device | None = None) -> LoadedModel:
    """Load the model a policy names, without arbitrary pickle, in eval mode on ``device``.

    Raises ModelLoadError naming the file when it is missing, corrupt, pickled, of the wrong
    sha256 (when the policy pins one), or when the weights do not fit the factory's architecture.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{p}: model file not found")
    dev = select_device(device)
    digest = file_sha256(p)
    if spec.sha256 and spec.sha256 != digest:
        raise ModelLoadError(f"{p}: sha256 {digest} differs from the policy's pinned {spec.sha256}")
    with open(p, "rb") as fh:
        head = fh.read(8)
    _refuse_pickle(p, head)
    if spec.format == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{p}: not a readable safetensors file: {exc}") from None
        module = build_module(spec.factory, spec.factory_kwargs)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelLoadError(f"{p}: weights do not fit factory {spec.factory!r}: {exc}") from None
    elif spec.format == "torchscript":
        try:
            module = torch.jit.load(str(p), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"{p}: not a readable TorchScript archive: {exc}") from None
    else:
        try:
            module = torch.export.load(str(p)).module()
        except Exception as exc:  # noqa: BLE001 - torch.export raises many types on bad files
            raise ModelLoadError(f"{p}: not a readable torch.export program: {exc}") from None
    module = module.to(dev)
    if hasattr(module, "eval"):
        try:
            module.eval()
        except NotImplementedError:
            pass  # exported programs have no train/eval switch; they run in the mode they were exported in
    return LoadedModel(module=module, sha256=digest, format=spec.format, path=p, device=dev)


def save_safetensors(module: nn.Module, path: str | Path) -> str:
    """Save a module's weights as safetensors; returns the file's sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return file_sha256(path)


def train_classifier(
    module: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    noise_sigma: float = 0.0,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Train a classifier with cross-entropy and Gaussian-noise augmentation.

    Parameters
    ----------
    x : array of shape (n_samples, *input_shape), float32
    y : array of shape (n_samples,), int class labels
    noise_sigma : standard deviation of the Gaussian noise added to every training input; train at
        the smoothing sigma so the smoothed classifier is accurate (Cohen et al. 2019).

    Returns the module in eval mode on ``device``.
    """
    dev = select_device(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.int64)
    module = module.to(dev).train()
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    n = len(xt)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb = xt[idx].to(dev)
            yb = yt[idx].to(dev)
            if noise_sigma > 0:
                xb = xb + noise_sigma * torch.randn(xb.shape, generator=gen).to(dev)
            opt.zero_grad(set_to_none=True)
            loss_fn(module(xb), yb).backward()
            opt.step()
        sched.step()
    return module.eval()


@torch.no_grad()
def predict(
    module: nn.Module, x: torch.Tensor | np.ndarray, *, batch_size: int = 4096, device=None
) -> tuple[np.ndarray, np.ndarray]:
    """Base-model prediction and softmax confidence.

    x : array of shape (B, *input_shape). Returns (prediction int64 (B,), confidence float64 (B,)).
    A row whose logits are not all finite (NaN or +-inf) gets prediction ABSTAIN and confidence
    NaN: a broken output is never a class.
    """
    dev = select_device(device) if device is not None else next(module.parameters()).device
    xt = torch.as_tensor(x, dtype=torch.float32)
    if xt.shape[0] == 0:
        raise InputError("predict: empty batch")
    preds, confs = [], []
    for start in range(0, xt.shape[0], batch_size):
        logits = module(xt[start : start + batch_size].to(dev)).float()
        conf, pred = torch.softmax(logits, dim=1).max(dim=1)
        broken = ~torch.isfinite(logits).all(dim=1)
        pred = torch.where(broken, torch.full_like(pred, ABSTAIN), pred)
        conf = torch.where(broken, torch.full_like(conf, float("nan")), conf)
        preds.append(pred.cpu())
        confs.append(conf.cpu())
    return torch.cat(preds).numpy().astype(np.int64), torch.cat(confs).numpy().astype(np.float64)
