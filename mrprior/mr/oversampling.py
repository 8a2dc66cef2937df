"""Readout oversampling removal (numpy or cupy, one ``xp`` code path)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mrprior.backend import get_xp
from mrprior.mr.fft import fftc, ifftc

__all__ = ["remove_readout_oversampling"]


def remove_readout_oversampling(kspace: Any, nx_recon: int) -> Any:
    """Crop the readout field of view: k-space ``[..., kx_enc]`` -> ``[..., nx_recon]``.

    Inverse centred orthonormal FFT along the readout (last) axis, keep the ``nx_recon`` central
    image samples (``start = kx_enc // 2 - nx_recon // 2``, matching the centred FFT's origin),
    forward centred orthonormal FFT. Both transforms are unitary and the crop keeps samples as
    they are, so image values and white-noise standard deviation per sample are preserved
    (k-space amplitudes scale by ``sqrt(nx_recon / kx_enc)``).

    Parameters
    ----------
    kspace : complex ``[..., kx_enc]`` (readout last), numpy or cupy.
    nx_recon : readout size after removal, ``1 <= nx_recon <= kx_enc``.

    Returns
    -------
    complex64 ``[..., nx_recon]``.
    """
    xp = get_xp(kspace)
    k = xp.asarray(kspace)
    n = k.shape[-1]
    nx_recon = int(nx_recon)
    if not 1 <= nx_recon <= n:
        raise ValueError(f"nx_recon must be in [1, {n}]: {nx_recon=}")
    if nx_recon == n:
        return k.astype(np.complex64, copy=True)
    img = ifftc(k.astype(np.complex64, copy=False), ndim=1)
    start = n // 2 - nx_recon // 2
    return fftc(img[..., start : start + nx_recon], ndim=1).astype(np.complex64, copy=False)
