"""ℓ1-wavelet on real scans: our ``l1`` vs ``bart pics -l1`` over a λ grid, and the calibration
of the automatic λ (:mod:`mrprior.recon.l1_lambda`).

Runs on **training** scans only (``pycortex-s1``, ``qtim-mrhead``; never the held-out
evaluation sources): one slice per volume (index ``0.55 ×`` the last axis of the NIfTI file's
voxel array as stored: coronal for S1, sagittal for MRHead), 256²,
synthetic phase, simulated as a multi-coil acquisition exactly as the real bench suite does
(:mod:`mrprior.acquisition`). For every sampling of the bench it prints, per λ, the PSNR of ours
and of BART (``-i 30``, BART's default), then per case the best λ of each, ours − BART at their
best λ, and ``λ_best / λ₁`` with ``λ₁ = σ / (s √R)`` the rule's value at ``κ = 1``: the rule's
``κ`` is the geometric mean of those ratios over the cases.

    python benchmarks/bench_l1_lambda.py [--sources pycortex-s1,qtim-mrhead] [--samplings ...]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from mrprior.acquisition import AcquisitionSpec, reconstruction_problem, simulate_acquisition
from mrprior.backend import to_numpy
from mrprior.evaluation import SAMPLINGS, complex_image, real_slice
from mrprior.io.cfl import image_from_bart, kspace_to_bart, run_bart
from mrprior.metrics import psnr
from mrprior.priors.sources import fetch_source
from mrprior.recon.fista import bart_scaling
from mrprior.recon.l1_lambda import KAPPA, auto_lambda
from mrprior.recon.problem import get_method

COILS = {"pycortex-s1": 12, "qtim-mrhead": 8}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", default="pycortex-s1,qtim-mrhead")
    ap.add_argument("--samplings", default="poisson8,lines5,regular4,uniform3x2")
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    lams = [10**e for e in np.arange(-2.75, -1.4, 0.25)]
    ratios, gaps, auto_loss = [], [], []
    for source in args.sources.split(","):
        import nibabel as nib

        (path,) = [f for f in fetch_source(source) if f.name.endswith(".nii.gz")]
        arr = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        img = complex_image(
            real_slice(arr[:, :, int(arr.shape[2] * 0.55)], args.size), "synthetic", 0
        )
        for samp in args.samplings.split(","):
            spec = SAMPLINGS[samp]
            acq = simulate_acquisition(
                img,
                spec.make((args.size, args.size), 0),
                AcquisitionSpec(coils=COILS.get(source, 12)),
                seed=0,
            )
            pr = reconstruction_problem(acq, spec.calib)
            s = bart_scaling(pr.kspace, pr.mask)
            k, cs = kspace_to_bart(to_numpy(pr.kspace)), kspace_to_bart(to_numpy(pr.csm))
            ours, bart = {}, {}
            for lam in lams:
                ours[lam] = psnr(get_method("l1")(pr, {"lam": lam}).image, acq.reference)
                out = run_bart(
                    ["pics", "-S", "-l1", "-r", f"{lam:g}", "k", "s", "x"],
                    inputs={"k": k, "s": cs},
                    outputs=["x"],
                )
                bart[lam] = psnr(image_from_bart(out["x"]), acq.reference)
                print(f"{source} {samp} λ={lam:.4g}: ours {ours[lam]:.2f}  bart {bart[lam]:.2f}")
            auto = get_method("l1")(pr, {"lam": "auto"})
            p_auto = psnr(auto.image, acq.reference)
            bo, bb = max(ours, key=ours.get), max(bart, key=bart.get)
            base = auto_lambda(pr, s, kappa=1.0)
            ratios.append(bo / base)
            gaps.append(ours[bo] - bart[bb])
            auto_loss.append(p_auto - bart[bb])
            print(
                f"{source} {samp} R={acq.acceleration:.2f}: best λ ours {bo:.4g} "
                f"({ours[bo]:.2f} dB), bart {bb:.4g} ({bart[bb]:.2f} dB), ours − bart "
                f"{ours[bo] - bart[bb]:+.2f} dB; λ_best/λ₁ {bo / base:.2f}; auto λ "
                f"{auto.info['lam_used']:.4g}: {p_auto:.2f} dB ({p_auto - bart[bb]:+.2f} vs bart)"
            )
    kappa = math.exp(float(np.mean(np.log(ratios))))
    print(f"κ fitted (geometric mean of λ_best/λ₁): {kappa:.2f}; shipped KAPPA = {KAPPA}")
    print(f"ours − bart at best λ: {min(gaps):+.2f} .. {max(gaps):+.2f} dB")
    print(f"auto λ − bart best λ: {min(auto_loss):+.2f} .. {max(auto_loss):+.2f} dB")


if __name__ == "__main__":
    main()
