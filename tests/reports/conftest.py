"""Fixtures of the report tests: one recorded store per module, headless Chromium and poppler."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from report_runs import recorded_store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
)  # fmt: skip
#: Where screenshots and PDF pages go, to look at after a run.
SHOTS = Path(os.environ.get("CERTRISK_REPORT_SHOTS") or Path(tempfile.gettempdir()) / "certrisk-report-shots")


def _need(tool: str, path: str | None) -> str:
    """The tool's path; skip without it outside CI, fail in CI (CI=true, where .ci/run installs it)."""
    if path and Path(path).is_file():
        return path
    reason = (
        f"{tool} is not installed (apt-get install {'chromium' if tool == 'chromium' else 'poppler-utils'})"
    )
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"report rendering tests must run in CI: {reason}")
    pytest.skip(reason)


NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(store, record): a SQLite store with ten daily runs and the shifted run the tests report on."""
    url = f"sqlite:///{tmp_path_factory.mktemp('reports') / 'governance.db'}"
    store, record = recorded_store(url, now=NOW)
    yield store, record
    store.dispose()


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    """The same runs with every radius and p_lower changed: what compliance reads is identical."""
    url = f"sqlite:///{tmp_path_factory.mktemp('control') / 'governance.db'}"
    store, record = recorded_store(url, now=NOW, perturb=True)
    yield store, record
    store.dispose()


class Chromium:
    """Headless Chromium: screenshots and the rendered DOM of a URL."""

    def __init__(self, binary: str):
        self.binary = binary

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        profile = tempfile.mkdtemp(prefix="certrisk-chromium-")
        try:
            return subprocess.run(
                [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    def screenshot(self, url: str, png: Path, *, height: int = 3000) -> Path:
        png.parent.mkdir(parents=True, exist_ok=True)
        out = self._run(f"--window-size=1280,{height}", f"--screenshot={png}", url)
        assert png.is_file(), f"chromium wrote no screenshot of {url}: {out.stderr[-2000:]}"
        return png

    def dom(self, url: str) -> str:
        out = self._run("--dump-dom", url)
        assert out.stdout.strip(), f"chromium returned no DOM for {url}: {out.stderr[-2000:]}"
        return out.stdout


@pytest.fixture(scope="session")
def chromium():
    return Chromium(_need("chromium", CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")))


@pytest.fixture(scope="session")
def pdftoppm():
    return _need("pdftoppm", shutil.which("pdftoppm"))


@pytest.fixture(scope="session")
def pdftotext():
    return _need("pdftotext", shutil.which("pdftotext"))


def assert_not_blank(png: Path) -> None:
    """The page shows something: many non-white pixels and real contrast."""
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    inked = float((pixels < 235).mean())
    assert inked > 0.03, f"{png} is nearly blank ({inked:.1%} non-white pixels)"
    assert pixels.std() > 20, f"{png} has no contrast (std {pixels.std():.1f})"
