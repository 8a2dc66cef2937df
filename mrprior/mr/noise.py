"""Noise prewhitening from a noise scan (numpy or cupy, one ``xp`` code path).

The receiver noise of ``C`` coils is correlated complex Gaussian noise with covariance
``Ψ = E[n nᴴ]``. With the Cholesky factor ``Ψ = L Lᴴ`` the whitening matrix ``W = L⁻¹`` makes
``W Ψ Wᴴ = I``; applying ``W`` along the coil axis of k-space (and of the SENSE model) turns
the data into unit-variance, uncorrelated channels (Pruessmann et al., MRM 46:638, 2001;
Kellman & McVeigh, MRM 54:1439, 2005).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mrprior.backend import get_xp
from mrprior.errors import DataError

__all__ = ["noise_bandwidth_scale", "noise_covariance", "prewhiten", "whitening_matrix"]


def noise_covariance(noise: Any) -> Any:
    """Sample covariance ``Ψ [C, C] = n nᴴ / (N - 1)`` of noise samples ``[C, ...]``.

    All axes after the first (coil) axis are samples (e.g. ``[C, readouts, samples]``).
    Returned as complex64 on the input's array module.

    Raises
    ------
    DataError
        Fewer than two samples per coil, or non-finite values.
    """
    xp = get_xp(noise)
    n = xp.asarray(noise)
    if n.ndim < 2:
        raise DataError(f"noise must be [C, N, ...] with samples after the coil axis: {n.shape=}")
    n = n.reshape(n.shape[0], -1).astype(np.complex128, copy=False)
    if n.shape[1] < 2:
        raise DataError(f"need at least 2 noise samples per coil, got {n.shape[1]}")
    if not bool(xp.all(xp.isfinite(n))):
        raise DataError("noise samples contain NaN or Inf")
    cov = (n @ n.conj().T) / (n.shape[1] - 1)
    return cov.astype(np.complex64)


def noise_bandwidth_scale(
    acquisition_dwell_us: float,
    noise_dwell_us: float,
    receiver_noise_bandwidth: float = 1.0,
    factor: float = 2.0,
) -> float:
    """Scale of the whitening matrix for a noise scan read with a different bandwidth.

    Noise variance per sample is proportional to the receiver bandwidth, i.e. inversely
    proportional to the dwell time, so a covariance measured at dwell ``T_noise`` describes data
    at dwell ``T_acq`` after scaling by ``T_noise / T_acq``; the whitening matrix (``∝ Ψ^{-1/2}``)
    scales by ``sqrt(T_acq / T_noise)``. ``receiver_noise_bandwidth`` (ISMRMRD
    ``acquisitionSystemInformation.relativeReceiverNoiseBandwidth``, typically ~0.79) corrects for
    the receive filter's non-flat response. Gadgetron's ``NoiseAdjustGadget`` uses

        scale = sqrt(factor · T_acq / T_noise · receiver_noise_bandwidth),  factor = 2,

    and multiplies its prewhitening matrix by it; the same convention is used here. When either
    dwell time is 0 (unknown) the scale is 1, as in Gadgetron.
    """
    if acquisition_dwell_us <= 0 or noise_dwell_us <= 0:
        return 1.0
    if receiver_noise_bandwidth <= 0 or factor <= 0:
        raise ValueError(f"{receiver_noise_bandwidth=} and {factor=} must be positive")
    return math.sqrt(factor * acquisition_dwell_us / noise_dwell_us * receiver_noise_bandwidth)


def whitening_matrix(cov: Any, scale: float = 1.0) -> Any:
    """Whitening matrix ``W = scale · L⁻¹`` with ``Ψ = L Lᴴ`` (lower-triangular, complex64).

    Parameters
    ----------
    cov : Hermitian positive definite noise covariance ``[C, C]``.
    scale : extra factor, e.g. :func:`noise_bandwidth_scale`.

    Raises
    ------
    DataError
        ``cov`` is not square, not Hermitian, or not positive definite (a dead or duplicated
        channel, or too few noise samples).
    """
    xp = get_xp(cov)
    c = xp.asarray(cov).astype(np.complex128)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise DataError(f"noise covariance must be square [C, C]: {c.shape=}")
    if not bool(xp.all(xp.isfinite(c))):
        raise DataError("noise covariance contains NaN or Inf")
    norm = float(xp.abs(c).max())
    if norm == 0:
        raise DataError("noise covariance is zero: not positive definite")
    if float(xp.abs(c - c.conj().T).max()) > 1e-4 * norm:
        raise DataError("noise covariance is not Hermitian")
    c = 0.5 * (c + c.conj().T)
    # positive definiteness by eigenvalues: numpy raises in cholesky, cupy returns NaNs
    ev = xp.linalg.eigvalsh(c)
    if float(ev.min()) <= 1e-7 * float(ev.max()):
        raise DataError(
            f"noise covariance is not positive definite (eigenvalues {float(ev.min()):.3g} .. "
            f"{float(ev.max()):.3g}): a dead/duplicated channel or too few noise samples?"
        )
    low = xp.linalg.cholesky(c)
    w = xp.linalg.inv(low) * scale
    return w.astype(np.complex64)


def prewhiten(kspace: Any, w: Any) -> Any:
    """Apply a whitening matrix along the coil axis: ``y'[c] = Σ_d W[c, d] y[d]``.

    Parameters
    ----------
    kspace : complex ``[C, ...]`` (any trailing shape), numpy or cupy.
    w : ``[C, C]`` from :func:`whitening_matrix`.

    Returns
    -------
    complex64 array of the same shape.
    """
    xp = get_xp(kspace, w)
    k = xp.asarray(kspace)
    w = xp.asarray(w).astype(np.complex64, copy=False)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or k.shape[0] != w.shape[1]:
        raise ValueError(f"whitening matrix {w.shape} does not fit kspace {k.shape}")
    out = w @ k.reshape(k.shape[0], -1).astype(np.complex64, copy=False)
    return out.reshape(k.shape)
