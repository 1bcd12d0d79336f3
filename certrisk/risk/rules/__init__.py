"""Per-sample data rules with Great Expectations.

A policy lists expectations (a GX expectation type, its arguments, a severity and the NIST AI
RMF subcategories it evidences). ``build_expectations`` makes the suite a run validates
(defaults profiled from the reference set, merged with the policy's entries) and
``check_rules`` validates a batch against it, attributing row-level failures to samples
(RULE_SAMPLE_COLUMNS) and reporting each expectation (RULE_EXPECTATION_COLUMNS).

Modules
-------
* ``suite``: ``profile_expectations``, ``build_expectations``: which expectations run.
* ``check``: ``check_rules`` and ``RuleResults``: validation and per-sample attribution.
* ``gx``: Great Expectations itself: lazy import, the registry of expectation types
  (``validate_expectation_types``), building expectations and running a suite on a frame.
"""

from __future__ import annotations

from certrisk.risk.rules.check import BATCH, ROW, RuleResults, check_rules
from certrisk.risk.rules.gx import validate_expectation_types
from certrisk.risk.rules.suite import build_expectations, profile_expectations

__all__ = [
    "BATCH",
    "ROW",
    "RuleResults",
    "build_expectations",
    "check_rules",
    "profile_expectations",
    "validate_expectation_types",
]
