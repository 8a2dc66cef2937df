"""Simulated multi-coil k-space of a 2D image or a 3D volume (numpy or cupy, one ``xp``).

``y_c = F(S_c · x) + n_c``: smooth coil sensitivities from current-carrying wires on a ring
around the field of view (Biot–Savart: the circularly polarized receive field of a straight wire
perpendicular to the slice, ``B⁻ ∝ 1 / conj(z - z_c)``; in 3D finite wire segments on one or
more rings along z, so the sensitivity also falls off along z), a smooth random image phase from
:func:`mrprior.mr.phase.synthetic_phase` for magnitude images (2D or 3D), circular complex
Gaussian noise, optionally correlated between coils (covariance ``Ψ``) with a matching noise
scan, and optionally 2× readout oversampling (noise added to the oversampled samples, as a
receiver does). All random numbers come from one seeded numpy generator, so a seed gives the
same data on numpy and cupy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mrprior.backend import get_xp
from mrprior.errors import DataError
from mrprior.mr.fft import fftc, ifftc
from mrprior.mr.phase import synthetic_phase

__all__ = [
    "SimulatedData",
    "birdcage_maps",
    "coil_noise_covariance",
    "oversample_readout",
    "simulate_kspace",
]


@dataclass
class SimulatedData:
    """Output of :func:`simulate_kspace`.

    Attributes
    ----------
    kspace : complex64 ``[C, H, W_enc]`` or ``[C, D, H, W_enc]``, fully sampled, noise
        included; ``W_enc = readout_oversampling · W``.
    csm : complex64 ``[C, H, W]`` / ``[C, D, H, W]`` true coil maps, ``Σ_c |S_c|² = 1``.
    image : complex64 ``[H, W]`` / ``[D, H, W]`` ground-truth image (``Σ_c conj(S_c) Fᴴ y_c``
        without noise, after removing the readout oversampling).
    noise_std : RMS over coils of the standard deviation of the complex noise per k-space
        sample (``E|n|² = noise_std²`` averaged over coils).
    noise_cov : complex64 ``[C, C]`` noise covariance per sample (``noise_std² · Ψ`` with
        ``mean(diag Ψ) = 1``), or ``None`` for white noise (``noise_std² · I``).
    noise_scan : complex64 ``[C, N]`` noise-only samples with the same covariance, or ``None``.
    readout_oversampling : 1 or 2.
    """

    kspace: Any
    csm: Any
    image: Any
    noise_std: float
    noise_cov: Any | None = None
    noise_scan: Any | None = None
    readout_oversampling: int = 1


def birdcage_maps(
    shape: tuple[int, ...],
    coils: int = 8,
    radius: float = 1.5,
    height: float = 0.3,
    xp: Any = np,
    rings: int | None = None,
    length: float | None = None,
) -> Any:
    """Smooth coil maps of ``coils`` wires on a ring around the field of view, normalized.

    2D (``shape = (H, W)``): coil ``c`` sits at ``z_c = radius · e^{2πi c / coils}`` in
    normalized coordinates (the field of view spans ``[-1, 1]`` along its longer side, aspect
    ratio kept). Its sensitivity is the receive field of a wire perpendicular to the slice,
    ``S_c(z) ∝ e^{iθ_c} / conj(z - z_c)``, regularized as ``conj(z - z_c) / (|z - z_c|² +
    height²)`` (a wire at finite distance ``height`` out of plane), with a coil phase offset
    ``θ_c = 2πc / coils``; magnitudes fall off as ``1/d`` and phases vary smoothly.

    3D (``shape = (D, H, W)``, the first axis along the wires): the coils form ``rings`` rings
    (default 2 when ``coils`` is even and ≥ 4, else 1) of ``coils / rings`` wire segments of
    ``length`` (default ``2 / rings`` in normalized units, so the rings tile ``[-1, 1]``)
    centred at evenly spaced ``z_k``, successive rings rotated by half a coil spacing. A finite
    segment's field is the 2D field times the Biot–Savart factor ``½ [(ζ + ℓ/2) / √(ρ² + (ζ +
    ℓ/2)²) − (ζ − ℓ/2) / √(ρ² + (ζ − ℓ/2)²)]`` (``ζ = z − z_k``, ``ρ² = |d|² + height²``), which
    is 1 for an infinite wire; a slow phase twist ``0.5 ζ`` along z is added. Voxels are taken as
    cubic (normalized by the longest side).

    The maps are normalized so that ``Σ_c |S_c|² = 1`` at every voxel.

    Returns
    -------
    complex64 ``[coils, *shape]`` on ``xp``.
    """
    dims = tuple(int(n) for n in shape)
    if len(dims) not in (2, 3) or coils < 1 or min(dims) < 1:
        raise ValueError(f"need coils >= 1 and a positive 2D or 3D shape: {coils=}, {shape=}")
    if radius <= 1.0:
        raise ValueError(f"coils must sit outside the field of view: {radius=} must be > 1")
    s = max(dims)
    h, w = dims[-2:]
    y = (xp.arange(h, dtype=xp.float64) - h // 2) * (2.0 / s)
    x = (xp.arange(w, dtype=xp.float64) - w // 2) * (2.0 / s)
    z = x[None, :] + 1j * y[:, None]
    if len(dims) == 2:
        ang = 2 * math.pi * np.arange(coils) / coils
        zc = xp.asarray(radius * np.exp(1j * ang))[:, None, None]
        d = z[None] - zc
        maps = (
            xp.asarray(np.exp(1j * ang))[:, None, None] * xp.conj(d) / (xp.abs(d) ** 2 + height**2)
        )
    else:
        if rings is None:
            rings = 2 if coils >= 4 and coils % 2 == 0 else 1
        if rings < 1 or coils % rings:
            raise ValueError(f"{coils=} coils cannot form {rings=} equal rings")
        per_ring = coils // rings
        seg = 2.0 / rings if length is None else float(length)
        if seg <= 0:
            raise ValueError(f"wire length must be positive: {length=}")
        depth = dims[0]
        zeta_axis = (xp.arange(depth, dtype=xp.float64) - depth // 2) * (2.0 / s)
        maps = xp.zeros((coils, *dims), dtype=xp.complex128)
        for c in range(coils):
            ring, k = divmod(c, per_ring)
            ang = 2 * math.pi * (k + 0.5 * (ring % 2)) / per_ring
            zk = -1.0 + seg * (ring + 0.5) if length is None else (ring - (rings - 1) / 2) * seg
            d = z - radius * complex(math.cos(ang), math.sin(ang))
            rho2 = (xp.abs(d) ** 2 + height**2)[None]
            zeta = (zeta_axis - zk)[:, None, None]
            axial = 0.5 * (
                (zeta + seg / 2) / xp.sqrt(rho2 + (zeta + seg / 2) ** 2)
                - (zeta - seg / 2) / xp.sqrt(rho2 + (zeta - seg / 2) ** 2)
            )
            field = (xp.conj(d) / (xp.abs(d) ** 2 + height**2))[None]
            maps[c] = np.exp(1j * ang) * field * axial * xp.exp(0.5j * zeta)
    maps = maps / xp.sqrt(xp.sum(xp.abs(maps) ** 2, axis=0, keepdims=True))
    return maps.astype(np.complex64)


def coil_noise_covariance(
    coils: int, correlation: float = 0.3, spread: float = 0.25, seed: int = 0
) -> np.ndarray:
    """A realistic receiver noise covariance ``Ψ [C, C]`` (complex64, ``mean(diag Ψ) = 1``).

    ``Ψ = D T D``: ``T`` the Hermitian Kac–Murdock–Szegő matrix ``T_cd = ρ^{c-d}`` (``c ≥ d``;
    ``ρ = correlation · e^{iφ}``), so neighbouring channels correlate by ``|ρ|`` and the
    correlation decays with channel distance (positive definite for ``|ρ| < 1``); ``D``
    diagonal per-channel noise levels ``exp(spread · N(0, 1))`` (channels differ in gain).
    ``φ`` and the levels come from ``seed``.
    """
    if coils < 1 or not 0 <= correlation < 1 or spread < 0:
        raise ValueError(
            f"need coils >= 1, 0 <= correlation < 1, spread >= 0: {coils=}, "
            f"{correlation=}, {spread=}"
        )
    rng = np.random.default_rng(seed)
    rho = correlation * np.exp(1j * rng.uniform(-np.pi, np.pi))
    c = np.arange(coils)
    diff = c[:, None] - c[None, :]
    t = np.where(diff >= 0, rho ** np.abs(diff), np.conj(rho) ** np.abs(diff))
    level = np.exp(spread * rng.standard_normal(coils))
    cov = level[:, None] * t * level[None, :]
    cov /= np.mean(np.real(np.diag(cov)))
    return cov.astype(np.complex64)


def oversample_readout(kspace: Any, factor: int) -> Any:
    """k-space ``[..., kx]`` -> ``[..., factor·kx]`` as if the readout FOV were ``factor``× larger.

    The image is zero-padded along x (centred) between centred orthonormal FFTs, so that
    :func:`mrprior.mr.oversampling.remove_readout_oversampling` gives back ``kspace`` exactly.
    """
    if factor == 1:
        return kspace
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"readout oversampling must be a positive integer: {factor=}")
    xp = get_xp(kspace)
    img = ifftc(kspace, 1)  # along kx only
    nx = kspace.shape[-1]
    start = (int(factor) * nx) // 2 - nx // 2  # centred as the removal crops it
    out = xp.zeros((*kspace.shape[:-1], int(factor) * nx), dtype=np.complex64)
    out[..., start : start + nx] = img
    return fftc(out, 1).astype(np.complex64)


def simulate_kspace(
    image: Any,
    coils: int = 8,
    noise_std: float | None = None,
    snr: float | None = None,
    seed: int = 0,
    add_phase: bool = True,
    csm: Any | None = None,
    noise_cov: Any | None = None,
    noise_samples: int = 0,
    readout_oversampling: int = 1,
) -> SimulatedData:
    """Fully sampled multi-coil k-space ``y_c = F(S_c x) + n_c`` from one image or volume.

    Parameters
    ----------
    image : ``[H, W]`` image or ``[D, H, W]`` volume (readout last), real (magnitude) or
        complex, numpy or cupy.
    coils : number of coils (ignored when ``csm`` is given).
    noise_std : RMS over coils ``σ`` of the standard deviation of the circular complex Gaussian
        noise per k-space sample (``E|n|² = σ²``). Because the FFT is orthonormal, ``σ`` is
        also the noise standard deviation of each coil image, after any readout oversampling
        has been removed.
    snr : alternative to ``noise_std``: ``SNR = mean(|x| over the object) / σ``, the object
        being the voxels with ``|x| > 0.1 · max|x|``. Give at most one of ``noise_std``/``snr``;
        with neither the data are noiseless.
    seed : seeds the phase map, the noise and the noise scan (numpy generator; same data on
        numpy and cupy).
    add_phase : for a real image, multiply by ``exp(i φ)``, ``φ`` from
        :func:`mrprior.mr.phase.synthetic_phase` (2D or 3D); a complex image keeps its phase.
    csm : optional coil maps ``[C, *image.shape]``; default :func:`birdcage_maps`.
    noise_cov : optional Hermitian positive definite ``[C, C]`` relative noise covariance ``Ψ``
        (rescaled to ``mean(diag Ψ) = 1``, e.g. :func:`coil_noise_covariance`): the noise is
        ``σ L w`` with ``Ψ = L Lᴴ`` and white ``w``. Default: white noise.
    noise_samples : samples per coil of a noise-only scan with the same covariance
        (``noise_scan``, ``[C, noise_samples]``); 0 for none.
    readout_oversampling : 1, or 2 to return the readout at twice the field of view (the
        encoded size a scanner writes); the noise is added to the oversampled samples.

    Returns
    -------
    SimulatedData
    """
    xp = get_xp(image)
    img = xp.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be [H, W] or [D, H, W]: {img.shape=}")
    if not bool(xp.all(xp.isfinite(img))):
        raise DataError("image contains NaN or Inf")
    if noise_std is not None and snr is not None:
        raise ValueError("give noise_std or snr, not both")
    if readout_oversampling not in (1, 2):
        raise ValueError(f"readout_oversampling must be 1 or 2: {readout_oversampling=}")
    if noise_samples < 0:
        raise ValueError(f"noise_samples must be >= 0: {noise_samples=}")
    rng = np.random.default_rng(seed)
    if xp.iscomplexobj(img):
        x = img.astype(np.complex64)
    else:
        x = img.astype(np.float32)
        if add_phase:
            phi = synthetic_phase(tuple(x.shape), rng, xp=xp)
            x = x * xp.exp(1j * phi)
        x = x.astype(np.complex64)
    if csm is None:
        csm = birdcage_maps(tuple(x.shape), coils, xp=xp)
    else:
        csm = xp.asarray(csm).astype(np.complex64)
        if csm.ndim != x.ndim + 1 or csm.shape[1:] != x.shape:
            raise ValueError(f"csm {csm.shape} does not fit image {x.shape}")
    nc = int(csm.shape[0])
    chol = None
    cov = None
    if noise_cov is not None:
        psi = np.asarray(noise_cov.get() if hasattr(noise_cov, "get") else noise_cov)
        if psi.shape != (nc, nc):
            raise ValueError(f"noise_cov {psi.shape} does not fit {nc} coils")
        psi = psi.astype(np.complex128)
        if np.abs(psi - psi.conj().T).max() > 1e-5 * np.abs(psi).max():
            raise ValueError("noise_cov is not Hermitian")
        psi = 0.5 * (psi + psi.conj().T) / np.mean(np.real(np.diag(psi)))
        try:
            chol = np.linalg.cholesky(psi)
        except np.linalg.LinAlgError:
            raise ValueError("noise_cov is not positive definite") from None
        cov = psi
    k = fftc(csm * x[None], x.ndim).astype(np.complex64)
    k = oversample_readout(k, readout_oversampling)
    if snr is not None:
        if snr <= 0:
            raise ValueError(f"snr must be positive: {snr=}")
        mag = xp.abs(x)
        obj = mag > 0.1 * float(mag.max())
        if not bool(obj.any()):
            raise DataError("image is all zeros: SNR is undefined")
        sigma = float(mag[obj].mean()) / float(snr)
    else:
        sigma = float(noise_std or 0.0)
        if sigma < 0:
            raise ValueError(f"noise_std must be >= 0: {noise_std=}")

    def draw(shape: tuple[int, ...]) -> Any:
        n = rng.standard_normal((2, *shape), dtype=np.float32) * np.float32(sigma / math.sqrt(2))
        w = n[0] + 1j * n[1]
        if chol is not None:
            w = (chol @ w.reshape(nc, -1)).reshape(shape)
        return xp.asarray(w.astype(np.complex64))

    if sigma > 0:
        k = k + draw(tuple(k.shape))
    scan = draw((nc, int(noise_samples))) if noise_samples else None
    return SimulatedData(
        kspace=k,
        csm=csm,
        image=x,
        noise_std=sigma,
        noise_cov=None if cov is None else xp.asarray((sigma**2 * cov).astype(np.complex64)),
        noise_scan=scan,
        readout_oversampling=readout_oversampling,
    )
