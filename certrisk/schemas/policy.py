"""The policy: one YAML file per model, validated with unknown keys rejected.

A policy names the model, the certification methods and their parameters, the rules, the drift
tests and reference set, the scoring weights, tier thresholds and their calibration, the signals
that do not trust the certificate, the model health floors, the
alert tier and the organisation's risk tolerance statement. ``load_policy`` returns the validated model together
with the file's sha256, which every run records.

Paths inside a policy may use ``${CERTRISK_HOME}`` and other environment variables; relative
paths are resolved against the policy file's directory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from certrisk.schemas.enums import Method, Norm, Severity, Tier
from certrisk.schemas.errors import PolicyError
from certrisk.schemas.review import ReviewSpec
from certrisk.schemas.scoring import (  # noqa: F401 - the scoring sections, importable from here as before
    DEFAULT_THRESHOLDS,
    DEFAULT_WEIGHTS,
    CalibrationSpec,
    ScoringSpec,
    SignalsSpec,
    StrictSpec,
)
from certrisk.schemas.settings import expand_path

_Strict = StrictSpec


class ModelSpec(_Strict):
    """The model under governance.

    format: ``safetensors`` (weights plus ``factory``, a ``module:function`` that builds the
    architecture), ``torchscript`` or ``export`` (a ``torch.export`` program). Pickle is never used.
    """

    name: str = Field(min_length=1, description="Registry name of the model.")
    path: str = Field(description="Model file; relative to the policy file or with ${CERTRISK_HOME}.")
    format: Literal["safetensors", "torchscript", "export"] = "safetensors"
    factory: str | None = Field(default=None, description="module:function building the architecture.")
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    input_shape: tuple[int, ...] = Field(description="Shape of one input, without the batch axis.")
    classes: tuple[str, ...] = Field(min_length=2)
    sha256: str | None = Field(default=None, description="Expected sha256 of the model file, if pinned.")

    @field_validator("input_shape")
    @classmethod
    def _positive_shape(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(d < 1 for d in value):
            raise ValueError(f"input_shape must be non-empty with positive dimensions, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _factory_for_weights(self) -> ModelSpec:
        if self.format == "safetensors" and not self.factory:
            raise ValueError("format 'safetensors' needs 'factory' (module:function)")
        name, colon, function = (self.factory or "").partition(":")
        if self.factory and not (
            name.replace(".", "_").replace("-", "_").isidentifier() and (not colon or function)
        ):
            raise ValueError(
                f"factory must be a registered entry-point name or 'module:function', got {self.factory!r}"
            )
        return self

    @property
    def n_features(self) -> int:
        n = 1
        for d in self.input_shape:
            n *= d
        return n


class DataSpec(_Strict):
    """Where the reference set lives and how batches are laid out."""

    reference: str = Field(description="Reference set (parquet or npz): sample_id, features, label.")
    id_column: str = "sample_id"
    label_column: str | None = Field(default="label", description="Label column of the reference set.")
    feature_columns: tuple[str, ...] | None = Field(
        default=None, description="Feature columns in model order; default: every other column."
    )
    categorical_features: tuple[str, ...] = ()
    index: str | None = Field(
        default=None,
        description="Extra labelled samples (the reference's columns) for the signals' neighbour index, e.g. "
        "the training set; the reference's signal, tier and evaluation roles must be held out from training.",
    )


#: Most noisy copies a smoothing certificate may draw per input (``n`` and ``n0``): 10^7 forward
#: passes per sample already cost hours per batch on a GPU and tighten the bound by little (its
#: width shrinks like 1/sqrt(n)); a larger number is a typo, not a setting.
MAX_NOISE_SAMPLES = 10_000_000


class SmoothingSpec(_Strict):
    """Randomized smoothing (Cohen et al. 2019), l2 certificates."""

    method: Literal[Method.SMOOTHING] = Method.SMOOTHING
    norm: Literal[Norm.L2] = Norm.L2
    sigma: float = Field(
        gt=0,
        allow_inf_nan=False,
        description="Gaussian noise level (finite); the model should be trained at it.",
    )
    n0: int = Field(
        default=100, ge=1, le=MAX_NOISE_SAMPLES, description="Selection samples (guess the top class)."
    )
    n: int = Field(
        default=10_000, ge=1, le=MAX_NOISE_SAMPLES, description="Estimation samples per input (at most 10^7)."
    )
    alpha: float = Field(default=0.001, gt=0, lt=1, description="Failure probability of the bound.")
    batch_size: int | None = Field(default=None, ge=1, description="Noisy copies per forward pass.")
    mode: Literal["fixed", "sequential"] = "fixed"
    target_radius: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class IBPSpec(_Strict):
    """Interval bound propagation; eps None searches the largest certified eps."""

    method: Literal[Method.IBP] = Method.IBP
    norm: Norm = Norm.LINF
    eps: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class CROWNSpec(_Strict):
    """CROWN linear-relaxation bounds (Zhang et al. 2018): tighter than intervals, several bound
    evaluations per input. ``crown-ibp`` takes interval pre-activation bounds (cheaper, looser).
    eps None searches the largest certified eps."""

    method: Literal[Method.CROWN, Method.CROWN_IBP] = Method.CROWN
    norm: Norm = Norm.LINF
    eps: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    intermediate: Literal["crown", "ibp"] | None = Field(
        default=None, description="Pre-activation bounds; default: crown for method crown, ibp for crown-ibp."
    )

    @field_validator("norm")
    @classmethod
    def _ball_norm(cls, value: Norm) -> Norm:
        if value not in (Norm.LINF, Norm.L2):
            raise ValueError("crown certifies linf or l2 balls")
        return value


class LipschitzSpec(_Strict):
    """Global l2 Lipschitz bound of the logits."""

    method: Literal[Method.LIPSCHITZ] = Method.LIPSCHITZ
    norm: Literal[Norm.L2] = Norm.L2


MethodSpec = Annotated[SmoothingSpec | IBPSpec | CROWNSpec | LipschitzSpec, Field(discriminator="method")]


#: The arithmetic a model can run in: float32, or bfloat16 / float16 autocast.
Precision = Literal["fp32", "bf16", "fp16"]


class CertificationSpec(_Strict):
    """Methods to run and where to run them. The first smoothing method drives abstention."""

    methods: tuple[MethodSpec, ...] = Field(min_length=1)
    shard_size: int = Field(default=512, ge=1, description="Samples per certification shard (mapped task).")
    queue: str = Field(default="default", description="Airflow queue of certify tasks (e.g. 'gpu').")
    pool: str | None = Field(default=None, description="Airflow pool capping concurrent certify tasks.")
    device: str | None = Field(default=None, description="torch device; None picks cuda when present.")
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads per certify task (torch.set_num_threads); set it to cores / concurrent shards "
        "so mapped shards on one CPU worker do not oversubscribe its cores. None keeps torch's default.",
    )
    precision: Precision = Field(
        default="fp32",
        description="Arithmetic the base classifier runs in for randomized smoothing: fp32, or bf16/fp16 "
        "autocast (noise is still drawn and added in float32). The smoothed classifier is certified as "
        "executed at this precision; deterministic methods (IBP, CROWN, Lipschitz) keep their own sound "
        "float32/float64 arithmetic and record fp32.",
    )
    compile: Literal["off", "default", "max-autotune"] = Field(
        default="off",
        description="torch.compile mode of the smoothing forward passes; 'off' runs eager. A model that "
        "fails to compile falls back to eager with a warning; compile time is reported apart.",
    )
    serving_precision: Precision = Field(
        default="fp32",
        description="Precision the model is served at; the share of reference inputs whose base prediction "
        "differs between it and the certification precision (serving parity) is measured every run.",
    )
    parity_threshold: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Largest acceptable serving-parity gap (share of reference inputs); above it the run "
        "warns and the limitations say so.",
    )
    parity_samples: int = Field(
        default=2048, ge=1, description="Reference inputs (the first ones) the serving parity is measured on."
    )

    @property
    def smoothing(self) -> SmoothingSpec | None:
        return next((m for m in self.methods if isinstance(m, SmoothingSpec)), None)

    @property
    def driving(self) -> MethodSpec:
        """The method whose certificate drives a sample's abstention, prediction and radius: the
        first smoothing method when there is one (its abstention is the reliable signal), else the
        first method listed. The one statement of that rule; scoring and context both read it."""
        return self.smoothing or self.methods[0]


class ExpectationSpec(_Strict):
    """One Great Expectations expectation with its severity and RMF evidence."""

    type: str = Field(description="GX expectation type, e.g. expect_column_values_to_be_between.")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    severity: Severity = Severity.WARNING
    name: str | None = Field(default=None, description="Display name; default type plus column.")
    rmf: tuple[str, ...] = ("MEASURE 2.1",)

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        column = self.kwargs.get("column")
        return f"{self.type}:{column}" if column else self.type


class RulesSpec(_Strict):
    """Rules: a default suite profiled from the reference set, plus or instead of explicit ones."""

    profile: bool = Field(
        default=True, description="Derive not-null/range/column-count rules from the reference."
    )
    range_tolerance: float = Field(
        default=0.0, ge=0, description="Profiled ranges widen by this share of their span."
    )
    expectations: tuple[ExpectationSpec, ...] = ()


class DriftSpec(_Strict):
    """Drift tests against the reference set; alpha applies after correction across families."""

    alpha: float = Field(default=0.01, gt=0, lt=1)
    tests: tuple[Literal["ks", "mmd", "classifier"], ...] = ("ks", "mmd")
    mmd_permutations: int = Field(default=1000, ge=10)
    novelty_k: int = Field(default=5, ge=1)
    max_reference: int | None = Field(
        default=None, ge=10, description="Subsample the reference to this size."
    )


class HealthSpec(_Strict):
    """Model health floors, checked on the labelled reference before any certificate is trusted.

    A broken model looks safest to a certificate: NaN weights or a constant classifier are
    "certified" at the largest radius everywhere (DESIGN.md, Principle 7). So once per run the
    base model predicts the labelled reference set (``certrisk.risk.health``) and the batch is
    critical, with the reason named, when any of these fails:

    * every logit is finite (a sample with a non-finite logit also abstains);
    * the reference accuracy beats always predicting the majority class: a one-sided binomial
      test at level ``chance_alpha`` (catches a model at chance);
    * every class's recall reaches ``min_class_recall`` (catches a constant or near-constant
      classifier, which recalls one class only);
    * the most-predicted class's share of the predictions exceeds its share of the labels by at
      most ``max_top_class_excess`` (catches a classifier that pours most inputs into one class).

    The defaults catch a constant classifier, one that predicts a single class for more than a
    quarter of the inputs beyond its true share, and one at chance; a model whose reference
    accuracy is merely low passes and shows its figures in the record (NIST AI RMF MEASURE 2.3).
    """

    min_class_recall: float = Field(
        default=0.05, ge=0, le=1, description="Floor on every class's recall on the reference."
    )
    max_top_class_excess: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="How far the most-predicted class's share may exceed its share of the labels.",
    )
    chance_alpha: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="Level of the one-sided binomial test that accuracy beats the majority share.",
    )


class Policy(_Strict):
    """A model's certification-aware risk policy."""

    version: Literal[1] = 1
    model: ModelSpec
    data: DataSpec
    certification: CertificationSpec
    rules: RulesSpec = Field(default_factory=RulesSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)
    scoring: ScoringSpec = Field(default_factory=ScoringSpec)
    signals: SignalsSpec = Field(default_factory=SignalsSpec)
    health: HealthSpec = Field(default_factory=HealthSpec)
    review: ReviewSpec | None = Field(
        default=None, description="Human review of high-tier batches (an Airflow HITL step); none by default."
    )
    alert_tier: Tier = Tier.HIGH
    risk_tolerance: str = Field(
        min_length=1,
        description="The organisation's risk tolerance statement for this model (GOVERN 1.3, MAP 1.5).",
    )

    @model_validator(mode="after")
    def _review_before_alert(self) -> Policy:
        """A batch that alerts must have been eligible for review: with ``review.at_tier`` above
        ``alert_tier`` an approved worse batch would pass while a better, unreviewed one fails."""
        if self.review is not None and self.review.at_tier > self.alert_tier:
            raise ValueError(
                f"review.at_tier {self.review.at_tier.value!r} is above alert_tier {self.alert_tier.value!r}: "
                "batches that alert would never be reviewed; lower review.at_tier or raise alert_tier"
            )
        return self


