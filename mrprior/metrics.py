"""Image quality metrics: PSNR, SSIM, NRMSE on magnitude images after a least-squares scale fit.

Convention (used by every benchmark and test in mrprior)
---------------------------------------------------------
1. Both images are reduced to magnitudes ``|x|`` and ``|ref|`` (complex or real input).
2. ``|x|`` is scaled by the least-squares factor ``a = <|x|, |ref|> / <|x|, |x|>``
   (:func:`fit_scale`), so a method is not penalized for a global intensity scale.
3. Everything is computed over the **whole field of view** (no support mask, no cropping other
   than SSIM's border, see below).
4. PSNR uses the peak ``max |ref|``: ``PSNR = 20 log10(max|ref| / RMSE(a|x|, |ref|))``.
5. NRMSE = ``||a|x| - |ref|||_2 / ||ref||_2``.
6. SSIM (Wang et al., IEEE TIP 2004) with an isotropic Gaussian window of σ = 1.5 truncated at
   3.5σ (11×11 taps), population (not sample) covariances, constants ``K1 = 0.01, K2 = 0.03``,
   data range ``L = max|ref| - min|ref|``, reflective padding, and the mean of the SSIM map over
   pixels at least 5 pixels from the border — the same as
   ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
   use_sample_covariance=False, data_range=L)``.

Inputs may be numpy arrays or torch tensors (any device), of any shape; SSIM needs 2D images
(``[..., H, W]`` with leading dims averaged).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from mrprior.backend import to_numpy

_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5
_K1, _K2 = 0.01, 0.03


def _mags(x: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    xa = np.abs(to_numpy(x)).astype(np.float64)
    ra = np.abs(to_numpy(ref)).astype(np.float64)
    if xa.shape != ra.shape:
        raise ValueError(f"image and reference shapes differ: {xa.shape} != {ra.shape}")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ra))):
        raise ValueError("image or reference contains NaN/inf")
    return xa, ra


def fit_scale(x: Any, ref: Any) -> float:
    """Least-squares scale ``a = argmin_a ||a|x| - |ref|||² = <|x|,|ref|> / <|x|,|x|>``.

    Returns 0.0 when ``x`` is all zeros.
    """
    xa, ra = _mags(x, ref)
    den = float(np.vdot(xa, xa))
    return float(np.vdot(xa, ra)) / den if den > 0 else 0.0


def _fitted(x: Any, ref: Any, scale: bool) -> tuple[np.ndarray, np.ndarray]:
    xa, ra = _mags(x, ref)
    if scale:
        den = float(np.vdot(xa, xa))
        xa = xa * (float(np.vdot(xa, ra)) / den if den > 0 else 0.0)
    return xa, ra


def nrmse(x: Any, ref: Any, scale: bool = True) -> float:
    """Normalized RMSE ``||a|x| - |ref||| / ||ref||`` after the LS scale fit (module docstring)."""
    xa, ra = _fitted(x, ref, scale)
    den = float(np.linalg.norm(ra))
    if den == 0:
        raise ValueError("reference is all zeros")
    return float(np.linalg.norm(xa - ra)) / den


def psnr(x: Any, ref: Any, scale: bool = True) -> float:
    """PSNR in dB with peak ``max|ref|`` after the LS scale fit (module docstring).

    Returns ``inf`` for a perfect match.
    """
    xa, ra = _fitted(x, ref, scale)
    peak = float(ra.max())
    if peak == 0:
        raise ValueError("reference is all zeros")
    mse = float(np.mean((xa - ra) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def ssim(x: Any, ref: Any, scale: bool = True) -> float:
    """Mean SSIM of magnitude images after the LS scale fit (module docstring for constants).

    Parameters
    ----------
    x, ref : arrays/tensors ``[..., H, W]`` with ``H, W >= 11``; leading dims are averaged.
    """
    xa, ra = _fitted(x, ref, scale)
    if xa.ndim < 2 or min(xa.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11: {xa.shape=}")
    data_range = float(ra.max() - ra.min())
    if data_range == 0:
        raise ValueError("reference is constant: SSIM data range is zero")
    xs = xa.reshape(-1, *xa.shape[-2:])
    rs = ra.reshape(-1, *ra.shape[-2:])
    return float(np.mean([_ssim2d(a, b, data_range) for a, b in zip(xs, rs, strict=True)]))


def _ssim2d(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    def filt(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(
            a, sigma=_SSIM_SIGMA, truncate=_SSIM_TRUNCATE, mode="reflect"
        )

    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    mx, my = filt(x), filt(y)
    vx = filt(x * x) - mx * mx
    vy = filt(y * y) - my * my
    cxy = filt(x * y) - mx * my
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    pad = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)  # 5: half of the 11-tap window
    return float(smap[pad:-pad, pad:-pad].mean())


def all_metrics(x: Any, ref: Any) -> dict[str, float]:
    """``{"psnr", "ssim", "nrmse", "scale"}`` of ``x`` against ``ref`` (module convention)."""
    return {
        "psnr": psnr(x, ref),
        "ssim": ssim(x, ref),
        "nrmse": nrmse(x, ref),
        "scale": fit_scale(x, ref),
    }


def standardized_errors(mean: Any, std: Any, ref: Any, object_fraction: float = 0.05) -> np.ndarray:
    """Errors of a posterior mean in units of its uncertainty, on the object's pixels.

    With ``a`` the least-squares scale of ``|mean|`` to ``|ref|`` (:func:`fit_scale`), returns
    ``z = |a|mean| − |ref|| / (a · std / √2)`` over the pixels where ``|ref| > object_fraction ·
    max|ref|``. ``std`` is the per-pixel standard deviation of the complex error (``√E|e|²``,
    the convention of ``prior-sample``'s uncertainty map); the magnitude error is its component
    along the image phase, whose standard deviation is ``std / √2`` for an isotropic complex
    error. Magnitudes are compared because a reference of the real suite has no phase.
    """
    xa, ra = _mags(mean, ref)
    sa = np.abs(to_numpy(std)).astype(np.float64)
    if sa.shape != xa.shape:
        raise ValueError(f"std and image shapes differ: {sa.shape} != {xa.shape}")
    a = fit_scale(xa, ra)
    obj = ra > object_fraction * ra.max()
    err = np.abs(a * xa - ra)[obj]
    return err / np.maximum(a * sa[obj] / math.sqrt(2.0), 1e-30)


def interval_coverage(mean: Any, std: Any, ref: Any, k: float = 2.0) -> float:
    """Fraction of the object's pixels whose true magnitude lies within ``mean ± k·std``
    (:func:`standardized_errors`; ``k = 2`` is a nominal 95.4 % for a Gaussian error)."""
    return float(np.mean(standardized_errors(mean, std, ref) <= k))
