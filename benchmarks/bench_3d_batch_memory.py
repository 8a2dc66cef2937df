"""Memory and time of one batch of full-size (kz, ky) planes through a method: what the
pipeline adds per ``planes_per_batch`` batch on top of the volume-sized arrays.

:mod:`bench_3d_memory` measures a whole volume, where ESPIRiT usually sets the peak and a slow
method (prior-PICS on 2 CPU cores) takes hours; this runs one batch of ``--planes`` planes of
``--plane`` (kz × ky) with ``--coils`` coils (a phantom seen by smooth 3D coil maps, R = 2 × 2
with a 24 × 24 calibration box, noise) through the registered method and reports the resident
memory before the call and the peak during it (``VmHWM``, reset after building the inputs).

    nice -n 5 python benchmarks/bench_3d_batch_memory.py --method prior-pics

``--volume``: the ``--planes`` planes are a whole volume (``problem.volume``; the phantom is
``--planes`` readout positions wide), for methods that solve a volume at once (``l1``);
``--set KEY=VALUE`` sets a method setting (e.g. ``max_iterations=3``).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mrprior.cli.recon import parse_set
from mrprior.mr.fft import fftc
from mrprior.pipeline import load_recon_config, method_settings
from mrprior.recon.problem import ReconProblem, get_method

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test-data helpers live in tests/

from tests.io.raw3d import coil_maps_3d, lines_3d, phantom_volume  # noqa: E402


def _status_gib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _reset_peak() -> None:
    """Reset the process's peak resident set size to the current one (Linux)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="prior-pics")
    p.add_argument("--plane", type=int, nargs=2, default=(192, 256), metavar=("Z", "Y"))
    p.add_argument("--planes", type=int, default=16, help="planes in the batch")
    p.add_argument("--coils", type=int, default=32)
    p.add_argument(
        "--volume", action="store_true", help="the planes are a whole volume (problem.volume)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting")
    args = p.parse_args()
    nz, ny = args.plane
    b, c = args.planes, args.coils
    # the batch: the central readout positions of a 4b-wide phantom, or a whole volume
    nx = b if args.volume else 4 * b
    x0 = (nx - b) // 2
    vol = phantom_volume(nz, ny, nx)[:, :, x0 : x0 + b]
    maps = coil_maps_3d(c, nz, ny, nx)[..., x0 : x0 + b]
    img = np.moveaxis(vol, -1, 0)  # [B, z, y]
    csm = np.ascontiguousarray(np.moveaxis(maps, -1, 0))  # [B, C, z, y]
    lines, cal = lines_3d(nz, ny, (2, 2), (24, 24))
    mask = lines | cal
    k = fftc(csm * img[:, None], ndim=2) * mask
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)
    k = (k + 0.02 * noise * mask).astype(np.complex64)
    del noise
    problem = ReconProblem(
        torch.from_numpy(k),
        torch.from_numpy(mask),
        torch.from_numpy(csm),
        0.02 * np.sqrt(2),
        volume=torch.ones(b, dtype=torch.bool) if args.volume else None,
    )
    sets = {f"settings.{k}": v for k, v in parse_set(args.set).items()}  # YAML scalars
    cfg = load_recon_config(overrides={"method": args.method, "device": "cpu", **sets})
    _reset_peak()
    before = _status_gib("VmRSS")
    t0 = time.perf_counter()
    res = get_method(args.method)(problem, method_settings(cfg))
    result = {
        "method": args.method,
        "planes": b,
        "volume": args.volume,
        "settings": method_settings(cfg),
        "coils": c,
        "plane": [nz, ny],
        "batch_inputs_gib": round((k.nbytes + csm.nbytes) / 2**30, 3),
        "rss_before_call_gib": round(before, 2),
        "peak_during_call_gib": round(_status_gib("VmHWM"), 2),
        "seconds": round(time.perf_counter() - t0, 1),
        "image_finite": bool(torch.isfinite(res.image).all()),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
