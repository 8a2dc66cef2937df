"""``mrprior recon``: reconstruct raw ISMRMRD files into ISMRMRD image files (and PNG / NIfTI).

One input: ``-o`` is the output file. Several inputs: ``-o`` is a directory and each input
``NAME.h5`` becomes ``NAME_recon.h5`` in it (the naming of :mod:`mrprior.batch`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from mrprior.batch import ReconSummary, recon_one_file
from mrprior.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["OUTPUT_SUFFIX", "ReconSummary", "parse_set", "recon_one_file", "register"]

OUTPUT_SUFFIX = "_recon.h5"


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` → dict; values parsed as YAML scalars (``0.01``, ``true``, ...)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _run(args: argparse.Namespace) -> int:
    from mrprior.pipeline import load_recon_config

    overrides = parse_set(args.set)
    if args.method:
        overrides["method"] = args.method
    if args.device:
        overrides["device"] = args.device
    if args.dtype:
        overrides["output.dtype"] = args.dtype
    if args.extra:
        overrides["output.extra_series"] = args.extra
    cfg = load_recon_config(args.config, overrides)
    inputs = [Path(p) for p in args.inputs]
    out = Path(args.output)
    if len(inputs) > 1 or args.scheduler or args.workers:
        return _run_batch(args, cfg, inputs, out)
    src = inputs[0]
    dst = out / f"{src.stem}{OUTPUT_SUFFIX}" if out.is_dir() else out
    progress = (not args.quiet and sys.stderr.isatty()) or args.progress
    nifti = None
    if args.nifti:
        nifti = (
            Path(args.nifti) / f"{src.stem}.nii.gz"
            if Path(args.nifti).is_dir()
            else Path(args.nifti)
        )
    summary = recon_one_file(src, dst, cfg, png_dir=args.png, nifti_path=nifti, progress=progress)
    if not args.quiet:
        print(
            f"{src} -> {dst}: {summary.groups} {'volume' if summary.is_3d else 'slice'}(s), "
            f"{summary.images} image(s), "
            f"method {summary.method}, {summary.seconds:.2f} s"
        )
    return 0


def _run_batch(args: argparse.Namespace, cfg: Any, inputs: list[Path], out: Path) -> int:
    """Several inputs (or --scheduler / --workers): one Dask task per file, -o is a folder."""
    from mrprior.batch import PipelineRecon, run_batch

    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out}: with several inputs -o must be a directory")
    recon = PipelineRecon(cfg, png_dir=args.png, nifti_dir=args.nifti)
    report = run_batch(
        inputs,
        out,
        recon,
        scheduler=args.scheduler,
        n_workers=args.workers or 2,
        retries=args.retries,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    if not args.quiet:
        print(report.format_summary())
        print(f"report: {out / 'batch_report.json'}")
    return 0 if report.ok else 1


def register(subparsers: Any) -> None:
    """Add the ``recon`` sub-command."""
    p = subparsers.add_parser(
        "recon",
        help="reconstruct raw ISMRMRD files into ISMRMRD images",
        description=(
            "Reconstruct raw ISMRMRD HDF5 files (one image per slice/contrast/phase/repetition/"
            "set/average) into ISMRMRD image files. Defaults come from the bundled "
            "configs/recon.yaml; --config and --set override them."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="RAW.h5", help="raw ISMRMRD HDF5 file(s)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output ISMRMRD image file (a directory when several inputs are given)",
    )
    p.add_argument(
        "--method",
        help="reconstruction method: zerofill, sense, l1 or any registered method "
        "(default from the config: sense)",
    )
    p.add_argument(
        "--png",
        metavar="DIR",
        help="also write windowed PNGs to DIR (2D: one per image; 3D: one montage per volume)",
    )
    p.add_argument("--nifti", metavar="PATH", help="also write the magnitude series as NIfTI")
    p.add_argument("--config", metavar="YAML", help="recon config overriding the defaults")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set calib_size=32 --set settings.lam=0.01 "
        "(repeatable)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="compute device")
    p.add_argument("--dtype", choices=["float32", "uint16"], help="magnitude image data type")
    p.add_argument(
        "--extra",
        action="append",
        choices=["phase", "uncertainty"],
        help="also write this extra image series (repeatable)",
    )
    p.add_argument(
        "--progress", action="store_true", help="show the progress bar even if not a tty"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    batch = p.add_argument_group(
        "batch (several inputs, or --scheduler / --workers): one Dask task per file, -o is a "
        "folder, finished files are skipped on a rerun"
    )
    batch.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler, e.g. tcp://host:8786 (default: an embedded LocalCluster)",
    )
    batch.add_argument("--workers", type=int, metavar="N", help="LocalCluster workers (default 2)")
    batch.add_argument(
        "--retries", type=int, default=2, help="retries per file after transient errors (default 2)"
    )
    batch.add_argument("--overwrite", action="store_true", help="redo files already finished")
    p.set_defaults(func=_run)
