"""Calibration of ``prior-sample``'s uncertainty map (``HQS_UNCERTAINTY_SCALE`` in
:mod:`mrprior.recon.posterior`) on **training** scans only.

Every training volume below is simulated as the real suite simulates its held-out scans
(:func:`mrprior.evaluation.make_real_case`: 8–16 coils, correlated noise with a noise scan, 2×
readout oversampling, ESPIRiT maps), at every sampling of the bench, and reconstructed by
``prior-sample`` with its shipped settings but ``uncertainty_scale: 1`` (the raw std of the
mean's error). The errors of the mean in units of that std (:func:`mrprior.metrics.
standardized_errors`) are pooled over the cases; the printed factor is the one that makes
``mean ± 2·std`` cover the nominal 95.4 % of them. The held-out coverage with the shipped factor
is measured by ``benchmarks/bench_speed.py --sections sampler``.

    nice -n 5 .venv/bin/python benchmarks/calibrate_uncertainty.py [--size 256]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator

import numpy as np
import torch

from mrprior.evaluation import SAMPLINGS, Case, EvalVolume, make_real_case, volume_slices
from mrprior.metrics import psnr, standardized_errors
from mrprior.recon.posterior import HQS_UNCERTAINTY_SCALE
from mrprior.recon.problem import get_method

#: training sources (``role: train`` in mrprior/priors/sources.yaml): brain and non-brain
TRAINING = {
    "pycortex-s1": EvalVolume("pycortex-s1", "head", "T1", 12),
    "qtim-mrhead": EvalVolume("qtim-mrhead", "head", "T1", 8),
    "heudiconv-b0dwi": EvalVolume("heudiconv-b0dwi", "brain", "T2 EPI", 12),
    "vreg-dixon-abdomen": EvalVolume("vreg-dixon-abdomen", "abdomen", "T1 Dixon", 16),
    "mdreg-molli-kidney": EvalVolume("mdreg-molli-kidney", "abdomen", "MOLLI", 16),
}

#: nominal coverage of ±2σ for a Gaussian error
NOMINAL = math.erf(2 / math.sqrt(2))


def training_cases(
    sources: str, samplings: str, size: int, coils: int | None = None
) -> Iterator[tuple[str, str, Case]]:
    """``(source, sampling, case)`` for the middle slice of each training volume (comma-separated
    names of :data:`TRAINING`) at each sampling, simulated as the real suite simulates its
    held-out scans (``coils`` overrides the volume's channel count)."""
    for key in sources.split(","):
        vol = TRAINING[key]
        for _, img in volume_slices(vol, size):
            for sampling in samplings.split(","):
                yield (
                    key,
                    sampling,
                    make_real_case(key, img, sampling, coils or vol.coils, vol.anatomy),
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--sources", default=",".join(TRAINING))
    ap.add_argument("--samplings", default=",".join(SAMPLINGS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pooled = []
    print("| scan | sampling | PSNR prior-PICS | PSNR mean | raw ±2σ coverage [%] |")
    print("|---|---|---|---|---|")
    for key, sampling, case in training_cases(args.sources, args.samplings, args.size):
        pics = get_method("prior-pics")(case.problem, {})
        res = get_method("prior-sample")(case.problem, {"uncertainty_scale": 1.0})
        z = standardized_errors(res.image, res.extras["uncertainty"], case.truth)
        pooled.append(z)
        print(
            f"| {key} | {sampling} | {psnr(pics.image, case.truth):.2f} | "
            f"{psnr(res.image, case.truth):.2f} | {100 * np.mean(z <= 2):.1f} |",
            flush=True,
        )
    z = np.concatenate(pooled)
    factor = float(np.quantile(z, NOMINAL)) / 2
    print(f"\npooled raw coverage of ±2σ: {100 * np.mean(z <= 2):.1f} % over {z.size} pixels")
    print(f"factor for the nominal {100 * NOMINAL:.1f} %: {factor:.2f} "
          f"(shipped HQS_UNCERTAINTY_SCALE = {HQS_UNCERTAINTY_SCALE})")  # fmt: skip
    for k in (factor, HQS_UNCERTAINTY_SCALE):
        per_case = [100 * np.mean(zc <= 2 * k) for zc in pooled]
        print(f"with factor {k:.2f}: pooled {100 * np.mean(z <= 2 * k):.1f} %, per case "
              f"{min(per_case):.1f} … {max(per_case):.1f} %")  # fmt: skip


if __name__ == "__main__":
    main()
