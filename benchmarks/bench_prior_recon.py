"""Prior-regularized reconstruction: speed per slice, PSNR against the best-λ ℓ1, and the
solver-setting sweep used to choose the shipped defaults.

Modes (``python benchmarks/bench_prior_recon.py MODE --help``):

``speed``
    Seconds per 256×256×8-coil slice for prior-pics (HQS and FISTA), prior-nlinv and
    prior-sample, on the CPU (``--threads``, default 2) and on CUDA when available (also a
    batch of slices sharing coil maps). Without ``--prior`` an untrained network of the
    shipped architecture is timed (the cost does not depend on the weights).
``quality``
    PSNR/SSIM of the complex and magnitude priors against the best-λ ℓ1-wavelet (ours, and
    ``bart pics -l1``) on the held-out MNI152 slices: calls :func:`mrprior.evaluation.run_bench`.
``tune``
    Sweeps solver settings on a **validation** slice of the Colin27 volume
    (``/usr/share/mricron/templates/ch2better.nii.gz``; training anatomy, never a bench image)
    at Poisson-disc R≈8 and prints PSNR per setting. The chosen values go into
    ``mrprior/configs/prior_methods.yaml`` once, for every case.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mrprior.evaluation import BenchConfig, make_case, run_bench, summarize_gain
from mrprior.metrics import psnr, ssim
from mrprior.mr.sense import sense_operator
from mrprior.recon.pnp import pnp_hqs
from mrprior.recon.prior_methods import resolve_prior
from mrprior.recon.prior_pics import coil_support
from mrprior.recon.problem import get_method

logger = logging.getLogger("bench_prior_recon")

COLIN = "/usr/share/mricron/templates/ch2better.nii.gz"


def colin_slice(index: int = 150, axis: int = 2) -> np.ndarray:
    """A slice of the Colin27 volume (training anatomy: for tuning solver settings only)."""
    import nibabel as nib

    vol = np.asarray(nib.load(COLIN).dataobj, dtype=np.float32)
    return np.rot90(np.take(vol, index, axis=axis)).copy()


def _untrained_prior(device: torch.device, channels: int = 2):
    from mrprior.priors.network import NetworkPrior
    from mrprior.priors.unet import UNetConfig

    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=channels, channels=[32, 64, 128, 128], blocks_per_level=1)
    return NetworkPrior.from_config(cfg, sigma_min=0.003, sigma_max=1.2).to(device)


def _prior(ref: str | None, device: torch.device):
    if ref is None:
        logger.warning("no --prior: timing an untrained network of the shipped architecture")
        return _untrained_prior(device), "untrained (timing only)"
    return resolve_prior(ref, device), ref


def speed(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    methods = {
        "prior-pics (hqs)": ("prior-pics", {"solver": "hqs"}),
        "prior-pics (fista)": ("prior-pics", {"solver": "fista"}),
        "prior-nlinv": ("prior-nlinv", {}),
        f"prior-sample ({args.samples} samples, {args.sampler})": (
            "prior-sample",
            {"num_samples": args.samples, "sampler": args.sampler}
            | ({"levels": args.levels} if args.sampler == "langevin" else {}),
        ),
    }
    wanted = [m for m in methods if any(m.startswith(w) for w in args.methods)]
    print(f"| device | method | seconds / slice | PSNR (dB) |  prior: {args.prior or 'untrained'}")
    print("|---|---|---|---|")
    for dev in devices:
        prior, _ = _prior(args.prior, dev)
        case = make_case(args.image, "poisson8", args.size, device=dev)
        for label in wanted:
            name, extra = methods[label]
            problem = case.problem
            if name == "prior-nlinv":
                problem = type(problem)(
                    kspace=problem.kspace, mask=problem.mask, noise_std=problem.noise_std
                )
            settings = {"prior": prior, **extra}
            if dev.type == "cuda":  # warm-up: CUDA context, cuFFT plans, kernels
                get_method("prior-pics")(case.problem, {"prior": prior, "iterations": 2})
            t0 = time.perf_counter()
            res = get_method(name)(problem, settings)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            print(f"| {dev.type} | {label} | {dt:.2f} | {psnr(res.image, case.truth):.2f} |")
        if dev.type == "cuda":
            _batched_cuda(case, prior, args.batch)


def _batched_cuda(case, prior, batch: int) -> None:
    """Throughput of HQS on a batch of slices sharing coil maps (one GPU call per step)."""
    op = sense_operator(case.problem.csm, case.problem.mask)
    y = case.problem.kspace.expand(batch, *case.problem.kspace.shape).contiguous()
    sn = float(case.problem.noise_std) / math.sqrt(2)
    kw = {"noise_std": sn, "support": coil_support(case.problem.csm)}
    pnp_hqs(op, y, prior, max_iterations=2, **kw)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    pnp_hqs(op, y, prior, **kw)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(f"| cuda | prior-pics (hqs), batch of {batch} | {dt / batch:.3f} per slice | |")


def quality(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    methods = ["zerofill", "l1-ours", "l1-bart", "pics-complex"]
    if args.magnitude_prior:
        methods.append("pics-magnitude")
    if args.nlinv:
        methods.append("nlinv-complex")
    cfg = BenchConfig(
        suite="template",
        images=args.images or BenchConfig().images,
        samplings=args.samplings,
        methods=methods,
        size=args.size,
        prior=args.prior or "complex",
        magnitude_prior=args.magnitude_prior or "magnitude",
        device=args.device,
    )
    res = run_bench(cfg, args.out, progress=True)
    print((Path(args.out) / "results.md").read_text())
    for s in cfg.samplings:
        for m in ("pics-complex", "pics-magnitude", "nlinv-complex"):
            for base in ("l1-ours", "l1-bart"):
                g = summarize_gain(res.rows, m, base, s)
                if not math.isnan(g):
                    print(f"{s}: {m} − {base} = {g:+.2f} dB")
        g = summarize_gain(res.rows, "pics-magnitude", "pics-complex", s)
        if not math.isnan(g):
            print(f"{s}: magnitude − complex prior = {g:+.2f} dB")


def _grid(spec: list[str]) -> list[dict[str, float | str]]:
    """``["kappa=1,10", "iterations=20,30"]`` -> the Cartesian product as settings dicts."""
    keys, values = [], []
    for item in spec:
        k, v = item.split("=", 1)
        keys.append(k)
        vals: list[float | str] = []
        for x in v.split(","):
            try:
                vals.append(int(x) if x.isdigit() else float(x))
            except ValueError:
                vals.append(x)
        values.append(vals)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def tune(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device if args.device != "auto" else "cpu")
    prior, ref = _prior(args.prior, dev)
    case = make_case(colin_slice(args.slice), args.sampling, args.size, device=dev)
    print(
        f"tuning {args.method} on Colin27 slice {args.slice} ({args.sampling}, "
        f"R={case.acceleration:.1f}), prior {ref}"
    )
    if args.l1:
        best = max(
            (psnr(get_method("l1")(case.problem, {"lam": lam}).image, case.truth), lam)
            for lam in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
        )
        print(f"best-λ ℓ1 (ours): {best[0]:.2f} dB at λ={best[1]:g}")
    problem = case.problem
    if args.method == "prior-nlinv":
        problem = type(problem)(
            kspace=problem.kspace, mask=problem.mask, noise_std=problem.noise_std
        )
    for settings in _grid(args.grid):
        t0 = time.perf_counter()
        res = get_method(args.method)(problem, {"prior": prior, **settings})
        dt = time.perf_counter() - t0
        print(
            f"{settings}: {psnr(res.image, case.truth):.2f} dB, "
            f"SSIM {ssim(res.image, case.truth):.3f}, {dt:.1f} s",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prior", help="complex prior name / card path (default: see mode)")
    common.add_argument("--size", type=int, default=256)
    common.add_argument("--threads", type=int, default=2)
    common.add_argument("--device", default="auto")

    s = sub.add_parser("speed", parents=[common], help="seconds per slice")
    s.add_argument("--image", default="mni152_axial_100")
    s.add_argument("--methods", nargs="+", default=["prior-pics", "prior-nlinv", "prior-sample"])
    s.add_argument("--samples", type=int, default=4)
    s.add_argument("--levels", type=int, default=60, help="langevin sampler: noise levels")
    s.add_argument(
        "--sampler", choices=["hqs", "langevin"], default="hqs", help="prior-sample sampler"
    )
    s.add_argument("--batch", type=int, default=8, help="CUDA batch of slices")
    s.add_argument("--cpu-only", action="store_true")
    s.set_defaults(func=speed)

    q = sub.add_parser("quality", parents=[common], help="PSNR vs best-λ ℓ1 on held-out slices")
    q.add_argument("--magnitude-prior")
    q.add_argument("--images", nargs="+")
    q.add_argument("--samplings", nargs="+", default=["poisson8"])
    q.add_argument("--nlinv", action="store_true")
    q.add_argument("--out", default="bench_prior_out")
    q.set_defaults(func=quality)

    t = sub.add_parser("tune", parents=[common], help="settings sweep on a Colin27 slice")
    t.add_argument("--method", default="prior-pics")
    t.add_argument("--slice", type=int, default=150)
    t.add_argument("--sampling", default="poisson8")
    t.add_argument("--l1", action="store_true", help="also report the best-λ ℓ1 PSNR")
    t.add_argument("grid", nargs="*", help="KEY=V1,V2 ... (Cartesian product)")
    t.set_defaults(func=tune)

    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
