"""A keyed cache of derived arrays (reference certificates, Lipschitz constants) on local disk.

Some derived data is costly and depends only on content-hashed inputs: the reference set's
certificates depend on the model, the policy's method parameters and the reference file. The
cache computes such data once per key and stores it under ``<root>/<kind>/<digest>.npz``
(root: ``CERTRISK_HOME/cache`` by default), where the digest is the sha256 of the key (canonical
JSON, with the cache's format version added). Each entry holds its arrays, the key in full and a
sha256 of the arrays' contents; a read recomputes the digest, and an entry that cannot be read or
does not match (a torn write, bit rot, a hand edit) is recomputed and rewritten with a warning.
Writes are atomic (temporary file, then rename), so concurrent tasks never read half an entry.

The key must name everything the arrays depend on: input hashes, every parameter, and the
version of the algorithm that computed them (bump it when the computation changes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from certrisk.schemas.errors import InputError
from certrisk.schemas.settings import cache_dir

log = logging.getLogger(__name__)

#: Version of the on-disk entry format; part of every key, so a format change reads nothing old.
FORMAT_VERSION = 1
_KEY, _DIGEST = "__key__", "__sha256__"
_VALUE = "value"


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 hex digest of named arrays: each name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\x1f{arr.dtype.str}\x1f{arr.shape}\x1e".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


class ArtifactCache:
    """Arrays computed once per (kind, key) and kept under ``root``.

    :param root: the cache directory; default ``cache_dir()`` (``$CERTRISK_HOME/cache``),
        resolved when first used, not when constructed.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self._root = None if root is None else Path(root)

    @property
    def root(self) -> Path:
        return self._root if self._root is not None else cache_dir()

    @staticmethod
    def digest(kind: str, key: Mapping[str, Any]) -> str:
        """sha256 hex digest of (kind, key, format version) as canonical JSON; key order does not matter."""
        blob = json.dumps(
            {"kind": kind, "format": FORMAT_VERSION, "key": dict(key)},
            sort_keys=True,
            default=str,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def path(self, kind: str, key: Mapping[str, Any]) -> Path:
        """Where the entry of (kind, key) lives."""
        if not kind or any(c in kind for c in "/\\.") or kind.startswith("_"):
            raise InputError(f"artifact cache: kind must be a plain name, got {kind!r}")
        return self.root / kind / f"{self.digest(kind, key)}.npz"

    def get_or_compute(
        self, kind: str, key: Mapping[str, Any], compute: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """The array stored for (kind, key), or ``compute()``'s, stored first."""
        return self.get_or_compute_arrays(kind, key, lambda: {_VALUE: np.asarray(compute())})[_VALUE]

    def get_or_compute_arrays(
        self, kind: str, key: Mapping[str, Any], compute: Callable[[], Mapping[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """The named arrays stored for (kind, key), or ``compute()``'s, stored first.

        ``compute`` returns {name: array}; numeric and bool dtypes keep their dtype (no pickle).
        An unreadable entry, or one whose arrays no longer match their recorded digest, is
        recomputed and rewritten, and a warning names its file.
        """
        path = self.path(kind, key)
        if path.exists():
            stored = self._read(path)
            if stored is not None:
                return stored
        arrays = {str(name): np.asarray(value) for name, value in compute().items()}
        self._write(path, kind, key, arrays)
        return arrays

    @staticmethod
    def _read(path: Path) -> dict[str, np.ndarray] | None:
        try:
            with np.load(path, allow_pickle=False) as archive:
                entry = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("artifact cache: %s is unreadable (%s); recomputing it", path, exc)
            return None
        recorded = str(entry.pop(_DIGEST, ""))
        entry.pop(_KEY, None)
        if recorded != arrays_sha256(entry):
            log.warning(
                "artifact cache: %s does not match its recorded sha256 %s; recomputing it", path, recorded
            )
            return None
        return entry

    @staticmethod
    def _write(path: Path, kind: str, key: Mapping[str, Any], arrays: dict[str, np.ndarray]) -> None:
        reserved = [name for name in arrays if name in (_KEY, _DIGEST)]
        if reserved:
            raise InputError(f"artifact cache {kind!r}: array names {reserved} are reserved")
        path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"kind": kind, "format": FORMAT_VERSION, "key": dict(key)}, default=str)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh, **arrays, **{_KEY: np.asarray(record), _DIGEST: np.asarray(arrays_sha256(arrays))}
                )
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old entry or the new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
