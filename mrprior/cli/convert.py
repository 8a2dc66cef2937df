"""``mrprior convert``: Siemens raw data (twix ``.dat``) → ISMRMRD raw data (HDF5).

The mapping (header from the protocol, acquisitions from the measurement data headers, flags,
geometry) is :mod:`mrprior.io.twix`'s; the output is what ``mrprior recon``, Gadgetron and every
ISMRMRD tool read.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mrprior.errors import ConfigError


def _run(args: argparse.Namespace) -> int:
    from mrprior.io.twix import convert_twix, is_twix

    src = Path(args.input)
    if not is_twix(src):
        raise ConfigError(f"{src}: expected a Siemens twix file (.dat)")
    out = Path(args.output)
    if out.is_dir():
        out = out / f"{src.stem}.h5"
    summary = convert_twix(src, out, measurement=args.measurement, overwrite=args.overwrite)
    if not args.quiet:
        print(summary.describe())
    return 0


def register(subparsers: Any) -> None:
    """Add the ``convert`` sub-command."""
    p = subparsers.add_parser(
        "convert",
        help="convert Siemens raw data (twix .dat) to an ISMRMRD raw data file",
        description=(
            "Convert one measurement of a Siemens twix file (VB, or VD/VE with several "
            "measurements) into an ISMRMRD raw data file: the XML header from the protocol "
            "(matrices, FOV, encoding limits, acceleration, coils, field strength, sequence "
            "parameters) and one acquisition per readout with its flags (noise, parallel "
            "calibration, reverse, phase correction, last in slice), counters, slice position "
            "and orientation. Readout oversampling is kept. Noise scans become noise "
            "acquisitions; FID navigators, VOP monitoring and sync data are not converted."
        ),
    )
    p.add_argument("input", metavar="SCAN.dat", help="Siemens twix raw data file")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="RAW.h5",
        help="output ISMRMRD raw data file (a directory: SCAN.h5 in it)",
    )
    p.add_argument(
        "--measurement",
        type=int,
        default=-1,
        metavar="N",
        help="measurement of a multi-raid file to convert, 0-based; -1 (default) is the last, "
        "the imaging scan (earlier ones are adjustment scans)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    p.set_defaults(func=_run)
