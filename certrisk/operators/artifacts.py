"""Per-run artifacts under one ObjectStoragePath (``file://`` by default, ``s3://`` etc. in production).

XCom carries only the paths (strings) and small summaries; tables travel as parquet.
"""

from __future__ import annotations

import json
import re

import pandas as pd
from airflow.sdk import ObjectStoragePath

from certrisk.schemas.settings import artifacts_root


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", part)


def run_root(artifacts_uri: str | None, dag_id: str, run_id: str) -> ObjectStoragePath:
    """The artifact directory of one DAG run: ``<artifacts_uri>/<dag_id>/<run_id>``.

    artifacts_uri defaults to ``file://$CERTRISK_HOME/artifacts``.
    """
    base = artifacts_uri or f"file://{artifacts_root()}"
    root = ObjectStoragePath(base.rstrip("/")) / _safe(dag_id) / _safe(run_id)
    root.mkdir(parents=True, exist_ok=True)
    return root


def write_parquet(path: ObjectStoragePath, frame: pd.DataFrame) -> str:
    """Write a frame as parquet (atomically on local files: temp name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    with tmp.open("wb") as fh:
        frame.to_parquet(fh, index=False)
    tmp.rename(path)
    return str(path)


def read_parquet(uri: str | ObjectStoragePath) -> pd.DataFrame:
    path = uri if isinstance(uri, ObjectStoragePath) else ObjectStoragePath(uri)
    with path.open("rb") as fh:
        return pd.read_parquet(fh)


def write_json(path: ObjectStoragePath, data: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return str(path)


def read_json(uri: str | ObjectStoragePath) -> dict:
    path = uri if isinstance(uri, ObjectStoragePath) else ObjectStoragePath(uri)
    return json.loads(path.read_text())


def read_text(uri: str | ObjectStoragePath) -> str:
    path = uri if isinstance(uri, ObjectStoragePath) else ObjectStoragePath(uri)
    return path.read_text()


def write_text(path: ObjectStoragePath, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)
