"""3D benchmark: mrprior's ℓ1 and prior-PICS vs ``bart ecalib`` + ``bart pics -l1`` on one volume.

Data: a held-out REAL 3D T1 volume (never used for training; default the 3D Slicer sample
``MRBrainTumor2`` that ``mrprior data fetch qtim-mrbraintumor2`` stores, or ``--volume`` any
NIfTI/NRRD file), resampled to ``--shape`` (partitions z × phase y × readout x; default 96 × 128 ×
128, axial slab, readout L–R) and normalized to ``max = 1``. It is simulated as an 8-coil 3D
acquisition (:func:`mrprior.mr.simulate.simulate_kspace`: 3D coil maps, smooth 3D phase,
correlated coil noise with a noise scan, 2× readout oversampling) and written as an ISMRMRD raw
file per sampling pattern in the ky–kz plane (elliptical variable-density Poisson-disc and 2D
CAIPI 3×2 with shift 1, both with a ``--calib`` (24) square calibration box).

Methods, all on the same raw file:

* ours (``mrprior.pipeline.reconstruct``, the path of the CLI/gadget/server): prewhitening,
  oversampling removal, 3D ESPIRiT maps, readout iFFT, one 2D (ky, kz) problem per readout
  position; ``l1`` (2D wavelets per plane, λ swept, best λ reported) and ``prior-pics``
  (shipped complex prior, shipped settings). Each runs in a fresh child process so that its
  peak memory (max RSS) is its own; the time is ``reconstruct()`` (coil maps + planes).
* BART on the same preprocessed k-space (``mrprior.pipeline.preprocess``: the same whitening
  and oversampling removal, written as ``[x, y, z, C]``): ``bart ecalib -m1`` (3D calibration,
  24³ box), then ``bart pics -S -l1 -r λ -i 100`` on the 3D k-space (3D wavelets), λ swept. Time
  = ecalib + the best λ's pics; peak memory = max RSS of those processes (``/usr/bin/time``).

Scoring: the reference is the simulated image with the pipeline's coil-combination convention
(DESIGN.md): with the whitening matrix ``W`` of the noise scan and unit-norm maps of the whitened
coils, a perfect reconstruction is ``m(r) · ‖W S(r)‖``. PSNR (peak = reference max), SSIM
(per z slice, averaged) and NRMSE over the whole volume of magnitudes after a least-squares
scale fit (:mod:`mrprior.metrics`).

Threads: torch and BART both get ``--threads`` (default 2) threads.

Run::

    nice -n 5 .venv/bin/python benchmarks/bench_3d.py --out /tmp/bench3d
    .venv/bin/python benchmarks/bench_3d.py --quick        # 32 × 48 × 40, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, markdown_table  # noqa: E402

from mrprior.evaluation_3d import VolumeCase  # noqa: E402

logger = logging.getLogger("bench_3d")

DEFAULT_VOLUME = (
    Path.home()
    / ".cache/mrprior/data/qtim-mrbraintumor2/qtim_tools/test_data/test_data_features"
    / "MRBrainTumor2.nii.gz"
)
LAMBDAS = (0.001, 0.003, 0.01, 0.03)


# -- data (mrprior.evaluation_3d: the same code as `mrprior bench --suite volume`) -------------
def load_volume(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """A NIfTI/NRRD volume as float32 ``[z, y, x]`` resampled (linear) to ``shape``, max 1.

    :func:`mrprior.evaluation_3d.volume_zyx` (a RAS+ NIfTI becomes ``[S, A, R]``: axial
    partitions along z), flipped so that superior comes first and anterior is at the top of each
    (y, x) plane, then :func:`mrprior.evaluation_3d.resample_volume` (no percentile clip).
    """
    from mrprior.evaluation_3d import resample_volume, volume_zyx
    from mrprior.io.volumes import load_volume as read_volume

    arr, spacing = read_volume(path)
    if arr.ndim == 4:
        arr = arr[..., 0]
    vol = volume_zyx(arr, spacing)[::-1, ::-1]
    return resample_volume(vol, shape, clip_percentile=None)


def make_masks(shape: tuple[int, int], seed: int, accel: float, calib: int) -> dict[str, Any]:
    from mrprior.evaluation_3d import caipi_kykz, poisson_kykz

    return {
        f"poisson{accel:g}": poisson_kykz(shape, accel, calib, seed),
        "caipi3x2": caipi_kykz(shape, calib),
    }


def simulate(
    vol: np.ndarray, coils: int, snr: float, seed: int, accel: float, calib: int, out: Path
) -> list[VolumeCase]:
    """Write one raw file per sampling; return the cases with their references."""
    from mrprior.evaluation_3d import simulate_volume

    nz, ny, _ = vol.shape
    masks = make_masks((nz, ny), seed, accel, calib)
    return simulate_volume(vol, masks, out, coils=coils, snr=snr, seed=seed, calib=calib)


# -- ours: one child process per run -----------------------------------------------------------
def child(raw: str, method: str, settings: str, out: str, threads: int) -> None:
    """Reconstruct ``raw`` with ``method`` (in this fresh process) and save the volume."""
    import torch

    torch.set_num_threads(threads)
    from mrprior.io.raw import read_raw
    from mrprior.pipeline import load_recon_config, reconstruct

    _, groups = read_raw(raw)
    cfg = load_recon_config(
        overrides={"method": method, "device": "cpu", "settings": json.loads(settings)}
    )
    t0 = time.perf_counter()
    series = reconstruct(groups[0], cfg)
    wall = time.perf_counter() - t0
    np.save(out, series.image)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = {k: series.info.get(k) for k in ("seconds_coil_maps", "seconds_method", "planes")}
    print(json.dumps({"wall_s": wall, "max_rss_mb": rss, **info}))


def run_ours(case: VolumeCase, method: str, settings: dict, threads: int, work: Path) -> dict:
    out = work / f"{case.sampling}_{method}_{abs(hash(json.dumps(settings, sort_keys=True)))}.npy"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    cmd = [sys.executable, __file__, "--child", str(case.raw), method, json.dumps(settings)]
    proc = subprocess.run(
        [*cmd, str(out), str(threads)], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["image"] = np.load(out)
    return res


# -- BART (mrprior.evaluation_3d.BartVolume) -----------------------------------------------------
def run_bart(
    case: VolumeCase, lambdas: tuple[float, ...], calib: int, threads: int, work: Path
) -> dict:
    from mrprior.evaluation_3d import BartVolume

    bart = BartVolume(case.kspace, calib, work / f"bart_{case.sampling}", threads=threads)
    runs = {}
    for lam in lambdas:
        step = bart.pics(lam, iterations=100)
        runs[lam] = {"wall_s": step.seconds, "max_rss_mb": step.max_rss_mb, "image": step.image}
    return {"ecalib_s": bart.ecalib.seconds, "ecalib_rss_mb": bart.ecalib.max_rss_mb, "runs": runs}


# -- main ----------------------------------------------------------------------------------------
@dataclass
class Row:
    case: str
    method: str
    psnr: float
    ssim: float
    nrmse: float
    wall_s: float
    rss_mb: float
    note: str = ""
    extra: dict = field(default_factory=dict)


def score(x: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    from mrprior.evaluation_3d import score_volume

    return score_volume(x, ref)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--volume", type=Path, default=DEFAULT_VOLUME, help="held-out 3D volume")
    p.add_argument("--shape", type=int, nargs=3, default=(96, 128, 128), help="z y x")
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--snr", type=float, default=30.0, help="mean object magnitude / noise std")
    p.add_argument("--accel", type=float, default=7.0, help="Poisson-disc R")
    p.add_argument("--calib", type=int, default=24, help="calibration box (ky, kz)")
    p.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=["l1", "prior-pics", "bart"])
    p.add_argument("--quick", action="store_true", help="small volume and one λ (smoke test)")
    p.add_argument("--out", type=Path, default=None, help="work directory (kept)")
    p.add_argument("--json", type=Path, default=None, help="write the rows as JSON")
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6], threads=int(sys.argv[6]))
        return 0
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.quick:
        a.shape, a.lambdas, a.calib, a.accel = (32, 48, 40), [0.01], 12, 4.0
    if not a.volume.is_file():
        raise SystemExit(
            f"{a.volume} not found: run `mrprior data fetch qtim-mrbraintumor2` or pass --volume"
        )
    if "bart" in a.methods and shutil.which("bart") is None:
        raise SystemExit("bart is not installed (Debian: apt-get install bart)")
    work = a.out or Path(tempfile.mkdtemp(prefix="bench3d-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = tuple(a.shape)
    vol = load_volume(a.volume, shape)
    cases = simulate(vol, a.coils, a.snr, a.seed, a.accel, a.calib, work)
    rows: list[Row] = []
    for case in cases:
        ref = case.reference
        if "bart" in a.methods:
            b = run_bart(case, tuple(a.lambdas), a.calib, a.threads, work)
            scored = {lam: score(r["image"], ref) for lam, r in b["runs"].items()}
            for lam, s in scored.items():
                logger.info("%s bart λ=%g: %.2f dB", case.sampling, lam, s["psnr"])
            best = max(scored, key=lambda lam: scored[lam]["psnr"])
            r = b["runs"][best]
            rows.append(
                Row(
                    case.sampling,
                    "bart ecalib + pics -l1",
                    **scored[best],
                    wall_s=b["ecalib_s"] + r["wall_s"],
                    rss_mb=max(b["ecalib_rss_mb"], r["max_rss_mb"]),
                    note=f"λ={best:g} (ecalib {b['ecalib_s']:.0f} s + pics {r['wall_s']:.0f} s)",
                    extra={"sweep": {str(k): v["psnr"] for k, v in scored.items()}},
                )
            )
        if "l1" in a.methods:
            runs = {
                lam: run_ours(case, "l1", {"lam": lam, "max_iterations": 100}, a.threads, work)
                for lam in a.lambdas
            }
            scored = {lam: score(r["image"], ref) for lam, r in runs.items()}
            for lam, s in scored.items():
                logger.info("%s l1 λ=%g: %.2f dB", case.sampling, lam, s["psnr"])
            best = max(scored, key=lambda lam: scored[lam]["psnr"])
            r = runs[best]
            rows.append(
                Row(
                    case.sampling,
                    "ours l1 (2D wavelets per plane)",
                    **scored[best],
                    wall_s=r["wall_s"],
                    rss_mb=r["max_rss_mb"],
                    note=f"λ={best:g} (maps {r['seconds_coil_maps']:.0f} s + planes {r['seconds_method']:.0f} s)",
                    extra={"sweep": {str(k): v["psnr"] for k, v in scored.items()}},
                )
            )
        if "prior-pics" in a.methods:
            r = run_ours(case, "prior-pics", {}, a.threads, work)
            rows.append(
                Row(
                    case.sampling,
                    "ours prior-PICS (complex prior)",
                    **score(r["image"], ref),
                    wall_s=r["wall_s"],
                    rss_mb=r["max_rss_mb"],
                    note=f"maps {r['seconds_coil_maps']:.0f} s + planes {r['seconds_method']:.0f} s",
                )
            )
    header = [
        "sampling (R)",
        "method",
        "PSNR [dB]",
        "SSIM",
        "NRMSE",
        "wall [s]",
        "peak RSS [MB]",
        "note",
    ]
    acc = {c.sampling: c.acceleration for c in cases}
    table = markdown_table(
        header,
        [
            [
                f"{r.case} ({acc[r.case]:.2f})",
                r.method,
                f"{r.psnr:.2f}",
                f"{r.ssim:.4f}",
                f"{r.nrmse:.4f}",
                f"{r.wall_s:.1f}",
                f"{r.rss_mb:.0f}",
                r.note,
            ]
            for r in rows
        ],
    )
    print(
        f"volume {a.volume.name} resampled to {shape} (z, y, x), {a.coils} coils, SNR {a.snr:g}, "
        f"{a.threads} threads"
    )
    print(machine_info())
    print(table)
    for r in rows:
        if r.extra.get("sweep"):
            print(
                f"{r.case} {r.method} PSNR by λ: "
                + ", ".join(f"{k}: {v:.2f}" for k, v in r.extra["sweep"].items())
            )
    if a.json:
        a.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
