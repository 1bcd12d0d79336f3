"""``certrisk init``: a policy and a DAG file for the user's own model, measured rather than guessed.

What is read from the user's files:

* the model (TorchScript, ``torch.export`` or safetensors weights with a registered factory),
  loaded through the same code and factory allowlist as the pipeline;
* the labelled reference set: its features (names and count), labels and, for an npz archive,
  the input shape (``X``'s shape without the batch axis);
* the number of logits from one forward pass, which must match the classes.

What is measured on the reference set (held out from training, as the data contract requires):

* the base model's accuracy;
* a sigma sweep (``sigma_sweep``): for each candidate noise level the smoothed classifier's
  accuracy and abstention on up to ``sweep_samples`` reference samples; ``choose_sigma`` takes the
  largest sigma whose smoothed accuracy stays within ``max_drop`` of the base accuracy and whose
  abstention stays at most ``max_abstention`` (the user sees the whole trade-off and may override);
* the profiled rules' range tolerance (``choose_tolerance``): the smallest widening of the index
  role's per-feature ranges that the held-out roles break at most ``RULE_FAILURE_TARGET`` of the time;
* the tier calibration, by scoring the reference's held-out evaluation role as a clean batch
  through ``run_local`` (the pipeline's own operators): thresholds, whether the tier role is large
  enough for the false-alarm rate, and the tier of a clean batch.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from certrisk.operators.scaffold_files import ScaffoldSpec, write_files
from certrisk.risk.certify import certify_with_spec, derive_seeds, method_available
from certrisk.risk.data import Batch, read_table, validate_frame
from certrisk.risk.factories import allowed_target
from certrisk.risk.health import reference_logits
from certrisk.risk.models import LoadedModel, load_model
from certrisk.risk.reference import reference_roles
from certrisk.schemas.columns import ABSTAIN
from certrisk.schemas.errors import InputError, ModelLoadError, PolicyError
from certrisk.schemas.policy import DataSpec, ModelSpec, SmoothingSpec

#: Multiples of the reference's median feature standard deviation the sweep tries by default.
SIGMA_FACTORS = (0.125, 0.25, 0.5, 1.0)
#: Range tolerances (shares of each feature's span) ``choose_tolerance`` tries, smallest first.
TOLERANCES = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
#: Share of held-out reference samples a profiled range rule may fail.
RULE_FAILURE_TARGET = 0.02
#: The run key of the sweep's seeds.
SWEEP_RUN_KEY = "certrisk-init"


@dataclass(frozen=True)
class SigmaTrial:
    """The smoothed classifier at one sigma on the sweep's samples (abstained counts as wrong)."""

    sigma: float
    accuracy: float
    abstention_rate: float
    median_radius: float


@dataclass
class Draft:
    """What ``init`` found and chose; ``files`` are the paths it wrote."""

    model: ModelSpec
    data: DataSpec
    base_accuracy: float
    n_reference: int
    roles: dict[str, int]
    trials: list[SigmaTrial]
    sigma: float
    sigma_reason: str
    range_tolerance: float
    rule_failure_share: float
    methods: list[str]
    skipped_methods: dict[str, str]
    calibration: dict | None = None
    clean_batch: dict | None = None
    files: dict[str, Path] = field(default_factory=dict)


def model_format(path: Path, factory: str | None, fmt: str | None) -> str:
    """The model's format: ``fmt`` when given, safetensors with a factory, ``export`` for .pt2,
    else TorchScript."""
    if fmt:
        return fmt
    if factory or path.suffix == ".safetensors":
        if not factory:
            raise InputError(
                f"{path}: safetensors weights need --factory MODULE:FUNCTION (see the user guide)"
            )
        return "safetensors"
    return "export" if path.suffix == ".pt2" else "torchscript"


def read_reference(path: Path, *, label_column: str, id_column: str) -> tuple[Batch, tuple[int, ...] | None]:
    """The labelled reference set and, for an npz archive, its per-sample input shape."""
    frame = read_table(path, label_column=label_column)
    if label_column not in frame.columns:
        raise InputError(
            f"{path}: the reference set needs a label column {label_column!r} (integer class indices); "
            "pass --label-column when it has another name"
        )
    spec = DataSpec(reference=str(path), label_column=label_column, id_column=id_column)
    names = tuple(str(c) for c in frame.columns if c not in (id_column, label_column))
    batch = validate_frame(frame, spec=spec, n_features=len(names), batch_id="reference", source=str(path))
    shape = None
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            shape = tuple(int(d) for d in archive["X"].shape[1:])
    return batch, shape


