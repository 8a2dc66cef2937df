"""prior-PICS settings on 3D volumes simulated from training (or held-out) scans: volume PSNR
and the κ the method used, one line of JSON per case and variant.

How stop 20 chose ``kappa_search`` and ``views: volume`` on training volumes before the held-out
gate (``benchmarks/RESULTS.md``, "Stop 20"). Each case is simulated as the volume suite
simulates (:func:`mrprior.evaluation_3d.scan_cases`: 3D coil maps, smooth 3D phase, correlated
noise with a noise scan, 2× readout oversampling, a raw ISMRMRD file) and reconstructed through
:func:`mrprior.pipeline.reconstruct` with the shipped settings plus each variant's::

    OMP_NUM_THREADS=1 python benchmarks/bench_volume_settings.py \\
        --cases pycortex-s1:caipi3x2,vreg-dixon-abdomen:poisson7 --shape 64x128x128 \\
        --variant '{"kappa_search": "never"}' --variant '{}' --variant '{"views": "planes"}'

Sources are names of ``mrprior data list`` (fetched with ``mrprior data fetch``); use training
sources for choices and the held-out ones only for the gate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from mrprior.evaluation import EvalVolume, eval_volume_array
from mrprior.evaluation_3d import VOLUME_SAMPLINGS, scan_cases, score_volume, volume_zyx
from mrprior.pipeline import load_recon_config, reconstruct


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", required=True, help="SOURCE:SAMPLING,... (samplings of the suite)")
    p.add_argument("--shape", default="64x128x128", help="ZxYxX")
    p.add_argument("--coils", type=int, default=12)
    p.add_argument("--snr", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prior", default="complex")
    p.add_argument("--variant", action="append", default=[], help="JSON prior-pics settings")
    p.add_argument("--work", default=None, help="folder for the raw files (default: temporary)")
    args = p.parse_args()
    shape = tuple(int(v) for v in args.shape.lower().split("x"))
    variants = [json.loads(v) for v in args.variant] or [{}]
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for spec in args.cases.split(","):
            source, sampling = spec.split(":")
            if sampling not in VOLUME_SAMPLINGS:
                raise SystemExit(f"unknown sampling {sampling!r}: {list(VOLUME_SAMPLINGS)}")
            ev = EvalVolume(source, "brain", "", args.coils)
            arr, spacing = eval_volume_array(ev)
            zyx = volume_zyx(arr, spacing)
            case = scan_cases(zyx, ev, source, shape, [sampling], Path(tmp), args.snr, args.seed)[0]
            for extra in variants:
                cfg = load_recon_config(
                    overrides={"method": "prior-pics", "device": "cpu", "seed": args.seed}
                )
                settings = {"prior": args.prior, "seed": args.seed, **extra}
                cfg = dataclasses.replace(cfg, settings=settings)
                t0 = time.perf_counter()
                series = reconstruct(case.kspace, cfg)
                seconds = time.perf_counter() - t0
                info = {k: v for k, v in series.info.items() if str(k).startswith("kappa")}
                row = {"case": spec, "shape": args.shape, "variant": extra, "seconds": seconds}
                row["psnr"] = score_volume(series.image, case.reference)["psnr"]
                print(json.dumps({**row, **info}), flush=True)
            case._kspace = None


if __name__ == "__main__":
    main()
