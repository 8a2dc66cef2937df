"""``mrprior prepare``: build a 2D training dataset from magnitude MR images."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="build a training dataset from DICOM / NIfTI / PNG / TIFF / HDF5 images",
        description=(
            "Slice magnitude volumes, drop background slices, normalize each slice to max 1, "
            "pad to square and resize, split train/validation by subject, and write "
            "DATASET/slices.h5 + DATASET/manifest.yaml. Unreadable files are skipped and listed."
        ),
    )
    p.add_argument("sources", nargs="*", metavar="SRC", help="files or folders (recursed)")
    p.add_argument("-o", "--output", required=True, metavar="DATASET", help="output directory")
    p.add_argument(
        "--config", metavar="YAML", help="PrepareConfig YAML (sources with subjects/licences)"
    )
    p.add_argument("--size", type=int, help="output slice size (default 256)")
    p.add_argument("--axis", choices=["all", "0", "1", "2"], help="slicing axis (default all)")
    p.add_argument("--val-fraction", type=float, help="fraction of subjects held out (default 0.1)")
    p.add_argument("--val-subjects", nargs="+", metavar="SUBJECT", help="hold out these subjects")
    p.add_argument("--seed", type=int, help="seed of the random subject split")
    p.add_argument(
        "--dtype", choices=["uint16", "float32"], help="stored pixel type (default uint16)"
    )
    p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME",
        help="a registry source (`mrprior data list`), fetched if needed; repeatable",
    )
    p.add_argument(
        "--role",
        choices=["train", "eval"],
        help="add every registry source of this role (eval: evaluation datasets only)",
    )
    p.add_argument("--cache", metavar="DIR", help="cache of registry sources")
    p.add_argument("--subject", help="subject id for all SRC given on the command line")
    p.add_argument("--licence", help="licence recorded for the SRC given on the command line")
    p.add_argument("--h5-key", help="HDF5 dataset name (default reconstruction_rss)")
    p.add_argument(
        "--phase",
        choices=["none", "langevin"],
        default="none",
        help="'langevin': also sample complex images with a complex prior (writes images_complex)",
    )
    p.add_argument(
        "--phase-prior", default="complex", help="prior name or card for --phase langevin"
    )
    p.add_argument(
        "--draws", type=int, default=1, help="phase draws per slice for --phase langevin"
    )
    p.add_argument("--langevin-steps", type=int, default=3, help="Langevin steps per noise level")
    p.add_argument("--device", default="auto", help="torch device for --phase langevin")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mrprior.config import from_dict, load_yaml, to_dict
    from mrprior.errors import ConfigError
    from mrprior.priors.prepare import PrepareConfig, SourceSpec, prepare_dataset

    cfg = load_yaml(PrepareConfig, args.config) if args.config else PrepareConfig()
    data = to_dict(cfg)
    for key, val in (
        ("size", args.size),
        ("axis", args.axis),
        ("val_fraction", args.val_fraction),
        ("val_subjects", args.val_subjects),
        ("seed", args.seed),
        ("dtype", args.dtype),
        ("cache", args.cache),
    ):
        if val is not None:
            data[key] = val
    names = list(args.source)
    if args.role:
        from mrprior.priors.sources import sources

        names += [s.name for s in sources(role=args.role) if s.name not in names]
    for name in names:
        data["sources"].append(to_dict(SourceSpec(source=name)))
    for src in args.sources:
        data["sources"].append(
            to_dict(
                SourceSpec(path=src, subject=args.subject, licence=args.licence, h5_key=args.h5_key)
            )
        )
    cfg = from_dict(PrepareConfig, data)
    if not cfg.sources:
        raise ConfigError(
            "no sources: give SRC paths, --source/--role, or a --config with 'sources'"
        )
    parts = ["mrprior", "prepare", *args.sources, "-o", args.output]
    for flag, val in (
        ("--config", args.config),
        ("--size", args.size),
        ("--axis", args.axis),
        ("--val-fraction", args.val_fraction),
        ("--seed", args.seed),
        ("--dtype", args.dtype),
        ("--role", args.role),
        ("--cache", args.cache),
        ("--subject", args.subject),
        ("--licence", args.licence),
        ("--h5-key", args.h5_key),
    ):
        if val is not None:
            parts += [flag, str(val)]
    for name in args.source:
        parts += ["--source", name]
    if args.val_subjects:
        parts += ["--val-subjects", *args.val_subjects]
    if args.phase != "none":
        parts += ["--phase", args.phase, "--phase-prior", args.phase_prior]
        parts += ["--draws", str(args.draws), "--langevin-steps", str(args.langevin_steps)]
    command = " ".join(shlex.quote(a) for a in parts)
    manifest = prepare_dataset(cfg, args.output, progress=not args.no_progress, command=command)
    c = manifest["counts"]
    print(
        f"{args.output}: {c['total']} slices ({c['train']} train, {c['val']} val); "
        f"val subjects {manifest['val_subjects']}; skipped {len(manifest['skipped'])}"
    )
    if args.phase == "langevin":
        from mrprior.priors import load
        from mrprior.priors.langevin import add_langevin_phase

        prior = load(args.phase_prior, device=args.device)
        n = add_langevin_phase(
            Path(args.output),
            prior,
            draws=args.draws,
            steps_per_sigma=args.langevin_steps,
            seed=cfg.seed,
            progress=not args.no_progress,
        )
        print(f"{args.output}: wrote {n} complex images (Langevin phase, {args.draws} per slice)")
    return 0