def n_logits(loaded: LoadedModel, input_shape: tuple[int, ...]) -> int:
    """Logits per input, from one zero input; ModelLoadError naming the shape when it fails."""
    try:
        with torch.no_grad():
            out = loaded.module(torch.zeros((1, *input_shape), dtype=torch.float32, device=loaded.device))
    except Exception as exc:  # noqa: BLE001 - any model error means: this input shape does not fit
        raise ModelLoadError(
            f"{loaded.path}: the model does not accept one input of shape {list(input_shape)} ({exc}); "
            "pass --input-shape"
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelLoadError(
            f"{loaded.path}: output of shape {shape} for one input of shape {list(input_shape)}; (1, n_classes) "
            "expected (pass --input-shape when the model takes another shape)"
        )
    return int(out.shape[1])


def reference_scale(reference: Batch) -> float:
    """The median standard deviation of the reference's features (the sweep's unit)."""
    std = reference.features.astype(np.float64).std(axis=0)
    positive = std[std > 0]
    return float(np.median(positive)) if len(positive) else 1.0


def default_sigmas(reference: Batch) -> list[float]:
    scale = reference_scale(reference)
    return [float(f"{f * scale:.3g}") for f in SIGMA_FACTORS]


def sigma_sweep(
    loaded: LoadedModel,
    sample: Batch,
    input_shape: tuple[int, ...],
    sigmas: list[float],
    *,
    n0: int,
    n: int,
    alpha: float,
) -> list[SigmaTrial]:
    """The smoothed classifier at each sigma on ``sample`` (labelled): accuracy, abstention and the
    median certified l2 radius (0 when every sample abstains)."""
    x = sample.inputs(input_shape)
    seeds = derive_seeds(SWEEP_RUN_KEY, sample.ids.tolist(), "smoothing")
    trials = []
    for sigma in sigmas:
        spec = SmoothingSpec(sigma=sigma, n0=n0, n=n, alpha=alpha)
        cert = certify_with_spec(loaded.module, x, spec, seeds=seeds, device=loaded.device)
        certified = ~cert.abstained
        correct = (cert.prediction == sample.labels) & (cert.prediction != ABSTAIN)
        radius = float(np.median(cert.radius[certified])) if certified.any() else 0.0
        trials.append(SigmaTrial(sigma, float(correct.mean()), float(cert.abstained.mean()), radius))
    return trials


def choose_sigma(
    trials: list[SigmaTrial], base_accuracy: float, *, max_drop: float = 0.05, max_abstention: float = 0.25
) -> tuple[float, str]:
    """The largest sigma whose smoothed accuracy is within ``max_drop`` of ``base_accuracy`` and
    whose abstention is at most ``max_abstention``; when none is, the most accurate (smallest on
    ties). Returns (sigma, why)."""
    ok = [t for t in trials if t.accuracy >= base_accuracy - max_drop and t.abstention_rate <= max_abstention]
    if ok:
        best = max(ok, key=lambda t: t.sigma)
        return best.sigma, (
            f"the largest sigma whose smoothed accuracy is within {max_drop:.0%} of the base model's "
            f"({base_accuracy:.1%}) with at most {max_abstention:.0%} abstention"
        )
    best = max(trials, key=lambda t: (t.accuracy, -t.sigma))
    return best.sigma, (
        f"no sigma kept the smoothed accuracy within {max_drop:.0%} of the base model's with at most "
        f"{max_abstention:.0%} abstention; the most accurate was taken (train the model with Gaussian noise "
        "at the sigma you want)"
    )


def choose_tolerance(reference: Batch) -> tuple[float, float]:
    """The smallest ``rules.range_tolerance`` for which the held-out roles' samples fall outside a
    profiled range at most ``RULE_FAILURE_TARGET`` of the time. Returns (tolerance, that share)."""
    roles = reference_roles(reference.ids)
    index = reference.features[roles == "index"].astype(np.float64)
    held = reference.features[roles != "index"].astype(np.float64)
    if not len(index) or not len(held):
        return TOLERANCES[-1], 0.0
    lo, hi = index.min(axis=0), index.max(axis=0)
    share = 0.0
    for tol in TOLERANCES:
        pad = tol * (hi - lo)
        share = float(((held < lo - pad) | (held > hi + pad)).any(axis=1).mean())
        if share <= RULE_FAILURE_TARGET:
            return tol, share
    return TOLERANCES[-1], share


def calibrate(policy_path: Path, reference: Batch, work: Path) -> tuple[dict | None, dict]:
    """Score the reference's evaluation role as a clean batch through ``run_local`` (the operators
    a DAG runs): the tier calibration it computed and the clean batch's figures."""
    from certrisk.operators.local import run_local

    held = reference_roles(reference.ids) == "evaluation"
    if held.sum() < 2:
        held = reference_roles(reference.ids) != "index"
    rows = np.flatnonzero(held)
    clean = Batch("clean-reference", reference.ids[rows], reference.features[rows], reference.feature_names)
    batch_path = work / "clean-reference.parquet"
    clean.to_frame().to_parquet(batch_path, index=False)
    run = run_local(policy_path, batch_path, artifacts_dir=work / "artifacts", run_id="init")
    summary = run.batch_summary()
    risk = run.sample_risk()
    figures = {
        "n_samples": len(clean),
        "tier": run.tier,
        "abstention_rate": float(risk["abstained"].mean()),
        "share_high": float(risk["tier"].isin(["high", "critical"]).mean()),
        "reasons": summary.get("reasons", []),
    }
    return run.context.get("calibration"), figures


def certifiable_methods(loaded: LoadedModel) -> tuple[list[str], dict[str, str]]:
    """Smoothing always; interval bounds and the Lipschitz bound where the model's layers allow."""
    methods, skipped = ["smoothing"], {}
    for name in ("ibp", "lipschitz"):
        ok, why = method_available(loaded.module, name)
        if ok:
            methods.append(name)
        else:
            skipped[name] = why
    return methods, skipped


def draft_policy(spec: ScaffoldSpec) -> Draft:
    """Read the model and reference, measure, choose; writes nothing (``init`` does)."""
    reference, npz_shape = read_reference(
        spec.reference, label_column=spec.label_column, id_column=spec.id_column
    )
    input_shape = spec.input_shape or npz_shape or (len(reference.feature_names),)
    if math.prod(input_shape) != len(reference.feature_names):
        raise InputError(
            f"{spec.reference}: {len(reference.feature_names)} features per sample do not fill input shape "
            f"{list(input_shape)}"
        )
    fmt = model_format(spec.model, spec.factory, spec.format)
    factory = allowed_target(spec.factory) if spec.factory else None  # refused before any import
    try:
        probe = ModelSpec(
            name=spec.name, path=str(spec.model), format=fmt, factory=factory,
            factory_kwargs=spec.factory_kwargs, input_shape=input_shape, classes=("0", "1"),
        )  # fmt: skip
    except ValidationError as exc:
        raise PolicyError(f"model: {exc.errors()[0]['msg']}") from None
    loaded = load_model(probe, spec.model, device=spec.device)
    k = n_logits(loaded, input_shape)
    classes = spec.classes or tuple(f"class_{i}" for i in range(k))
    if len(classes) != k:
        raise InputError(f"--classes names {len(classes)} classes but the model gives {k} logits")
    bad = (reference.labels < 0) | (reference.labels >= k)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{spec.reference}: label {int(reference.labels[row])} in row {row} is not a class index in [0, {k})"
        )
    logits = reference_logits(loaded.module, reference.inputs(input_shape), device=loaded.device)
    base_accuracy = float((logits.argmax(axis=1) == reference.labels).mean())
    sigmas = sorted(set(spec.sigmas or default_sigmas(reference)) | ({spec.sigma} if spec.sigma else set()))
    sample = reference.subsample(spec.sweep_samples, seed=0)
    trials = sigma_sweep(loaded, sample, input_shape, sigmas, n0=spec.n0, n=spec.n, alpha=spec.alpha)
    sigma, why = (spec.sigma, "set with --sigma") if spec.sigma else choose_sigma(trials, base_accuracy)
    tolerance, failures = choose_tolerance(reference)
    methods, skipped = certifiable_methods(loaded)
    roles = reference_roles(reference.ids)
    return Draft(
        model=probe.model_copy(update={"classes": classes}),
        data=DataSpec(reference=str(spec.reference), label_column=spec.label_column, id_column=spec.id_column),
        base_accuracy=base_accuracy, n_reference=len(reference),
        roles={r: int((roles == r).sum()) for r in ("index", "signal", "tier", "evaluation")},
        trials=trials, sigma=sigma, sigma_reason=why, range_tolerance=tolerance, rule_failure_share=failures,
        methods=methods, skipped_methods=skipped,
    )  # fmt: skip


def init(spec: ScaffoldSpec) -> Draft:
    """Draft the policy, write it and the DAG file under ``spec.out``, then calibrate the tiers by
    scoring the reference's held-out evaluation role through the pipeline (unless ``spec.calibrate``
    is false). Refuses to overwrite existing files unless ``spec.force``."""
    draft = draft_policy(spec)
    draft.files = write_files(spec, draft)
    if spec.calibrate:
        reference, _ = read_reference(
            spec.reference, label_column=spec.label_column, id_column=spec.id_column
        )
        with tempfile.TemporaryDirectory(prefix="certrisk-init-") as work:
            draft.calibration, draft.clean_batch = calibrate(draft.files["policy"], reference, Path(work))
    return draft
