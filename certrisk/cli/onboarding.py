"""Your own model: ``certrisk init`` (a measured policy and a DAG file), ``certrisk policy check``
(does it load, how accurate, how fast here) and ``certrisk score`` (the pipeline without Airflow)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from certrisk.cli.app import app, policy_app
from certrisk.cli.common import (
    DB_HELP,
    FormatOption,
    ListFormat,
    domain_errors_exit,
    fail,
    logs_on_stderr,
    store_for,
)


def _floats(value: str | None, option: str) -> tuple[float, ...] | None:
    from certrisk.schemas.errors import InputError

    if not value:
        return None
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        fail(InputError(f"{option}: not a comma-separated list of numbers: {value!r}"))


def _shape(value: str | None) -> tuple[int, ...] | None:
    from certrisk.schemas.errors import InputError

    if not value:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        fail(InputError(f"--input-shape: not a comma-separated list of integers: {value!r}"))


def _kwargs(value: str | None) -> dict:
    from certrisk.schemas.errors import InputError

    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        fail(InputError(f"--factory-kwargs: not JSON ({exc.msg}): {value!r}"))
    if not isinstance(parsed, dict):
        fail(InputError(f"--factory-kwargs: a JSON object is needed, got {value!r}"))
    return parsed


def _print_draft(draft, spec) -> None:
    typer.echo(
        f"model {draft.model.name}: {draft.model.format}, input shape {list(draft.model.input_shape)}, "
        f"{len(draft.model.classes)} classes {list(draft.model.classes)}"
    )
    roles = ", ".join(f"{k} {v}" for k, v in draft.roles.items())
    typer.echo(
        f"reference: {draft.n_reference} samples ({roles}); base model accuracy {draft.base_accuracy:.3f}"
    )
    typer.echo("sigma sweep (smoothed classifier on the reference; abstained counts as wrong):")
    for t in draft.trials:
        mark = "  <- chosen" if t.sigma == draft.sigma else ""
        typer.echo(
            f"  sigma {t.sigma:<8g} accuracy {t.accuracy:.3f}  abstention {t.abstention_rate:.3f}  "
            f"median l2 radius {t.median_radius:.3g}{mark}"
        )
    typer.echo(f"chosen sigma {draft.sigma}: {draft.sigma_reason} (override with --sigma)")
    typer.echo(
        f"rules: profiled from the reference, range tolerance {draft.range_tolerance} "
        f"({draft.rule_failure_share:.1%} of held-out reference samples outside a range)"
    )
    skipped = "; ".join(f"{k}: {v}" for k, v in draft.skipped_methods.items())
    typer.echo(f"methods: {', '.join(draft.methods)}" + (f" (not possible: {skipped})" if skipped else ""))
    if draft.calibration is not None:
        c = draft.calibration
        typer.echo(
            f"tiers: calibrated on {c['n_calibration']} clean tier-role samples: high from risk "
            f"{c['high']['value']:.3f} ({c['high']['source']}), medium from {c['medium']['value']:.3f} "
            f"({c['medium']['source']}). {c['guarantee']}"
        )
    if draft.clean_batch is not None:
        b = draft.clean_batch
        typer.echo(
            f"a clean batch (the reference's {b['n_samples']} held-out evaluation samples) scores tier "
            f"{b['tier']}: abstention {b['abstention_rate']:.3f}, share at high or above {b['share_high']:.3f}"
        )


def _next_steps(draft, spec) -> None:
    policy, dag = draft.files["policy"], draft.files["dag"]
    typer.echo(f"\nwrote {policy}\nwrote {dag}\n\nnext:")
    steps = [
        f"certrisk policy check {policy}",
        f"certrisk score --policy {policy} --batch BATCH.parquet",
        f'cp {dag} {policy} "$AIRFLOW_HOME/dags/"   # both files inside Airflow\'s dags folder',
        "airflow dags reserialize   # Airflow lists a new DAG only after parsing it",
        f'airflow dags test {spec.resolved_dag_id} -c \'{{"batch_uri": "/abs/path/BATCH.parquet"}}\'',
        "certrisk runs",
        "certrisk report --run RUN_ID --out report.html",
        "certrisk verify",
    ]
    for step in steps:
        typer.echo(f"  {step}")


@app.command()
def init(
    model: str = typer.Option(
        ..., "--model", help="Model file: TorchScript (.pt), torch.export (.pt2) or safetensors."
    ),
    reference: str = typer.Option(
        ..., "--reference", help="Labelled reference set (parquet or npz), held out from training."
    ),
    out: str = typer.Option(".", "--out", help="Directory for policy.yaml and the DAG file."),
    factory: str | None = typer.Option(
        None,
        "--factory",
        help="MODULE:FUNCTION building the architecture (safetensors weights); see the guide.",
    ),
    factory_kwargs: str | None = typer.Option(
        None, "--factory-kwargs", help="JSON object of factory arguments."
    ),
    name: str | None = typer.Option(None, "--name", help="Model name (default: the model file's stem)."),
    classes: str | None = typer.Option(None, "--classes", help="Comma-separated class names in logit order."),
    input_shape: str | None = typer.Option(
        None,
        "--input-shape",
        help="One input's shape, e.g. 1,8,8 (default: npz X's, else the feature count).",
    ),
    label_column: str = typer.Option("label", "--label-column", help="The reference's label column."),
    sigma: float | None = typer.Option(
        None, "--sigma", help="Use this smoothing sigma instead of the sweep's."
    ),
    sigmas: str | None = typer.Option(
        None, "--sigmas", help="Comma-separated sigmas to sweep (default: 1/8 to 1 x the median feature std)."
    ),
    n: int = typer.Option(2000, "--n", help="Smoothing estimation samples per input (policy and sweep)."),
    sweep_samples: int = typer.Option(100, "--sweep-samples", help="Reference samples the sweep certifies."),
    dag_id: str | None = typer.Option(None, "--dag-id", help="DAG id (default: <name>_risk)."),
    batch_uri: str | None = typer.Option(None, "--batch-uri", help="Default batch of the DAG's runs."),
    calibrate: bool = typer.Option(
        True,
        "--calibrate/--no-calibrate",
        help="Score a clean held-out batch to calibrate and show the tiers.",
    ),
    device: str | None = typer.Option(
        None, "--device", help="Torch device of the sweep (default: cuda if present)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Draft a policy and a DAG file for your model: shape and classes read from the model and the
    reference, a sigma chosen by a sweep (accuracy vs abstention shown), rules profiled, tiers calibrated."""
    from certrisk.operators.scaffold_files import ScaffoldSpec

    spec = ScaffoldSpec(
        model=Path(model).resolve(), reference=Path(reference).resolve(), out=Path(out).resolve(),
        name=name or Path(model).stem,
        factory=factory, factory_kwargs=_kwargs(factory_kwargs), input_shape=_shape(input_shape),
        classes=tuple(c.strip() for c in classes.split(",")) if classes else None, label_column=label_column,
        sigma=sigma, sigmas=_floats(sigmas, "--sigmas"), n=n, sweep_samples=sweep_samples, device=device,
        dag_id=dag_id, batch_uri=batch_uri, calibrate=calibrate, force=force,
    )  # fmt: skip
    with logs_on_stderr(), domain_errors_exit():
        from certrisk.operators.scaffold import init as run_init

        draft = run_init(spec)
    _print_draft(draft, spec)
    _next_steps(draft, spec)


