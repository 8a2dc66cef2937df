"""ℓ1-wavelet on training scans: the best λ of a sweep vs the automatic λ of ``l1``
(:mod:`mrprior.recon.l1_lambda`): the k-space cross-validation (``lam: auto``) and the noise
rule (``lam: noise``), and the calibration of their constants.

Runs on **training** scans only (``role: train`` sources, never the held-out evaluation
sources): one slice per volume (index ``0.55 ×`` the third axis of the voxel array as stored;
the first frame of any further axis), 256², synthetic phase, simulated as a multi-coil
acquisition exactly as the real bench suite does (:mod:`mrprior.acquisition`). For every
sampling of the bench it prints the PSNR of ours over a λ grid (and of ``bart pics -l1`` with
``--bart``), the best λ, the noise rule's and the cross-validation's λ and their loss against
the best; at the end, the constants fitted from these cases: ``κ`` of the noise rule (geometric
mean of ``λ_best / λ₁``, ``λ₁ = σ / (s √R)``) and the correction of the cross-validated λ
(geometric mean of ``λ_best / λ_cv``).

    python benchmarks/bench_l1_lambda.py [--sources ...] [--samplings ...] [--bart]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from mrprior.acquisition import AcquisitionSpec, reconstruction_problem, simulate_acquisition
from mrprior.backend import to_numpy
from mrprior.evaluation import SAMPLINGS, complex_image, real_slice
from mrprior.io.cfl import image_from_bart, kspace_to_bart, run_bart
from mrprior.metrics import psnr
from mrprior.priors.sources import load_registry, source_volumes
from mrprior.recon.fista import bart_scaling
from mrprior.recon.l1_lambda import CV_CORRECTION, KAPPA, auto_lambda
from mrprior.recon.problem import get_method

SOURCES = "pycortex-s1,qtim-mrhead,mdreg-molli-kidney,vreg-dixon-abdomen,pydicom-data-liver"
COILS = {"pycortex-s1": 12, "qtim-mrhead": 8}


def training_slice(source: str) -> np.ndarray:
    """The slice of a training source this benchmark uses (module docstring)."""
    if load_registry()[source].role != "train":
        raise SystemExit(f"{source} is not a training source")
    arr = np.asarray(source_volumes(source)[0][0], dtype=np.float32)
    while arr.ndim > 3:
        arr = arr[..., 0]
    return arr[:, :, min(int(arr.shape[2] * 0.55), arr.shape[2] - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", default=SOURCES)
    ap.add_argument("--samplings", default="poisson8,lines5,regular4,uniform3x2")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--bart", action="store_true", help="also sweep bart pics -l1")
    args = ap.parse_args()
    lams = [10**e for e in np.arange(-3.5, -0.4, 0.25)]
    fn = get_method("l1")
    rows = []
    curves: list[tuple[dict[float, float], float, float]] = []
    for source in args.sources.split(","):
        img = complex_image(real_slice(training_slice(source), args.size), "synthetic", 0)
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
            ours = {lam: psnr(fn(pr, {"lam": lam}).image, acq.reference) for lam in lams}
            line = " ".join(f"{v:.2f}" for v in ours.values())
            print(f"{source} {samp} ours over λ grid: {line}", flush=True)
            if args.bart:
                k, cs = kspace_to_bart(to_numpy(pr.kspace)), kspace_to_bart(to_numpy(pr.csm))
                bart = {}
                for lam in lams:
                    out = run_bart(
                        ["pics", "-S", "-l1", "-r", f"{lam:g}", "k", "s", "x"],
                        inputs={"k": k, "s": cs},
                        outputs=["x"],
                    )
                    bart[lam] = psnr(image_from_bart(out["x"]), acq.reference)
                line = " ".join(f"{v:.2f}" for v in bart.values())
                print(f"{source} {samp} bart over λ grid: {line}", flush=True)
            bo = max(ours, key=ours.get)
            res = {}
            for rule in ("noise", "auto"):
                t0 = time.perf_counter()
                r = fn(pr, {"lam": rule})
                res[rule] = (r.info["lam_used"], psnr(r.image, acq.reference))
                res[rule + "_s"] = time.perf_counter() - t0
                res[rule + "_info"] = r.info
            lam_cv = res["auto_info"]["lam_cv"] / s
            base = auto_lambda(pr, s, kappa=1.0)
            rows.append(
                (bo / base, bo / lam_cv, ours[bo] - res["noise"][1], ours[bo] - res["auto"][1])
            )
            curves.append((ours, base, lam_cv))
            print(
                f"{source} {samp} R={acq.acceleration:.2f}: best λ {bo:.4g} ({ours[bo]:.2f} dB); "
                f"noise rule λ {res['noise'][0]:.4g} {res['noise'][1]:.2f} dB "
                f"({res['noise'][1] - ours[bo]:+.2f}); cv λ {res['auto'][0]:.4g} "
                f"{res['auto'][1]:.2f} dB ({res['auto'][1] - ours[bo]:+.2f}); "
                f"λ_best/λ₁ {bo / base:.2f}, λ_best/λ_cv {bo / lam_cv:.2f}; seconds: noise "
                f"{res['noise_s']:.1f}, cv {res['auto_s']:.1f} "
                f"({res['auto_info']['cv_reconstructions']} λ)",
                flush=True,
            )
    r = np.array(rows)
    kappa, corr = (math.exp(float(np.mean(np.log(r[:, j])))) for j in (0, 1))
    print(f"κ fitted (geometric mean of λ_best/λ₁): {kappa:.2f}; shipped KAPPA = {KAPPA}")
    print(f"cv correction fitted: {corr:.2f}; shipped CV_CORRECTION = {CV_CORRECTION}")
    # the constants that minimize the mean PSNR loss against the best grid λ (the PSNR at
    # c·λ interpolated in log λ over the grid)
    factors = [10**e for e in np.arange(-1.0, 0.51, 0.05)]
    for j, name in ((1, "κ"), (2, "cv correction")):
        mean_loss = []
        for c in factors:
            loss = []
            for ours, base, lam_cv in curves:
                x, y = np.log(list(ours)), np.array(list(ours.values()))
                at = c * (base if j == 1 else lam_cv)
                loss.append(y.max() - float(np.interp(np.log(at), x, y)))
            mean_loss.append((float(np.mean(loss)), float(np.max(loss)), c))
        m, mx, c = min(mean_loss)
        print(f"{name} of least mean loss: {c:.3g} (mean {m:.2f} dB, max {mx:.2f} dB)")
    print(f"best − noise rule: mean {r[:, 2].mean():.2f}, max {r[:, 2].max():.2f} dB")
    print(f"best − cross-validation: mean {r[:, 3].mean():.2f}, max {r[:, 3].max():.2f} dB")


if __name__ == "__main__":
    main()
