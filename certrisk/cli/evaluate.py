"""``certrisk evaluate``: measured detection of a model's policy against the attack suite."""

from __future__ import annotations

import typer

from certrisk.cli.app import app
from certrisk.cli.common import (
    FormatOption,
    ListFormat,
    domain_errors_exit,
    emit,
    fail,
    logs_on_stderr,
    store_for,
)


@app.command()
def evaluate(
    policy: str = typer.Option(..., "--policy", help="The model's policy YAML."),
    labelled: str | None = typer.Option(
        None, "--labelled", help="Labelled held-out file (default: the reference's evaluation role)."
    ),
    attacks: str | None = typer.Option(None, "--attacks", help="Comma-separated families (default: all)."),
    fractions: str = typer.Option("0.25,0.5", "--fractions", help="Budget fractions of the data's geometry."),
    seed: int = typer.Option(0, "--seed", help="Seed of the attacks' noise and of certification."),
    out: str = typer.Option("evaluation", "--out", help="Directory for evaluation.parquet and .json."),
    limit: int | None = typer.Option(None, "--limit", help="At most this many evaluation samples."),
    clip: str = typer.Option("auto", "--clip", help="Attacks' data box: auto, unit, reference or none."),
    device: str | None = typer.Option(None, "--device", help="Torch device (default: the policy's)."),
    format: FormatOption = ListFormat.TABLE,
    db: str | None = typer.Option(
        None, "--db", help="Record the result in this governance DB (default: do not record)."
    ),
) -> None:
    """Measured detection: attack a held-out labelled set, score every attacked set through the
    production pipeline, print per family what reaches each tier (and the certificate-only score)."""
    import json
    import os
    from pathlib import Path

    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    from airflow.sdk import ObjectStoragePath

    from certrisk.operators.evaluate import evaluate_policy, record_evaluation, write_evaluation
    from certrisk.risk.attack_suite import FAMILIES
    from certrisk.risk.evaluate import evaluation_records, family_table, target_gaps
    from certrisk.schemas.errors import InputError

    try:
        budget = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        fail(InputError(f"--fractions: not a comma-separated list of numbers: {fractions!r}"))
    root = Path(out).resolve()
    with logs_on_stderr(), domain_errors_exit():
        result = evaluate_policy(
            policy, work_dir=root / "work", labelled=labelled, seed=seed, limit=limit, clip=clip, device=device,
            families=[a.strip() for a in attacks.split(",") if a.strip()] if attacks else tuple(FAMILIES),
            fractions=budget,
        )  # fmt: skip
        paths = write_evaluation(result, ObjectStoragePath(f"file://{root}"))
        recorded = None
        if db:
            store = store_for(db)
            store.upgrade()  # idempotent: a new database gets the schema, a current one is left alone
            recorded = record_evaluation(result, store, policy)
    if format is ListFormat.JSON:
        rows = evaluation_records(result)
        typer.echo(json.dumps({"metadata": result.metadata, "rows": rows, "recorded": recorded}, indent=2))
        return
    meta = result.metadata
    geo = meta["geometry"]["median_nearest_other_class"]
    emit(family_table(result.frame), "table", f"measured detection: {meta['model']}")
    typer.echo(
        f"geometry: median distance to the nearest reference sample of another class l2 {geo['l2']:.3g}, "
        f"linf {geo['linf']:.3g}; {meta['n_clean']} clean evaluation samples ({meta['evaluation_source']}), "
        f"clean batch tier {meta['clean']['batch_tier']}; box {meta['clip']}"
    )
    gaps = target_gaps(result.frame)
    typer.echo(
        "misses against the targets:" if gaps else "every scored non-adaptive family meets the targets"
    )
    for line in gaps:
        typer.echo(f"  {line}")
    typer.echo(
        "A certificate bounds the distance to a class change, not to an attack; adaptive attackers "
        f"may evade. Written: {paths['evaluation']}, {paths['metadata']}"
    )
    if recorded is not None:
        typer.echo(f"recorded in {store_for(db).masked_url}: {recorded['status']}")
