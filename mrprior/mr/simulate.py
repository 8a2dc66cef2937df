"""Simulated multi-coil k-space from a magnitude or complex image (numpy or cupy, one ``xp``).

``y_c = F(S_c · x) + n_c``: smooth coil sensitivities from current loops on a ring around the
field of view (2D Biot–Savart: the circularly polarized receive field of a straight wire
perpendicular to the slice, ``B⁻ ∝ 1 / conj(z - z_c)``), a smooth random image phase from
:func:`mrprior.mr.phase.synthetic_phase` for magnitude images, and circular complex Gaussian
noise. All random numbers come from one seeded numpy generator, so a seed gives the same data on
numpy and cupy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mrprior.backend import get_xp
from mrprior.errors import DataError
from mrprior.mr.fft import fftc
from mrprior.mr.phase import synthetic_phase

__all__ = ["SimulatedData", "birdcage_maps", "simulate_kspace"]


@dataclass
class SimulatedData:
    """Output of :func:`simulate_kspace`.

    Attributes
    ----------
    kspace : complex64 ``[C, H, W]``, fully sampled, noise included.
    csm : complex64 ``[C, H, W]`` true coil maps, ``Σ_c |S_c|² = 1`` at every pixel.
    image : complex64 ``[H, W]`` ground-truth image (``Σ_c conj(S_c) Fᴴ y_c`` without noise).
    noise_std : standard deviation of the complex noise per k-space sample
        (``E|n|² = noise_std²``; real and imaginary parts each ``noise_std / √2``).
    """

    kspace: Any
    csm: Any
    image: Any
    noise_std: float


def birdcage_maps(
    shape: tuple[int, int],
    coils: int = 8,
    radius: float = 1.5,
    height: float = 0.3,
    xp: Any = np,
) -> Any:
    """Smooth coil maps of ``coils`` wires on a ring around the field of view, normalized.

    Coil ``c`` sits at ``z_c = radius · e^{2πi c / coils}`` in normalized coordinates (the field of
    view spans ``[-1, 1]`` along its longer side, aspect ratio kept). Its sensitivity is the
    receive field of a wire perpendicular to the slice, ``S_c(z) ∝ e^{iθ_c} / conj(z - z_c)``,
    regularized as ``conj(z - z_c) / (|z - z_c|² + height²)`` (a wire at finite distance
    ``height`` out of plane), with a coil phase offset ``θ_c = 2πc / coils``; magnitudes fall off
    as ``1/d`` and phases vary smoothly. The maps are normalized so that ``Σ_c |S_c|² = 1`` at
    every pixel.

    Returns
    -------
    complex64 ``[coils, H, W]`` on ``xp``.
    """
    h, w = (int(shape[0]), int(shape[1]))
    if coils < 1 or h < 1 or w < 1:
        raise ValueError(f"need coils >= 1 and a positive shape: {coils=}, {shape=}")
    if radius <= 1.0:
        raise ValueError(f"coils must sit outside the field of view: {radius=} must be > 1")
    s = max(h, w)
    y = (xp.arange(h, dtype=xp.float64) - h // 2) * (2.0 / s)
    x = (xp.arange(w, dtype=xp.float64) - w // 2) * (2.0 / s)
    z = x[None, :] + 1j * y[:, None]
    ang = 2 * math.pi * np.arange(coils) / coils
    zc = xp.asarray(radius * np.exp(1j * ang))[:, None, None]
    d = z[None] - zc
    maps = xp.asarray(np.exp(1j * ang))[:, None, None] * xp.conj(d) / (xp.abs(d) ** 2 + height**2)
    maps = maps / xp.sqrt(xp.sum(xp.abs(maps) ** 2, axis=0, keepdims=True))
    return maps.astype(np.complex64)


def simulate_kspace(
    image: Any,
    coils: int = 8,
    noise_std: float | None = None,
    snr: float | None = None,
    seed: int = 0,
    add_phase: bool = True,
    csm: Any | None = None,
) -> SimulatedData:
    """Fully sampled multi-coil k-space ``y_c = F(S_c x) + n_c`` from one image.

    Parameters
    ----------
    image : ``[H, W]`` real (magnitude) or complex image, numpy or cupy.
    coils : number of coils (ignored when ``csm`` is given).
    noise_std : standard deviation ``σ`` of the circular complex Gaussian noise per k-space
        sample (``E|n|² = σ²``). Because the FFT is orthonormal, ``σ`` is also the noise standard
        deviation of each coil image.
    snr : alternative to ``noise_std``: ``SNR = mean(|x| over the object) / σ``, the object
        being the pixels with ``|x| > 0.1 · max|x|``. Give at most one of ``noise_std``/``snr``;
        with neither the data are noiseless.
    seed : seeds the phase map and the noise (numpy generator; same data on numpy and cupy).
    add_phase : for a real image, multiply by ``exp(i φ)``, ``φ`` from
        :func:`mrprior.mr.phase.synthetic_phase`; a complex image keeps its own phase.
    csm : optional coil maps ``[C, H, W]``; default :func:`birdcage_maps`.

    Returns
    -------
    SimulatedData
    """
    xp = get_xp(image)
    img = xp.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be [H, W]: {img.shape=}")
    if not bool(xp.all(xp.isfinite(img))):
        raise DataError("image contains NaN or Inf")
    if noise_std is not None and snr is not None:
        raise ValueError("give noise_std or snr, not both")
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
        if csm.ndim != 3 or csm.shape[1:] != x.shape:
            raise ValueError(f"csm {csm.shape} does not fit image {x.shape}")
    k = fftc(csm * x[None]).astype(np.complex64)
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
    if sigma > 0:
        n = rng.standard_normal((2, *k.shape), dtype=np.float32) * np.float32(sigma / math.sqrt(2))
        k = k + xp.asarray(n[0] + 1j * n[1]).astype(np.complex64)
    return SimulatedData(kspace=k, csm=csm, image=x, noise_std=sigma)