@policy_app.command("check")
def policy_check(
    policy: str = typer.Argument(..., help="The policy YAML to check."),
    samples: int = typer.Option(16, "--samples", help="Reference samples to certify with every method."),
    device: str | None = typer.Option(None, "--device", help="Torch device (default: the policy's)."),
    format: FormatOption = ListFormat.TABLE,
) -> None:
    """Validate a policy, load its model through the factory allowlist, check its logits against the
    classes, certify a few reference samples: reference accuracy and seconds per 1,000 samples here."""
    with logs_on_stderr(), domain_errors_exit():
        from certrisk.operators.model_check import check_policy

        result = check_policy(policy, samples=samples, device=device)
    if format is ListFormat.JSON:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    typer.echo(f"policy {result.policy}: valid")
    typer.echo(
        f"model {result.model} (sha256 {result.model_sha256[:12]}...) loads on {result.device} and gives "
        f"{len(result.classes)} logits for input shape {list(result.input_shape)}: one per class"
    )
    typer.echo(f"reference accuracy {result.reference_accuracy:.3f} on {result.n_reference} samples")
    for problem in result.health_problems:
        typer.echo(f"  health problem (every batch would be critical): {problem}")
    for m in result.methods:
        if not m.available:
            typer.echo(f"  {m.method}: not possible for this model ({m.note})")
            continue
        typer.echo(
            f"  {m.method}: {m.seconds_per_1000:.1f} s per 1,000 samples; on {result.n_checked} reference samples "
            f"accuracy {m.accuracy:.3f}, abstention {m.abstention_rate:.3f}"
        )
    typer.echo(
        f"certification: about {result.seconds_per_1000:.1f} s per 1,000 samples on {result.device} here"
    )
    if result.health_problems:
        raise typer.Exit(1)


