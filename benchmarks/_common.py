"""Shared helpers for the benchmark scripts: timing, machine description, markdown tables.

Usage from a script in ``benchmarks/``::

    from _common import Timing, machine_info, markdown_table, timeit

    t = timeit(lambda: work(x), repeat=5, warmup=1)
    print(markdown_table(["method", "best [s]"], [["ours", f"{t.best:.3f}"]]))
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Timing", "children_cpu_time", "machine_info", "markdown_table", "timeit"]


@dataclass(frozen=True)
class Timing:
    """Wall-clock and CPU times of repeated runs (seconds) and the last run's return value.

    CPU time (user + system, all threads) does not depend on other load on the machine, so it
    compares implementations fairly on a busy computer; wall time is what a user waits.
    """

    times: tuple[float, ...]
    result: Any = None
    cpu_times: tuple[float, ...] = ()

    @property
    def best(self) -> float:
        """Fastest run: the least disturbed by other load on the machine."""
        return min(self.times)

    @property
    def median(self) -> float:
        """Median run."""
        return statistics.median(self.times)

    @property
    def cpu_median(self) -> float:
        """Median CPU time per run (NaN when not measured)."""
        return statistics.median(self.cpu_times) if self.cpu_times else float("nan")

    def __str__(self) -> str:
        return (
            f"best {self.best:.4f} s, median {self.median:.4f} s, CPU {self.cpu_median:.4f} s "
            f"over {len(self.times)} runs"
        )


def children_cpu_time() -> float:
    """User + system CPU seconds of finished child processes (for timing subprocesses)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timeit(
    fn: Callable[[], Any],
    repeat: int = 5,
    warmup: int = 1,
    sync: Callable[[], Any] | None = None,
    cpu_clock: Callable[[], float] = time.process_time,
) -> Timing:
    """Time ``fn()`` ``repeat`` times after ``warmup`` untimed calls.

    Parameters
    ----------
    fn : the work, called with no arguments; its last return value is kept in ``result``.
    repeat : timed calls (>= 1).
    warmup : untimed calls first (plan caches, imports, GPU context).
    sync : called after each ``fn()`` inside the timed region, e.g.
        ``cupy.cuda.Device().synchronize`` or ``torch.cuda.synchronize`` for GPU work.
    cpu_clock : CPU-seconds counter read around each run: this process's
        (``time.process_time``, default) or :func:`children_cpu_time` for subprocess work.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1: {repeat=}")
    result = None
    for _ in range(warmup):
        result = fn()
        if sync is not None:
            sync()
    times, cpu = [], []
    for _ in range(repeat):
        c0 = cpu_clock()
        t0 = time.perf_counter()
        result = fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t0)
        cpu.append(cpu_clock() - c0)
    return Timing(tuple(times), result, tuple(cpu))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table; cells are converted with ``str``, columns padded to align."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    n = len(cells[0])
    if any(len(r) != n for r in cells):
        raise ValueError("every row needs as many cells as the header")
    width = [max(len(r[i]) for r in cells) for i in range(n)]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, width, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in width) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def machine_info() -> str:
    """One line: CPU model, core count, load average, BLAS env vars, python/numpy versions."""
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    blas = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_"))}
    return (
        f"{cpu}, {os.cpu_count()} cores, load {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, "
        f"python {platform.python_version()}, numpy {np.__version__}, BLAS env {blas or '-'}"
    )
