"""Peak memory and time of one 3D volume streamed through the pipeline, as the node does it.

A synthetic multi-coil 3D acquisition is fed acquisition by acquisition into
:func:`mrprior.pipeline.acquisition_buffer` (readout 2× oversampled, ky × kz undersampled with a
calibration box, a noise scan), then :func:`mrprior.pipeline.reconstruct` and
:func:`mrprior.pipeline.images_from_series` run on the emitted volume. The object and the coil
sensitivities are separable in z and (y, x), so each line ``k_c(kz, ky, ·) = a_c(kz) B_c(ky, ·)``
is generated on the fly: the generator holds ``C × ny × 2nx`` samples, not the volume, and the
measured peak is the pipeline's.

Peak = the process's maximum resident set size (``getrusage``, the figure ``/usr/bin/time -v``
prints), also reported per phase.

    nice -n 5 python benchmarks/bench_3d_memory.py --shape 192 256 256 --coils 32 --method sense
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import ismrmrd
import numpy as np

from mrprior.mr.fft import fftc
from mrprior.pipeline import acquisition_buffer, images_from_series, load_recon_config, reconstruct

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test-data helpers live in tests/

from tests.io.raw3d import header_3d  # noqa: E402

logger = logging.getLogger("bench_3d_memory")


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def separable_lines(
    nz: int, ny: int, nx: int, coils: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``a [C, nz]`` and ``B [C, ny, 2 nx]`` with k-space ``a_c(kz) B_c(ky, kx)`` of a cylinder-
    like object (ellipse in y–x times a smooth window in z) seen by coils that are smooth in z
    and in (y, x); the readout is 2× oversampled (FOV doubled in x)."""
    z = np.linspace(-1, 1, nz)
    y, x = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    f = np.clip(1.2 - 1.5 * z**2, 0, 1) * np.exp(0.5j * z)
    g = ((y / 0.8) ** 2 + (x / 0.7) ** 2 <= 1) + 0.5 * ((y / 0.3) ** 2 + (x / 0.4) ** 2 <= 1)
    g = g * np.exp(1j * (0.4 * x + 0.2 * y))
    ring = 2 * np.pi * np.arange(coils) / coils
    hz = np.exp(-((z[None] - np.where(np.arange(coils) % 2, 0.6, -0.6)[:, None]) ** 2))
    hyx = np.exp(1j * ring[:, None, None]) / (
        0.5
        + (y - 1.5 * np.sin(ring)[:, None, None]) ** 2
        + (x - 1.5 * np.cos(ring)[:, None, None]) ** 2
    )
    a = fftc((hz * f).astype(np.complex64), ndim=1)
    img = (hyx * g).astype(np.complex64)
    img = np.pad(img, [(0, 0), (0, 0), (nx // 2, nx - nx // 2)])  # readout FOV doubled
    b = fftc(img, ndim=2).astype(np.complex64)
    return a.astype(np.complex64), b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=(192, 256, 256), metavar=("Z", "Y", "X"))
    p.add_argument("--coils", type=int, default=32)
    p.add_argument("--accel", type=int, nargs=2, default=(2, 2), metavar=("RY", "RZ"))
    p.add_argument("--calib", type=int, default=24)
    p.add_argument("--method", default="sense")
    p.add_argument("--planes-per-batch", type=int, default=16)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="log each phase and each plane batch to stderr (with timestamps)",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if args.verbose:
        logging.getLogger("mrprior.pipeline").setLevel(logging.DEBUG)
        logger.setLevel(logging.INFO)
    nz, ny, nx = args.shape
    c = args.coils
    ry, rz = args.accel
    overrides: dict = {
        "method": args.method,
        "device": "cpu",
        "planes_per_batch": args.planes_per_batch,
    }
    for item in args.set:
        k, _, v = item.partition("=")
        overrides[k] = float(v) if v.replace(".", "", 1).isdigit() else v
    cfg = load_recon_config(overrides=overrides)
    fov = (220.0, 220.0, 0.9 * nz)
    xml = header_3d(c, nz, ny, nx, fov, (ry, rz), 1)
    t0 = time.perf_counter()
    a, b = separable_lines(nz, ny, nx, c)
    rng = np.random.default_rng(0)
    sigma = 0.02 * float(np.abs(b).max() * np.abs(a).max()) / np.sqrt(nz * ny)
    buffer = acquisition_buffer(xml, cfg)
    noise = ismrmrd.Acquisition.from_array(
        (sigma * (rng.standard_normal((c, 4096)) + 1j * rng.standard_normal((c, 4096)))).astype(
            np.complex64
        )
    )
    noise.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    noise.sample_time_us = 5.0
    buffer.add(noise)
    cz, cy = nz // 2, ny // 2
    half = args.calib // 2
    rows = [
        (kz, ky)
        for kz in range(nz)
        for ky in range(ny)
        if (kz % rz == 0 and ky % ry == 0) or (abs(kz - cz) < half and abs(ky - cy) < half)
    ]
    volumes = []
    for i, (kz, ky) in enumerate(rows):
        line = a[:, kz, None] * b[:, ky, :]
        line += sigma * (rng.standard_normal(line.shape) + 1j * rng.standard_normal(line.shape))
        acq = ismrmrd.Acquisition.from_array(line.astype(np.complex64))
        acq.idx.kspace_encode_step_1, acq.idx.kspace_encode_step_2 = ky, kz
        acq.center_sample = nx
        acq.sample_time_us = 5.0
        acq.read_dir[:], acq.phase_dir[:], acq.slice_dir[:] = (1, 0, 0), (0, 1, 0), (0, 0, 1)
        if i == len(rows) - 1:
            acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
            acq.set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
        volumes += buffer.add(acq)
    t_buf = time.perf_counter()
    peak_buffer, rss_buffer = _peak_gb(), _rss_gb()
    logger.info("buffered %d lines in %.1f s: rss %.2f GiB, peak %.2f GiB", len(rows),
                t_buf - t0, rss_buffer, peak_buffer)  # fmt: skip
    (ks,) = volumes
    series = reconstruct(ks, cfg)
    t_rec = time.perf_counter()
    peak_recon = _peak_gb()
    logger.info("reconstructed in %.1f s: peak %.2f GiB", t_rec - t_buf, peak_recon)
    images = images_from_series(series, cfg)
    t_img = time.perf_counter()
    result = {
        "shape_zyx": [nz, ny, nx],
        "coils": c,
        "readout_oversampling": 2,
        "acceleration_ky_kz": [ry, rz],
        "acquired_lines": len(rows),
        "method": args.method,
        "planes_per_batch": args.planes_per_batch,
        "raw_volume_gib_encoded": c * nz * ny * 2 * nx * 8 / 2**30,
        "seconds_generate_and_buffer": round(t_buf - t0, 1),
        "seconds_reconstruct": round(t_rec - t_buf, 1),
        "seconds_images": round(t_img - t_rec, 1),
        **{k: round(v, 1) for k, v in series.info.items() if k.startswith("seconds_")},
        "planes": series.info["planes"],
        "planes_solved": series.info["planes_solved"],
        "images": len(images),
        "rss_after_buffering_gib": round(rss_buffer, 2),
        "peak_after_buffering_gib": round(peak_buffer, 2),
        "peak_after_reconstruct_gib": round(peak_recon, 2),
        "peak_gib": round(_peak_gb(), 2),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
