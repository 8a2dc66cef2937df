"""ℓ1-wavelet benchmark: mrprior ``l1_wavelet`` vs ``bart pics -l1 -r 0.01`` vs SigPy.

Case (as in ``tests/recon/test_l1_vs_bart.py``): ``bart phantom -x 256 -s 8 -k`` k-space plus
seeded complex Gaussian noise (σ = 0.002·max|k|), masked by ``bart poisson -e -C 24`` at R≈4
(``-y 1.8 -z 1.8``) and R≈8 (``-y 2.6 -z 2.6``); coil maps from ``bart ecalib -m1`` used by all
three; reference = noise-free fully sampled coil-combined image with those maps; PSNR from
:mod:`mrprior.metrics` (magnitude, least-squares scale fit, whole FOV).

All three run the same number of FISTA iterations (default 30 = BART's default ``-i``) with
λ = 0.01 in BART's units: ours applies BART's data scaling itself; SigPy gets
``lamda = 0.01 · s`` with ``s`` the same scale (SigPy solves in the data's units) and its default
``db4`` wavelet without random shifts. BART is timed around the subprocess (includes reading
and writing its .cfl files) with ``OMP_NUM_THREADS`` = 1 and = ``--threads``; ratios use the
faster. Ours runs with ``torch.set_num_threads`` = 1 and = ``--threads`` and on CUDA when present.
CPU time (user + system over all threads; BART's from the child process) does not depend on
other load on the machine, wall time does.

Run::

    .venv/bin/python benchmarks/bench_l1.py --repeat 3
    .venv/bin/python benchmarks/bench_l1.py --accel R4 --iterations 100 --no-sigpy
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timing, children_cpu_time, machine_info, markdown_table, timeit  # noqa: E402

from mrprior.io.cfl import (  # noqa: E402
    image_from_bart,
    kspace_from_bart,
    kspace_to_bart,
    run_bart,
    run_bart_detailed,
    writecfl,
)
from mrprior.metrics import psnr, ssim  # noqa: E402
from mrprior.mr.fft import ifftc  # noqa: E402
from mrprior.mr.sense import sense_operator  # noqa: E402
from mrprior.recon.fista import bart_scaling, l1_wavelet  # noqa: E402

ACCELS = {"R4": 1.8, "R8": 2.6}


def phantom_kspace(size: int = 256, coils: int = 8) -> np.ndarray:
    """``bart phantom -x size -s coils -k`` as ``[C, ky, kx]`` (analytic; ~15 s for 256² × 8)."""
    args = ["phantom", "-x", str(size), "-s", str(coils), "-k", "k"]
    return kspace_from_bart(run_bart(args, outputs=["k"], threads=1)["k"])


def build_case(name: str, kfull: np.ndarray) -> dict[str, np.ndarray]:
    """Noisy undersampled phantom k-space ``[C, ky, kx]``, mask, ecalib maps, reference image."""
    size = kfull.shape[-1]
    rng = np.random.default_rng(0)
    sigma = 0.002 * float(np.abs(kfull).max())
    noise = (rng.standard_normal(kfull.shape) + 1j * rng.standard_normal(kfull.shape)) * (
        sigma / np.sqrt(2)
    )
    a = str(ACCELS[name])
    args = ["poisson", "-Y", str(size), "-Z", str(size), "-y", a, "-z", a, "-C", "24", "-e"]
    m = run_bart([*args, "-s", "1", "m"], outputs=["m"], threads=1)["m"]
    mask = np.abs(m.reshape(m.shape[:3], order="F")[0]) > 0
    k = ((kfull + noise) * mask).astype(np.complex64)
    csm = kspace_from_bart(
        run_bart(
            ["ecalib", "-m1", "k", "s"], inputs={"k": kspace_to_bart(k)}, outputs=["s"], threads=1
        )["s"]
    )
    ref = (ifftc(torch.from_numpy(kfull)) * torch.from_numpy(csm).conj()).sum(0).numpy()
    return {"k": k, "mask": mask, "csm": csm, "ref": ref}


def bench_bart(case: dict, lam: float, iters: int, threads: int, repeat: int) -> tuple[Timing, str]:
    with tempfile.TemporaryDirectory(prefix="bench-l1-") as wd:
        writecfl(Path(wd) / "k", kspace_to_bart(case["k"]))
        writecfl(Path(wd) / "s", kspace_to_bart(case["csm"]))
        args = ["pics", "-l1", "-r", str(lam), "-i", str(iters), "k", "s", "x"]
        t = timeit(
            lambda: run_bart_detailed(args, outputs=["x"], workdir=wd, threads=threads),
            repeat=repeat,
            warmup=0,
            cpu_clock=children_cpu_time,
        )
    m = re.search(r"Total Time: ([0-9.]+)", t.result.stdout + t.result.stderr)
    return t, (m.group(1) if m else "-")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--accel", nargs="+", default=list(ACCELS), choices=list(ACCELS))
    p.add_argument("--iterations", type=int, default=30, help="FISTA iterations for all three")
    p.add_argument("--lam", type=float, default=0.01, help="λ in BART's units")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (BART OMP, torch)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-sigpy", action="store_true")
    args = p.parse_args(argv)

    print(f"machine: {machine_info()}")
    print(f"command: {' '.join(sys.argv)}\n")
    rows = []
    kfull = phantom_kspace()
    for name in args.accel:
        case = build_case(name, kfull)
        r = case["mask"].size / case["mask"].sum()
        y = torch.from_numpy(case["k"])
        mask_t = torch.from_numpy(case["mask"])
        scale = bart_scaling(y, mask_t)
        results: list[tuple[str, str, Timing, np.ndarray, str]] = []

        bart_runs = []
        for th in sorted({1, args.threads}):
            t, internal = bench_bart(case, args.lam, args.iterations, th, args.repeat)
            img = image_from_bart(t.result.outputs["x"])
            bart_runs.append((t, th))
            results.append((f"bart pics -l1 (OMP {th})", "cpu", t, img, internal))
        bart_best = min(t.best for t, _ in bart_runs)

        for th in sorted({1, args.threads}):
            torch.set_num_threads(th)
            A = sense_operator(torch.from_numpy(case["csm"]), mask_t)
            t = timeit(
                lambda A=A, y=y: l1_wavelet(A, y, args.lam, max_iterations=args.iterations, seed=0),
                repeat=args.repeat,
                warmup=1,
            )
            results.append((f"mrprior l1_wavelet ({th} thr)", "cpu", t, t.result.numpy(), "-"))
        torch.set_num_threads(args.threads)

        if torch.cuda.is_available():
            dev = torch.device("cuda")
            A = sense_operator(torch.from_numpy(case["csm"]).to(dev), mask_t.to(dev))
            yd = y.to(dev)
            t = timeit(
                lambda A=A, yd=yd: l1_wavelet(
                    A, yd, args.lam, max_iterations=args.iterations, seed=0
                ),
                repeat=args.repeat,
                warmup=1,
                sync=torch.cuda.synchronize,
            )
            results.append(("mrprior l1_wavelet", "cuda", t, t.result.cpu().numpy(), "-"))

        if not args.no_sigpy:
            try:
                import sigpy.mri.app as mr_app

                def run_sigpy(case: dict = case, scale: float = scale) -> np.ndarray:
                    app = mr_app.L1WaveletRecon(
                        case["k"],
                        case["csm"],
                        args.lam * scale,
                        weights=case["mask"].astype(np.float32),
                        max_iter=args.iterations,
                        show_pbar=False,
                    )
                    return np.asarray(app.run())

                t = timeit(run_sigpy, repeat=args.repeat, warmup=0)
                results.append(("sigpy L1WaveletRecon", "cpu", t, t.result, "-"))
            except ImportError as exc:  # pragma: no cover - optional dev dependency
                print(f"SigPy skipped: {exc}")

        for label, dev, t, img, internal in results:
            rows.append(
                [
                    name,
                    f"{r:.2f}",
                    label,
                    dev,
                    f"{t.best:.2f}",
                    f"{t.cpu_median:.2f}",
                    internal,
                    f"{t.best / bart_best:.2f}",
                    f"{psnr(img, case['ref']):.2f}",
                    f"{ssim(img, case['ref']):.4f}",
                ]
            )
    header = [
        "case", "R", "method", "device", "best wall [s]", "CPU [s]", "BART internal [s]",
        "× BART", "PSNR [dB]", "SSIM",
    ]  # fmt: skip
    print(f"{args.iterations} iterations, λ = {args.lam}, {args.repeat} runs each, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")  # fmt: skip
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
