"""prior-PICS settings compared on **training** scans (how the shipped ladder was chosen).

Each variant is a set of ``prior-pics`` settings (``key=value`` pairs separated by commas,
variants by semicolons) run on the middle slice of each training volume, simulated as the real
suite simulates its held-out scans (:func:`mrprior.evaluation.make_real_case`); prints PSNR and
seconds per case and the mean PSNR per variant. Never run it on the held-out sources: the held-out
suite (``mrprior bench --suite real``) only confirms what was chosen here.

    nice -n 5 .venv/bin/python benchmarks/sweep_prior_ladder.py \\
        --variants "iterations=20,kappa=0.5;iterations=16,kappa=0.35"

With ``--volume-shape ZxYxX`` the training volumes are simulated as 3D acquisitions instead
(the volume suite's simulation and ky–kz samplings, :mod:`mrprior.evaluation_3d`) and
reconstructed through the pipeline; volume PSNR.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import torch
import yaml
from calibrate_uncertainty import TRAINING, training_cases

from mrprior.evaluation import eval_volume_array
from mrprior.evaluation_3d import (
    VOLUME_SAMPLINGS,
    VolumeCase,
    scan_cases,
    score_volume,
    volume_zyx,
)
from mrprior.metrics import psnr
from mrprior.pipeline import load_recon_config, reconstruct
from mrprior.recon.problem import get_method


def parse_variants(text: str) -> list[dict]:
    """``"a=1,b=x;a=2"`` -> ``[{"a": 1, "b": "x"}, {"a": 2}]`` (values parsed as YAML scalars)."""
    out = []
    for variant in text.split(";"):
        pairs = [p.split("=", 1) for p in variant.split(",") if p.strip()]
        out.append({k.strip(): yaml.safe_load(v) for k, v in pairs})
    return out


def training_volume_cases(sources: str, shape: str, work: str) -> Iterator[VolumeCase]:
    """The training volumes (comma-separated names of :data:`TRAINING`) at ``shape``
    (``ZxYxX``) with every ky–kz sampling of the volume suite (SNR 30, seed 0)."""
    zyx = [int(v) for v in shape.split("x")]
    for key in sources.split(","):
        ev = TRAINING[key]
        scan = volume_zyx(*eval_volume_array(ev))
        yield from scan_cases(scan, ev, key, zyx, list(VOLUME_SAMPLINGS), work, 30.0, 0)


def run_volumes(args: argparse.Namespace, variants: list[dict]) -> list[list[float]]:
    """Each variant on each training volume case through the pipeline: volume PSNRs."""
    cfg = load_recon_config(overrides={"method": "prior-pics", "device": "cpu"})
    scores: list[list[float]] = [[] for _ in variants]
    with tempfile.TemporaryDirectory(prefix="sweep-volumes-") as work:
        for case in training_volume_cases(args.sources, args.volume_shape, work):
            cells = []
            for i, settings in enumerate(variants):
                t0 = time.perf_counter()
                series = reconstruct(case.kspace, dataclasses.replace(cfg, settings=settings))
                p = score_volume(series.image, case.reference)["psnr"]
                scores[i].append(p)
                cells.append(f"{p:.2f} dB / {time.perf_counter() - t0:.1f} s")
            print(f"{case.name} {case.sampling}: " + " | ".join(cells), flush=True)
            case._kspace = None
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", required=True)
    ap.add_argument("--sources", default="pycortex-s1,qtim-mrhead")
    ap.add_argument("--samplings", default="lines5,poisson8")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--coils", type=int, default=12)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--volume-shape", default=None, help="ZxYxX: 3D cases of the volumes")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = parse_variants(args.variants)
    if args.volume_shape:
        report(variants, run_volumes(args, variants))
        return
    method = get_method("prior-pics")
    scores: list[list[float]] = [[] for _ in variants]
    for key, sampling, case in training_cases(args.sources, args.samplings, args.size, args.coils):
        cells = []
        for i, settings in enumerate(variants):
            t0 = time.perf_counter()
            p = psnr(method(case.problem, dict(settings)).image, case.truth)
            scores[i].append(p)
            cells.append(f"{p:.2f} dB / {time.perf_counter() - t0:.1f} s")
        print(f"{key} {sampling}: " + " | ".join(cells), flush=True)
    report(variants, scores)


def report(variants: list[dict], scores: list[list[float]]) -> None:
    for settings, s in zip(variants, scores, strict=True):
        print(f"{settings}: mean PSNR {np.mean(s):.2f} dB over {len(s)} cases")


if __name__ == "__main__":
    main()
