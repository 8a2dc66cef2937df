"""ESPIRiT coil-map benchmark: mrprior vs ``bart ecalib -m1`` vs SigPy ``EspiritCalib``.

Data: ``bart phantom -x 256 -s 8 -k`` (256² k-space, 8 coils). All three use a 24² calibration
region, a 6² kernel, the same null-space threshold (BART ``-t 0.001`` thresholds σ²/σ₀²; SigPy
thresholds σ/σ₀, so it gets ``√0.001``) and an eigenvalue crop of 0.8. Maps are compared with
BART's by the per-pixel phase-invariant coherence ``|<s, s_bart>| / (||s|| ||s_bart||)`` over the
pixels where both are defined.

BART's time is measured around the ``bart`` subprocess, so it includes process start-up and
reading/writing its ``.cfl`` files (a few ms here); ours and SigPy's are in-process. BART runs
twice: with its default OpenMP threads and with ``OMP_NUM_THREADS=1`` (faster on a busy machine);
the ratios are against the faster of the two. CPU time (user + system over all threads; for BART
of the child process) is printed too: it does not depend on other load on the machine.

Run::

    .venv/bin/python benchmarks/bench_espirit.py --repeat 5
    .venv/bin/python benchmarks/bench_espirit.py --size 128 --coils 8 --repeat 3
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timing, children_cpu_time, machine_info, markdown_table, timeit  # noqa: E402

from mrprior.backend import cupy_available  # noqa: E402
from mrprior.io.cfl import kspace_from_bart, readcfl, writecfl  # noqa: E402
from mrprior.mr.espirit import espirit_maps  # noqa: E402

CALIB, KERNEL, THRESH, CROP = 24, 6, 0.001, 0.8


def coherence(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel phase-invariant coherence of two map sets ``[C, ky, kx]``."""
    num = np.abs(np.sum(a.conj() * b, axis=0))
    den = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
    return num / np.maximum(den, 1e-30)


def compare(maps: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(mean coherence where both are defined, fraction of pixels whose support differs)."""
    sm = np.sum(np.abs(maps) ** 2, axis=0) > 0.5
    sr = np.sum(np.abs(ref) ** 2, axis=0) > 0.5
    both = sm & sr
    return float(coherence(maps, ref)[both].mean()), float((sm ^ sr).mean())


def bart_ecalib(workdir: Path, repeat: int, threads: int | None = None) -> Timing:
    """Time ``bart ecalib -m1`` (subprocess, cfl I/O included) on ``workdir/ph``.

    ``threads`` sets ``OMP_NUM_THREADS`` for BART (``None``: BART's default, all cores).
    """
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    args = ["bart", "ecalib", "-m1", "-t", str(THRESH), "-c", str(CROP)]
    args += ["-k", f"{KERNEL}:{KERNEL}:1", "-r", f"{CALIB}:{CALIB}:1", "ph", "sens"]

    def run() -> np.ndarray:
        subprocess.run(args, cwd=workdir, check=True, capture_output=True, env=env)
        return kspace_from_bart(readcfl(workdir / "sens"))

    return timeit(run, repeat=repeat, warmup=1, cpu_clock=children_cpu_time)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="matrix size (default 256)")
    ap.add_argument("--coils", type=int, default=8, help="number of coils (default 8)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per method (default 5)")
    ap.add_argument("--no-sigpy", action="store_true", help="skip SigPy")
    opts = ap.parse_args()
    if shutil.which("bart") is None:
        sys.exit("bart is not installed (Debian package 'bart')")

    print(f"machine: {machine_info()}")
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            ["bart", "phantom", "-x", str(opts.size), "-s", str(opts.coils), "-k", "ph"],
            cwd=work,
            check=True,
            capture_output=True,
        )
        k = kspace_from_bart(readcfl(work / "ph"))
        writecfl(work / "ph", readcfl(work / "ph"))
        print(f"data: bart phantom -x {opts.size} -s {opts.coils} -k -> {k.shape} {k.dtype}")

        tb_all = bart_ecalib(work, opts.repeat)
        tb_one = bart_ecalib(work, opts.repeat, threads=1)
        ref = tb_all.result
        results: list[tuple[str, Timing]] = [
            ("bart ecalib -m1", tb_all),
            ("bart ecalib -m1 (OMP_NUM_THREADS=1)", tb_one),
        ]
        # ratios against the faster BART configuration (best and median separately)
        bart_best = min(tb_all.best, tb_one.best)
        bart_median = min(tb_all.median, tb_one.median)

        def ours() -> np.ndarray:
            return espirit_maps(k, calib=CALIB, kernel=KERNEL, threshold=THRESH, crop=CROP)

        results.append(("mrprior espirit (numpy)", timeit(ours, repeat=opts.repeat)))

        if cupy_available():
            import cupy as cp

            kc = cp.asarray(k)
            sync = cp.cuda.Device().synchronize

            def ours_gpu() -> np.ndarray:
                return espirit_maps(kc, calib=CALIB, kernel=KERNEL, threshold=THRESH, crop=CROP)

            t = timeit(ours_gpu, repeat=opts.repeat, warmup=2, sync=sync)
            t = Timing(t.times, cp.asnumpy(t.result), t.cpu_times)
            results.append(("mrprior espirit (cupy)", t))

        if not opts.no_sigpy:
            try:
                from sigpy.mri.app import EspiritCalib
            except ImportError:
                print("sigpy not installed: skipped")
            else:

                def sig() -> np.ndarray:
                    app = EspiritCalib(
                        k,
                        calib_width=CALIB,
                        thresh=math.sqrt(THRESH),
                        kernel_width=KERNEL,
                        crop=CROP,
                        show_pbar=False,
                    )
                    return np.asarray(app.run())

                results.append(("sigpy EspiritCalib", timeit(sig, repeat=opts.repeat)))

    for name, t in results:
        maps = t.result
        coh, sup = compare(maps, ref)
        rows.append(
            [
                name,
                f"{t.best:.3f}",
                f"{t.median:.3f}",
                f"{t.best / bart_best:.2f}",
                f"{t.median / bart_median:.2f}",
                f"{t.cpu_median:.3f}",
                f"{coh:.4f}",
                f"{100 * sup:.2f}",
            ]
        )
    print()
    print(
        markdown_table(
            [
                "method",
                "best [s]",
                "median [s]",
                "best / BART",
                "median / BART",
                "CPU [s]",
                "coherence vs BART",
                "support differs [%]",
            ],
            rows,
        )
    )
    print(
        f"\n{opts.repeat} timed runs each after 1 warm-up; calib {CALIB}, kernel {KERNEL}, "
        f"threshold {THRESH} (σ²), crop {CROP}; {time.strftime('%Y-%m-%d %H:%M')}"
    )


if __name__ == "__main__":
    main()
