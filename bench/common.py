"""Shared helpers for the benchmarks: repeated timing with medians, peak memory, result rows."""
from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from typing import Callable, List, Tuple


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], repeat: int, setup: Callable[[], object] = lambda: None) -> Tuple[float, List[float]]:
    """Median wall time of `fn` over `repeat` runs, each after an untimed `setup`."""
    samples = []
    for _ in range(repeat):
        setup()
        samples.append(timed(fn))
    return statistics.median(samples), samples


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: dict) -> None:
    """Benchmarks run in their own process (a clean peak-memory reading); the result is the last stdout line."""
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
