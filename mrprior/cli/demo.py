"""``mrprior demo``: the main job on its built-in default (see :mod:`mrprior.demo`)."""

from __future__ import annotations

import argparse
from typing import Any


def _run(args: argparse.Namespace) -> int:
    from mrprior.config import load_yaml
    from mrprior.demo import DemoConfig, default_config_path, run_demo

    path = args.config or default_config_path(quick=args.quick)
    cfg = load_yaml(DemoConfig, path)
    result = run_demo(args.output, cfg, progress=not args.quiet)
    print(result.table())
    print()
    print(f"raw data : {result.raw_path}")
    print(f"images   : {result.images_path}")
    print(f"figure   : {result.figure_path}")
    print(f"table    : {result.table_path}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="simulate a held-out scan, stream it through the gadget, compare ℓ1 and the prior",
        description=(
            "Run the whole chain on built-in data, with no network: a bundled held-out slice is "
            "simulated as an undersampled 8-coil raw ISMRMRD file, streamed through the mrprior "
            "gadget (launched as Gadgetron does) over loopback, reconstructed zero-filled, with "
            "ℓ1-wavelet and with the shipped complex prior, and compared to the truth."
        ),
    )
    p.add_argument("-o", "--output", default="mrprior-demo", help="output folder (mrprior-demo)")
    p.add_argument("--config", help="demo YAML (default: the bundled mrprior/configs/demo.yaml)")
    p.add_argument("--quick", action="store_true", help="reduced size (what CI runs)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