class LoadedPolicy(BaseModel):
    """A validated policy with its provenance."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    policy: Policy
    path: Path
    sha256: str
    text: str

    def resolve(self, value: str) -> Path:
        """Resolve a path named in the policy: env vars expanded, relative to the policy file."""
        p = Path(expand_path(value))
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    @property
    def model_path(self) -> Path:
        return self.resolve(self.policy.model.path)

    @property
    def reference_path(self) -> Path:
        return self.resolve(self.policy.data.reference)

    @property
    def index_path(self) -> Path | None:
        """The extra neighbour index (``data.index``), resolved; None when the policy names none."""
        return None if self.policy.data.index is None else self.resolve(self.policy.data.index)


def _format_errors(exc: ValidationError, source: str) -> str:
    errors = exc.errors()
    lines = []
    for err in errors:
        loc = tuple(err["loc"])
        if err["type"] == "too_short" and any(
            tuple(o["loc"])[: len(loc)] == loc and o is not err for o in errors
        ):
            continue  # a list whose items failed is "too short" only after dropping them: the items say why
        key = ".".join(str(p) for p in loc) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}")
        elif err["type"] == "missing":
            lines.append(f"missing key {key!r}")
        else:
            lines.append(f"key {key!r}: {err['msg']}")
    return f"{source}: invalid policy: " + "; ".join(lines)


def parse_policy(data: Any, *, source: str = "<policy>") -> Policy:
    """Validate a mapping as a Policy; errors name the source and every bad key."""
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy must be a mapping, got {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_format_errors(exc, source)) from None


def load_policy(path: str | Path) -> LoadedPolicy:
    """Read, validate and hash a policy YAML file."""
    p = Path(expand_path(str(path))).resolve()
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{p}: cannot read policy file: {exc.strerror or exc}") from None
    text = raw.decode("utf-8", errors="replace")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{p}: not valid YAML: {exc}") from None
    policy = parse_policy(data, source=str(p))
    return LoadedPolicy(policy=policy, path=p, sha256=hashlib.sha256(raw).hexdigest(), text=text)
