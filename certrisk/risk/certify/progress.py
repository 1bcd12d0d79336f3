"""Progress of a long certification, logged at a bounded rate: share of forward passes done, rate, ETA."""

from __future__ import annotations

import logging
import time

import torch


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressLog:
    """A ``progress(done_rows, total_rows)`` callback that logs one line at most every
    ``min_seconds`` (10 s), and then only once another ``step`` (10%) of the rows is done or
    ``max_seconds`` (60 s) have passed: a shard of any length logs a bounded number of lines.

    log : a logging.Logger (the task's). what : the job's name in the line (e.g. "smoothing").
    device : on CUDA the device is synchronised before a line, so the rate counts finished rows.
    clock : seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        *,
        device: torch.device | str | None = None,
        min_seconds: float = 10.0,
        max_seconds: float = 60.0,
        step: float = 0.1,
        clock=time.monotonic,
    ):
        self.log = log
        self.what = what
        self.device = None if device is None else torch.device(device)
        self.min_seconds = float(min_seconds)
        self.max_seconds = float(max_seconds)
        self.step = float(step)
        self.clock = clock
        self.start = clock()
        self.last_time = self.start
        self.last_share = 0.0
        self.lines = 0

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        since = now - self.last_time
        if since < self.min_seconds or total <= 0:
            return
        share = min(1.0, done / total)
        if share - self.last_share < self.step and since < self.max_seconds:
            return
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            now = self.clock()
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else float("inf")
        self.log.info(
            "%s: %.0f%% of %d forward passes done (%d), %.0f rows/s, ETA %s",
            self.what,
            100 * share,
            total,
            done,
            rate,
            _duration(eta) if eta != float("inf") else "unknown",
        )
        self.last_time, self.last_share = now, share
        self.lines += 1
