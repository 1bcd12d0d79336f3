"""The packing engine: no padding waste at small n, certificates independent of the shard, and
progress reported at a bounded rate."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch
from torch import nn

from certrisk.risk.certify import derive_seeds, smooth_certify
from certrisk.risk.certify.packing import slice_plan, slice_sizes
from certrisk.risk.certify.progress import ProgressLog
from tests.risk.certify.conftest import SIGMA


@pytest.mark.parametrize("forward_rows", [256, 1024, 4096, 262144, 100, 7])
def test_slice_plan_covers_the_rows_with_three_sizes_and_little_waste(forward_rows):
    sizes = slice_sizes(forward_rows)
    assert len(sizes) <= 3 and sizes[0] == forward_rows
    for rows in (1, 5, forward_rows - 1, forward_rows, forward_rows + 1, 3 * forward_rows + 17, 563_200):
        plan = slice_plan(rows, forward_rows)
        assert set(plan) <= set(sizes)
        assert 0 <= sum(plan) - rows < sizes[-1]


def test_forwarded_rows_stay_within_a_few_percent_of_the_real_rows_at_small_n():
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = np.random.default_rng(0).normal(size=(512, 4)).astype(np.float32)
    cert = smooth_certify(model, x, sigma=0.5, n0=100, n=1000, batch_size=4096, seed=1)
    real = 512 * 1100
    assert cert.extra["rows_real"] == real
    assert real <= cert.extra["rows_forwarded"] <= 1.03 * real
    # a single short job pads less than a sixteenth of a forward slice
    one = smooth_certify(model, x[:1], sigma=0.5, n0=10, n=90, batch_size=4096, seed=1)
    assert one.extra["rows_forwarded"] - 100 < 4096 // 16


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_samples_certificate_does_not_depend_on_its_shard(trained_cnn, digits, precision):
    x = digits[0][:12]
    ids = [f"s{i}" for i in range(len(x))]
    seeds = derive_seeds("run/1", ids, "smoothing")
    kw = {"sigma": SIGMA, "n0": 100, "n": 700, "batch_size": 512, "precision": precision}
    whole = smooth_certify(trained_cnn, x, seed=seeds, **kw)
    # sample 7 alone, in a shard of 3, and in a reordered shard: other rows share its forward passes
    alone = smooth_certify(trained_cnn, x[7:8], seed=seeds[7:8], **kw)
    shard = smooth_certify(trained_cnn, x[6:9], seed=seeds[6:9], **kw)
    order = np.array([10, 7, 2, 9, 5])
    mixed = smooth_certify(trained_cnn, x[order], seed=seeds[order], **kw)
    for cert, row in ((alone, 0), (shard, 1), (mixed, 1)):
        assert cert.prediction[row] == whole.prediction[7]
        assert cert.p_lower[row] == whole.p_lower[7]
        assert cert.radius[row] == whole.radius[7]
    np.testing.assert_array_equal(mixed.p_lower, whole.p_lower[order])


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_lines_are_bounded_and_say_share_rate_and_eta(caplog):
    clock = _Clock()
    log = logging.getLogger("test.progress")
    progress = ProgressLog(log, "shard 0 smoothing", clock=clock)
    total = 1_000_000
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for step in range(1, 1001):  # 1000 chunks, one every 0.5 s: 500 s in all
            clock.now = 0.5 * step
            progress(step * 1000, total)
    lines = [r.getMessage() for r in caplog.records]
    # at least 10 s apart, and a line only per 10% done or per 60 s: at most 10 + 500 / 60 lines
    assert 5 <= len(lines) <= 12
    assert (
        lines[0] == "shard 0 smoothing: 10% of 1000000 forward passes done (100000), 2000 rows/s, ETA 7m30s"
    )
    assert "90%" in lines[-1] and "ETA 48s" in lines[-1]


def test_progress_is_called_with_real_rows_up_to_the_total(trained_cnn, digits):
    seen = []
    smooth_certify(
        trained_cnn,
        digits[0][:3],
        sigma=SIGMA,
        n0=100,
        n=2000,
        batch_size=256,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert len(seen) >= 2 and seen[-1] == (3 * 2100, 3 * 2100)
    assert all(a[0] < b[0] for a, b in itertools.pairwise(seen))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_small_jobs_do_not_pad_to_a_whole_forward_slice(trained_cnn, digits):
    x = torch.as_tensor(digits[0][:512], device="cuda")
    cert = smooth_certify(trained_cnn.to("cuda"), x, sigma=SIGMA, n0=100, n=1000, batch_size=262144)
    assert cert.extra["rows_forwarded"] <= 1.03 * cert.extra["rows_real"]