@app.command()
def score(
    policy: str = typer.Option(..., "--policy", help="The model's policy YAML."),
    batch: str = typer.Option(..., "--batch", help="Batch file (parquet or npz)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    record: bool = typer.Option(True, "--record/--no-record", help="Write the run's record to the database."),
    out: str | None = typer.Option(
        None, "--out", help="Artifacts directory (default: $CERTRISK_HOME/artifacts)."
    ),
    dag_id: str = typer.Option("certrisk_local", "--dag-id", help="dag_id the record is keyed by."),
    run_id: str | None = typer.Option(None, "--run-id", help="run_id (default: local__<UTC time>)."),
    device: str | None = typer.Option(None, "--device", help="Torch device (default: the policy's)."),
    format: FormatOption = ListFormat.TABLE,
) -> None:
    """Score one batch through the pipeline's operators without Airflow (notebooks, CI) and write
    the same record a DAG run writes."""
    from certrisk.schemas.settings import artifacts_root

    store = store_for(db) if record else None
    with logs_on_stderr(), domain_errors_exit():
        from certrisk.operators.local import run_local

        if store is not None:
            store.upgrade()  # idempotent: a new database gets the schema, a current one is left alone
        run = run_local(
            policy, batch, artifacts_dir=out or artifacts_root(), dag_id=dag_id, run_id=run_id,
            device=device, db_url=store.url if store is not None else None,
        )  # fmt: skip
    risk = run.sample_risk()
    summary = {
        "dag_id": run.dag_run.dag_id, "run_id": run.dag_run.run_id, "batch_id": run.batch["batch_id"],
        "n_samples": int(run.batch["n_samples"]), "tier": run.tier,
        "abstention_rate": float(risk["abstained"].mean()), "mean_risk": float(risk["risk"].mean()),
        "tier_counts": {str(k): int(v) for k, v in risk["tier"].value_counts().items()},
        "reasons": run.batch_summary().get("reasons", []), "artifacts": str(Path(run.scored["sample_risk"]).parent),
        "recorded": run.recorded,
    }  # fmt: skip
    if format is ListFormat.JSON:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    typer.echo(
        f"run {summary['run_id']} ({summary['dag_id']}): batch {summary['batch_id']}, {summary['n_samples']} samples, "
        f"tier {summary['tier']}, abstention {summary['abstention_rate']:.3f}, mean risk {summary['mean_risk']:.3f}"
    )
    typer.echo("tiers: " + ", ".join(f"{k} {v}" for k, v in summary["tier_counts"].items()))
    for reason in summary["reasons"]:
        typer.echo(f"  reason: {reason}")
    typer.echo(f"artifacts: {summary['artifacts']}")
    if store is not None:
        typer.echo(
            f"recorded in {store.masked_url}: {run.recorded['status']} (revision {run.recorded['revision']})"
        )
    else:
        typer.echo("not recorded (--no-record)")
