"""Where prior-PICS spends its time: thread CPU time per ATen op on one real slice (issue 10).

Runs ``prior-pics`` (shipped settings) once on a held-out real 256² slice (simulated as the real
suite does, 8 coils) with **one** torch thread and times every ATen op with
``time.thread_time`` — CPU time of this thread only, so the figures hold on a shared, loaded
machine where wall times and the torch profiler's times do not (they count the time the
process waits for a core). The sum over ops against the whole run's thread CPU time gives the
Python / dispatch overhead.

Usage::

    .venv/bin/python benchmarks/profile_prior_pics.py [--volume tumor2-t1] [--sampling poisson8]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, markdown_table
from bench_speed import real_cases

from mrprior.metrics import psnr
from mrprior.recon.prior_methods import resolve_prior
from mrprior.recon.problem import get_method


class OpTimer(TorchDispatchMode):
    """Thread CPU seconds and call counts per ATen op (overload packet)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        t0 = time.thread_time()
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket)
        self.seconds[name] += time.thread_time() - t0
        self.calls[name] += 1
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", default="tumor2-t1", help="held-out real volume")
    ap.add_argument("--sampling", default="poisson8")
    ap.add_argument("--top", type=int, default=15, help="ops listed")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    (case,) = real_cases([args.volume], args.sampling, coils=8)
    resolve_prior("complex", torch.device("cpu"))  # loaded once, outside the timing
    run = get_method("prior-pics")
    run(case.problem, {"prior": "complex", "iterations": 2})  # warm-up (oneDNN primitives)
    t0 = time.thread_time()
    res = run(case.problem, {"prior": "complex"})
    plain = time.thread_time() - t0
    timer = OpTimer()
    with timer:
        run(case.problem, {"prior": "complex"})
    in_ops = sum(timer.seconds.values())
    print(
        f"machine: {machine_info()}; 1 torch thread; load {Path('/proc/loadavg').read_text()[:14]}"
    )
    print(f"\nprior-PICS on {case.image} ({args.sampling}, 8 coils): {plain:.2f} s thread CPU, "
          f"PSNR {psnr(res.image, case.truth):.2f} dB; in ATen ops {in_ops:.2f} s "
          f"({sum(timer.calls.values())} calls)\n")  # fmt: skip
    rows = [
        [name, f"{s:.3f}", f"{100 * s / in_ops:.1f}", str(timer.calls[name])]
        for name, s in timer.seconds.most_common(args.top)
    ]
    print(markdown_table(["op", "thread CPU [s]", "% of ops", "calls"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
