"""A simulated scanner acquisition of one image, through the raw path and the pipeline.

What the real-anatomy evaluation (:mod:`mrprior.evaluation`) feeds every method:

1. ``y_c = F(S_c · x)`` for smooth coil maps ``S`` (:func:`mrprior.mr.simulate.simulate_kspace`,
   noiseless), plus **coil-correlated** complex Gaussian noise ``L n`` (``L Lᴴ`` a covariance
   with neighbour correlation ``ρ`` and channel gains 0.8–1.2, :func:`coil_noise_mixing`), and a
   separate **noise scan** drawn from the same covariance.
2. The acquired phase-encode lines (and the noise scan) are written as an ISMRMRD raw file with
   **2× readout oversampling** (:func:`mrprior.io.synthetic_raw.write_cartesian_raw`), read back
   with :func:`mrprior.io.raw.read_raw` and preprocessed by :func:`mrprior.pipeline.preprocess`
   (prewhitening with the noise-scan covariance, oversampling removal) — the path a scanner's
   file takes. 2D patterns (Poisson-disc, 2D uniform) undersample the (ky, kx) plane the way a
   3D scan undersamples (ky, kz) after the readout's inverse FFT: they are applied after
   preprocessing.
3. Coil maps: ESPIRiT from the calibration region, as the pipeline computes them
   (:func:`mrprior.pipeline.coil_maps`).

The reference follows the coil-combination convention of the recon it scores (DESIGN.md): with
the prewhitening matrix ``W`` and unit-norm ESPIRiT maps of the whitened coils, a perfect
reconstruction is ``x(r) · ‖W S(r)‖``, so the reference is ``|x| · ‖W S‖`` with the ``W`` the
pipeline computed from the noise scan (:func:`convention_reference`).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrprior.errors import ConfigError, DataError
from mrprior.io.containers import KSpace
from mrprior.mr.sampling import SamplingMask

__all__ = [
    "AcquisitionSpec",
    "SimulatedAcquisition",
    "coil_noise_mixing",
    "convention_reference",
    "is_line_mask",
    "reconstruction_problem",
    "simulate_acquisition",
]


@dataclass(frozen=True)
class AcquisitionSpec:
    """How the scanner acquisition is simulated.

    Attributes
    ----------
    coils : receive channels (8–16 in the evaluation).
    snr : mean object magnitude over the noise std of one coil-combined pixel before whitening
        (the object: pixels above 10 % of the maximum).
    noise_correlation : correlation ``ρ`` of neighbouring channels' noise (ring of coils).
    noise_scan_samples : samples per channel in the noise scan.
    readout_oversampling : 1 or 2 (the raw file's readout covers twice the FOV with 2).
    """

    coils: int = 12
    snr: float = 40.0
    noise_correlation: float = 0.3
    noise_scan_samples: int = 4096
    readout_oversampling: int = 2

    def validate(self) -> None:
        if not 2 <= self.coils <= 64:
            raise ConfigError(f"coils must be in [2, 64]: {self.coils}")
        if self.snr <= 0:
            raise ConfigError(f"snr must be > 0: {self.snr}")
        if not 0.0 <= self.noise_correlation < 1.0:
            raise ConfigError(f"noise_correlation must be in [0, 1): {self.noise_correlation}")
        if self.noise_scan_samples < 4 * self.coils:
            raise ConfigError(
                f"noise_scan_samples must be >= 4 × coils = {4 * self.coils}: "
                f"{self.noise_scan_samples}"
            )
        if self.readout_oversampling not in (1, 2):
            raise ConfigError(f"readout_oversampling must be 1 or 2: {self.readout_oversampling}")


@dataclass
class SimulatedAcquisition:
    """One simulated slice after the pipeline's preprocessing.

    Attributes
    ----------
    kspace : the preprocessed :class:`~mrprior.io.containers.KSpace` (prewhitened, recon-matrix
        readout, ``mask``/``calib`` the sampling pattern; unsampled positions zero).
    reference : float32 ``[H, W]``, ``|x| · ‖W S‖`` (:func:`convention_reference`).
    image : complex64 ``[H, W]`` the simulated object ``x`` (before coil weighting).
    whitening : complex64 ``[C, C]`` the prewhitening matrix the pipeline's noise scan gives.
    acceleration : ``R`` of the imaging mask.
    """

    kspace: KSpace
    reference: np.ndarray
    image: np.ndarray
    whitening: np.ndarray
    acceleration: float


def coil_noise_mixing(coils: int, rho: float, rng: np.random.Generator) -> np.ndarray:
    """Lower-triangular ``L`` with ``L Lᴴ = Ψ``: correlation ``ρ^d`` between channels ``d`` apart
    on a ring and channel gains uniform in 0.8–1.2 (what prewhitening has to undo)."""
    idx = np.arange(coils)
    dist = np.minimum(np.abs(idx[:, None] - idx[None]), coils - np.abs(idx[:, None] - idx[None]))
    corr = rho ** dist.astype(np.float64)
    gains = rng.uniform(0.8, 1.2, coils)
    return np.linalg.cholesky(corr * np.outer(gains, gains)).astype(np.complex64)


def is_line_mask(mask: np.ndarray) -> bool:
    """True when every acquired ky line is fully sampled along kx (a 2D Cartesian line scheme)."""
    m = np.asarray(mask, dtype=bool)
    return bool(np.all(m == m.any(axis=1, keepdims=True)))


def _whitening(ks: KSpace) -> np.ndarray:
    """The prewhitening matrix :func:`mrprior.pipeline.preprocess` derives from ``ks.noise``."""
    from mrprior.mr.noise import noise_covariance, whitening_matrix

    if ks.noise is None:
        raise DataError("the simulated k-space carries no noise scan")
    cov = np.asarray(noise_covariance(ks.noise))
    if ks.noise_dwell_us and ks.dwell_us:
        cov = cov * (ks.noise_dwell_us / ks.dwell_us)
    return np.asarray(whitening_matrix(cov)).astype(np.complex64)


def convention_reference(image: np.ndarray, csm: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """``|x(r)| · ‖W S(r)‖``: what prewhitening plus unit-norm ESPIRiT maps reconstruct.

    Parameters
    ----------
    image : ``[H, W]`` the object ``x``.
    csm : ``[C, H, W]`` the true coil maps ``S`` of the simulation.
    whitening : ``[C, C]`` the prewhitening matrix ``W``.
    """
    ws = np.tensordot(np.asarray(whitening), np.asarray(csm), axes=(1, 0))
    return (np.abs(image) * np.sqrt(np.sum(np.abs(ws) ** 2, axis=0))).astype(np.float32)


def simulate_acquisition(
    image: np.ndarray,
    mask: SamplingMask,
    spec: AcquisitionSpec | None = None,
    seed: int = 0,
    workdir: str | Path | None = None,
) -> SimulatedAcquisition:
    """Simulate ``image`` as a multi-coil scan sampled by ``mask`` (module docstring).

    Parameters
    ----------
    image : complex ``[H, W]`` object (its phase is kept).
    mask : the sampling pattern ``[H, W]`` (lines or 2D).
    spec : acquisition settings (default :class:`AcquisitionSpec`).
    seed : seeds the channel gains and all noise.
    workdir : where the temporary raw file goes (default: a temporary directory).

    Raises
    ------
    DataError
        Empty image, or a mask whose shape differs from the image's.
    """
    from mrprior.io.raw import read_raw
    from mrprior.io.synthetic_raw import RawSlice, write_cartesian_raw
    from mrprior.mr.simulate import simulate_kspace
    from mrprior.pipeline import ReconConfig, preprocess

    spec = spec or AcquisitionSpec()
    spec.validate()
    img = np.asarray(image).astype(np.complex64)
    if img.ndim != 2:
        raise DataError(f"image must be [H, W]: {img.shape=}")
    if mask.shape != img.shape:
        raise DataError(f"mask {mask.shape} does not fit image {img.shape}")
    sim = simulate_kspace(img, coils=spec.coils, seed=seed, add_phase=False)  # noiseless
    obj = np.abs(sim.image)
    if not float(obj.max()) > 0:
        raise DataError("image is all zeros")
    sigma = float(obj[obj > 0.1 * obj.max()].mean()) / spec.snr
    rng = np.random.default_rng([seed, 1])
    mix = coil_noise_mixing(spec.coils, spec.noise_correlation, rng)

    def noise(shape: tuple[int, ...]) -> np.ndarray:
        white = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * (
            sigma / math.sqrt(2)
        )
        return np.tensordot(mix, white.astype(np.complex64), axes=(1, 0)).astype(np.complex64)

    # the raw writer oversamples the readout with an orthonormal FFT (amplitude × √(1/os) per
    # sample); a scanner's noise has the noise scan's σ at every oversampled sample, i.e. σ·√os
    # at the recon matrix before oversampling (and σ again after the pipeline removes it)
    os_noise = math.sqrt(spec.readout_oversampling)
    kspace = (sim.kspace + os_noise * noise(sim.kspace.shape)).astype(np.complex64)
    lines = mask.mask.any(axis=1)
    calib_lines = mask.calib.any(axis=1)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = write_cartesian_raw(
            Path(tmp) / "raw.h5",
            [RawSlice(kspace, lines, calib_lines)],
            noise_scan=noise((spec.coils, spec.noise_scan_samples)),
            readout_oversampling=spec.readout_oversampling,
        )
        _, groups = read_raw(path)
    if len(groups) != 1:
        raise DataError(f"expected one k-space group from the simulated file, got {len(groups)}")
    raw = groups[0]
    w = _whitening(raw)
    ks = preprocess(raw, ReconConfig())
    if tuple(ks.mask.shape) != mask.shape:
        raise DataError(f"preprocessed k-space {tuple(ks.mask.shape)} != mask {mask.shape}")
    if not is_line_mask(mask.mask):
        m2, c2 = mask.mask.copy(), mask.calib.copy()
        ks = ks.replace(data=(ks.data * m2[None]).astype(np.complex64), mask=m2, calib=c2)
    return SimulatedAcquisition(
        kspace=ks,
        reference=convention_reference(sim.image, sim.csm, w),
        image=sim.image,
        whitening=w,
        acceleration=float(mask.acceleration),
    )


def reconstruction_problem(
    acq: SimulatedAcquisition,
    calib_size: int,
    device: torch.device | str = "cpu",
    with_csm: bool = True,
):  # -> ReconProblem (import kept local: mrprior.recon is heavy)
    """The :class:`~mrprior.recon.problem.ReconProblem` the pipeline builds for this slice:
    whitened data (noise std 1), the imaging mask, and — when ``with_csm`` — ESPIRiT maps from
    the calibration region (:func:`mrprior.pipeline.coil_maps`, ``calib_size`` at most)."""
    from mrprior.backend import to_torch
    from mrprior.pipeline import CoilMapConfig, ReconConfig, coil_maps
    from mrprior.recon.problem import ReconProblem

    dev = torch.device(device)
    ks = acq.kspace
    csm = None
    if with_csm:
        cfg = ReconConfig(coil_maps=CoilMapConfig(calib_size=calib_size))
        csm = to_torch(coil_maps(ks, cfg, dev), dev)  # maps come on the xp of the device
    data, mask, calib = ks.to_torch(dev)
    return ReconProblem(
        kspace=(data * mask[None]).to(torch.complex64),
        mask=mask,
        csm=csm,
        noise_std=1.0 if ks.prewhitened else None,
        calib=calib,
    )
