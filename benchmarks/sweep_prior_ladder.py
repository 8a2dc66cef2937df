"""prior-PICS settings compared on **training** scans (how the shipped ladder was chosen).

Each variant is a set of ``prior-pics`` settings (``key=value`` pairs separated by commas,
variants by semicolons) run on the middle slice of each training volume, simulated as the real
suite simulates its held-out scans (:func:`mrprior.evaluation.make_real_case`); prints PSNR and
seconds per case and the mean PSNR per variant. Never run it on the held-out sources: the held-out
suite (``mrprior bench --suite real``) only confirms what was chosen here.

    nice -n 5 .venv/bin/python benchmarks/sweep_prior_ladder.py \\
        --variants "iterations=20,kappa=0.5;iterations=16,kappa=0.35"
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import yaml
from calibrate_uncertainty import training_cases

from mrprior.metrics import psnr
from mrprior.recon.problem import get_method


def parse_variants(text: str) -> list[dict]:
    """``"a=1,b=x;a=2"`` -> ``[{"a": 1, "b": "x"}, {"a": 2}]`` (values parsed as YAML scalars)."""
    out = []
    for variant in text.split(";"):
        pairs = [p.split("=", 1) for p in variant.split(",") if p.strip()]
        out.append({k.strip(): yaml.safe_load(v) for k, v in pairs})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", required=True)
    ap.add_argument("--sources", default="pycortex-s1,qtim-mrhead")
    ap.add_argument("--samplings", default="lines5,poisson8")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--coils", type=int, default=12)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = parse_variants(args.variants)
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
    for settings, s in zip(variants, scores, strict=True):
        print(f"{settings}: mean PSNR {np.mean(s):.2f} dB over {len(s)} cases")


if __name__ == "__main__":
    main()
