"""Shared helpers for the benchmark scripts: interleaved timing and machine description."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU model name (from /proc/cpuinfo), the thread count torch uses, its vector capability and native bf16."""
    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from crackloc.tensors import cpu_capability

    return (f"{name}, {os.cpu_count()} logical cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{cpu_capability()}")


def interleaved(fns: dict[str, Callable[[], None]], *, rounds: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin (A B C A B C …) so drift hits all."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def table(rows: list[list[str]], header: list[str]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


REPO = Path(__file__).resolve().parents[1]


def shown(path: str | Path) -> str:
    """`path` relative to the repository (`../shared/...` beside it): committed results hold no absolute paths."""
    return os.path.relpath(Path(path).resolve(), REPO)
