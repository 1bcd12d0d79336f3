"""The Great Expectations side of the rules: import GX (lazily, quietly), look expectation types
up in its registry, build expectations from policy entries, and validate a frame against them.

GX is imported lazily (about 2 s) and its logger raised to WARNING: under Airflow's logging it
otherwise prints hundreds of registration lines.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache

import pandas as pd

from certrisk.schemas.errors import PolicyError
from certrisk.schemas.policy import ExpectationSpec


def import_gx():
    """Import GX once, with its logger quietened."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    return gx


@cache
def expectation_class(type_name: str):
    """The GX expectation class registered as ``type_name``, or None when GX does not know it."""
    import_gx()
    from great_expectations.exceptions import ExpectationNotFoundError
    from great_expectations.expectations.registry import get_expectation_impl

    try:
        return get_expectation_impl(type_name)
    except ExpectationNotFoundError:
        return None


def is_row_level(cls) -> bool:
    """True for map expectations (per value, per pair, per record): their failures name rows."""
    from great_expectations.expectations.expectation import (
        ColumnMapExpectation,
        ColumnPairMapExpectation,
        MulticolumnMapExpectation,
    )

    return issubclass(cls, ColumnMapExpectation | ColumnPairMapExpectation | MulticolumnMapExpectation)


def instantiate(spec: ExpectationSpec, key: str):
    """Build the GX expectation for ``spec``; PolicyError names ``key`` on any failure."""
    cls = expectation_class(spec.type)
    if cls is None:
        raise PolicyError(
            f"{key}.type: Great Expectations does not know expectation type {spec.type!r} "
            f"(expectation {spec.display_name!r})"
        )
    try:
        return cls(**spec.kwargs, meta={"certrisk_name": spec.display_name})
    except Exception as exc:  # noqa: BLE001 - pydantic or GX validation of user kwargs
        raise PolicyError(
            f"{key}.kwargs: invalid arguments for {spec.type!r} (expectation {spec.display_name!r}): "
            f"{' '.join(str(exc).split())}"
        ) from None


def validate_expectation_types(expectations: Sequence[ExpectationSpec], *, key: str = "expectations") -> None:
    """Raise PolicyError naming ``<key>[i].type`` for the first type GX does not know."""
    for i, spec in enumerate(expectations):
        if expectation_class(spec.type) is None:
            raise PolicyError(
                f"{key}[{i}].type: Great Expectations does not know expectation type {spec.type!r}"
            )


def run_suite(frame: pd.DataFrame, id_column: str, gx_expectations: list) -> list:
    """Validate ``frame`` on a fresh ephemeral context; results in suite order."""
    gx = import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = ctx.data_sources.add_pandas("certrisk").add_dataframe_asset("batch")
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(
        batch_parameters={"dataframe": frame.reset_index(drop=True)}
    )
    # the expectations go in with the suite: suite.add_expectation re-serialises the whole suite
    # into the context's store on every call (quadratic: 65% of an evaluation's time with ~130
    # profiled expectations)
    suite = ctx.suites.add(gx.ExpectationSuite(name="certrisk_rules", expectations=list(gx_expectations)))
    # Batch.validate keeps the results in memory: the ValidationDefinition path also serialises
    # them into a results store, which costs time on large unexpected lists and chokes on numpy
    # bools in some expectations' details.
    outcome = batch.validate(
        suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]}
    )
    by_name = {r.expectation_config.meta.get("certrisk_name"): r for r in outcome.results}
    return [by_name[exp.meta["certrisk_name"]] for exp in gx_expectations]
