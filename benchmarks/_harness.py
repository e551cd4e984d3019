"""Shared benchmark harness: timing with percentiles, and long-format CSV rows (Liger's schema).

Every benchmark runs the stock PyTorch baseline in the same process and reports ratios, because the machines
here are noisy. Rows go to ``benchmarks/results/<area>.csv``.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).parent / "results"
FIELDS = ["op", "provider", "mode", "metric", "unit", "x_name", "x_value", "p20", "p50", "p80",
          "config", "device", "torch", "leanformer", "timestamp"]


def keep_freed_memory_mapped() -> bool:
    """glibc only: stop malloc from unmapping freed blocks and trimming the heap (``mallopt``), so that the
    next forward's large activations reuse mapped pages instead of page-faulting them in again. Applies to
    every model in the process alike (baselines too). The same as starting Python with
    ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647``. Returns False where it does not apply."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        # 32 MiB is glibc's ceiling for the mmap threshold on 64-bit; setting it also freezes glibc's dynamic one
        int_max = (1 << 31) - 1
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, int_max))
    except (OSError, AttributeError):
        return False


def time_fn(fn: Callable[[], object], *, warmup: int = 2, reps: int = 7) -> tuple[float, float, float]:
    """Wall-clock seconds of ``fn()``: (p20, p50, p80) over ``reps`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return q[1], statistics.median(times), q[7]


class Rows:
    """Collects benchmark rows and writes them as long-format CSV."""

    def __init__(self, area: str):
        # checked here, before a benchmark runs, not when its results are written at the end
        if not area or Path(area).name != area or area.endswith(".csv"):
            raise ValueError(f"results name {area!r}: give a file name for benchmarks/results/, without a directory "
                             "or .csv (e.g. quant_t2)")
        self.area = area
        self.rows: list[dict] = []

    def add(self, op: str, provider: str, metric: str, unit: str, value, *, mode: str = "full",
            x_name: str = "", x_value="", p20=None, p80=None, config: dict | None = None) -> None:
        import leanformer

        self.rows.append({
            "op": op, "provider": provider, "mode": mode, "metric": metric, "unit": unit,
            "x_name": x_name, "x_value": x_value,
            "p20": value if p20 is None else p20, "p50": value, "p80": value if p80 is None else p80,
            "config": json.dumps(config or {}, sort_keys=True),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "leanformer": leanformer.__version__,
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })

    def write(self, name: str | None = None) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{name or self.area}.csv"
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        return path
