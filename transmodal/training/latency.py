"""Latency: warm-up, then the median of repeated timed runs (never a single timing)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def measure_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> dict:
    """Median / min / max wall time of ``fn()`` in milliseconds (CUDA synchronised around each run)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - start) * 1000.0)
    return {
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "repeats": repeats,
        "warmup": warmup,
    }
