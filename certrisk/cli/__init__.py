"""The ``certrisk`` command: demo, init, policy check, score, database administration, governance
queries, reports.

Each module registers its commands on ``certrisk.cli.app.app``; importing them here assembles
the command line.
"""

from __future__ import annotations

from certrisk.cli import demo, evaluate, governance, onboarding, reports, review  # noqa: F401  (they register commands)
from certrisk.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
