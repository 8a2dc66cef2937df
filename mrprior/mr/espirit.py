"""ESPIRiT coil sensitivity maps, one code path for numpy and cupy (``xp``).

Method (Uecker et al., "ESPIRiT - an eigenvalue approach to autocalibrating parallel MRI:
where SENSE meets GRAPPA", MRM 71:990-1001, 2014):

1. The calibration matrix ``A`` holds every ``k × k × C`` patch of the fully sampled k-space
   centre as a row. Its right singular vectors with ``σ_i² / σ_0² > threshold`` span the signal
   subspace (the same rule as ``bart ecalib -t``: BART thresholds the eigenvalues of ``AᴴA``).
2. Each kept kernel ``b_j`` (``[C, k, k]``) becomes an image-domain vector field
   ``g_j(x) = Σ_r b_j[:, r] e^{+2πi r·x/N}``, and the ESPIRiT operator is, per pixel,
   ``W(x) = k⁻² Σ_j g_j(x) g_j(x)ᴴ`` (``C × C``, Hermitian, eigenvalues in ``[0, 1]``).
   The coil maps are the eigenvectors of ``W(x)`` with eigenvalue ≈ 1.
3. ``W`` is a trigonometric polynomial with only ``(2k-1)²`` Fourier coefficients per coil
   pair (computed exactly from the products ``g_j g_jᴴ`` on a ``2k × 2k`` grid), so it can be
   evaluated exactly at any pixel by two small DFT-matrix products.
4. The dominant eigenvector is solved exactly (repeated squaring ``W^{2^s}`` with batched
   ``C × C`` matmuls) on a coarse grid of about ``N/4`` points per axis, rotated to a common
   phase reference, interpolated linearly to full size and refined there by power iterations
   with the exact full-resolution ``W``; pixels near the support whose residual stays large
   (a small eigenvalue gap next to a poor start) are solved exactly at full resolution.
   No Python loop over pixels.
5. Maps are cropped where the eigenvalue is below ``crop`` (``bart ecalib -c``), unit-norm
   over coils elsewhere, and their phase is rotated so that the projection on the first principal
   component of all coil maps (a virtual body coil) is real and positive, as BART does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mrprior.backend import get_xp
from mrprior.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["EspiritResult", "calibration_region", "espirit", "espirit_maps"]


@dataclass
class EspiritResult:
    """Output of :func:`espirit`.

    Attributes
    ----------
    maps : complex64 ``[C, ky, kx]`` coil maps, ``Σ_c |S_c|² = 1`` where ``eigenvalues > crop``,
        0 elsewhere (numpy or cupy, like the input).
    eigenvalues : float32 ``[ky, kx]`` dominant eigenvalue of the ESPIRiT operator per pixel.
    n_kernels : number of calibration kernels kept (signal subspace dimension).
    calib_shape : shape ``(ny, nx)`` of the calibration region used.
    """

    maps: Any
    eigenvalues: Any
    n_kernels: int
    calib_shape: tuple[int, int]


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(v, int | np.integer):
        return int(v), int(v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints: {v!r}")
    return t[0], t[1]


def calibration_region(
    kspace: Any,
    calib: int | tuple[int, int] = 24,
    mask: Any | None = None,
) -> Any:
    """Extract the fully sampled k-space centre ``[C, ny, nx]``.

    The largest centred box that is fully sampled is found by growing a rectangle from the
    k-space centre (index ``N // 2``) one line at a time in each direction while every sample in
    it is acquired; it is then limited to ``calib`` (like ``bart ecalib -r``).

    Parameters
    ----------
    kspace : complex ``[C, ky, kx]`` (numpy or cupy); unsampled points are zero.
    calib : maximum calibration size, an int (square) or ``(ny, nx)``.
    mask : optional bool ``[ky, kx]`` or ``[ky]`` sampling mask; when ``None`` the sampled points
        are the ones that are nonzero in any coil.

    Returns
    -------
    complex ``[C, ny, nx]`` view of the centre of ``kspace``.

    Raises
    ------
    DataError
        When no fully sampled centre of at least 2 × 2 points exists.
    """
    xp = get_xp(kspace)
    if kspace.ndim != 3:
        raise ValueError(f"kspace must be [C, ky, kx]: {kspace.shape=}")
    _, ny, nx = kspace.shape
    cy, cx = _pair(calib, "calib")
    if mask is None:
        sampled = xp.any(kspace != 0, axis=0)
    else:
        sampled = xp.asarray(mask, dtype=bool)
        if sampled.ndim == 1:
            sampled = xp.broadcast_to(sampled[:, None], (ny, nx))
        if sampled.shape != (ny, nx):
            raise ValueError(f"mask {sampled.shape} does not fit kspace {kspace.shape}")
    s = np.asarray(sampled.get() if hasattr(sampled, "get") else sampled)
    # half-extents below/above the centre; box = [y0 - lo_y, y0 + hi_y) etc.
    y0, x0 = ny // 2, nx // 2
    lo_y = hi_y = lo_x = hi_x = 0
    if not s[y0, x0]:
        raise DataError("the k-space centre is not sampled: no calibration region")
    lo_y, hi_y, lo_x, hi_x = 0, 1, 0, 1
    grown = True
    while grown:
        grown = False
        # grow in y (one line at each side when possible), then in x
        for axis in ("y", "x"):
            if axis == "y" and hi_y + lo_y < cy:
                for side in (-1, 1):
                    if hi_y + lo_y >= cy:
                        break
                    row = y0 - lo_y - 1 if side < 0 else y0 + hi_y
                    if 0 <= row < ny and s[row, x0 - lo_x : x0 + hi_x].all():
                        if side < 0:
                            lo_y += 1
                        else:
                            hi_y += 1
                        grown = True
            if axis == "x" and hi_x + lo_x < cx:
                for side in (-1, 1):
                    if hi_x + lo_x >= cx:
                        break
                    col = x0 - lo_x - 1 if side < 0 else x0 + hi_x
                    if 0 <= col < nx and s[y0 - lo_y : y0 + hi_y, col].all():
                        if side < 0:
                            lo_x += 1
                        else:
                            hi_x += 1
                        grown = True
    if lo_y + hi_y < 2 or lo_x + hi_x < 2:
        raise DataError(
            f"fully sampled k-space centre is only {lo_y + hi_y}x{lo_x + hi_x}: cannot calibrate"
        )
    return kspace[:, y0 - lo_y : y0 + hi_y, x0 - lo_x : x0 + hi_x]


def _calibration_kernels(cal: Any, kernel: tuple[int, int], threshold: float) -> Any:
    """Signal-subspace kernels ``[n, C, ky, kx]`` from a calibration region ``[C, ny, nx]``."""
    xp = get_xp(cal)
    c, ny, nx = cal.shape
    ky, kx = kernel
    my, mx = ny - ky + 1, nx - kx + 1
    if my < 1 or mx < 1:
        raise DataError(f"calibration region {ny}x{nx} is smaller than the kernel {ky}x{kx}")
    # patches[c, i, j, p, q] = cal[c, p + i, q + j]; one row of A per (p, q)
    patches = xp.stack(
        [cal[:, i : i + my, j : j + mx] for i in range(ky) for j in range(kx)], axis=1
    )
    a = patches.reshape(c * ky * kx, my * mx)  # Aᵀ: columns are the rows of A
    # AᴴA = V Σ² Vᴴ; rows of A lie in the span of conj(V): eigh of the small Gram matrix is
    # cheaper than an SVD of A and gives BART's eigenvalues σ² directly
    gram = (a.conj() @ a.T).astype(np.complex64)
    ev, vec = xp.linalg.eigh(gram)
    ev = ev[::-1].astype(np.float64)
    vec = vec[:, ::-1]
    if float(ev[0]) <= 0:
        raise DataError("calibration region is all zeros")
    n = int((ev / ev[0] > threshold).sum())
    logger.debug("ESPIRiT: keeping %d/%d kernels (threshold %g)", n, ev.shape[0], threshold)
    return xp.ascontiguousarray(vec[:, :n].conj().T).reshape(n, c, ky, kx)


@contextlib.contextmanager
def _blas_threads(xp: Any, n: int | None) -> Iterator[None]:
    """Limit the BLAS thread pool for numpy work (no-op for cupy, ``n=None`` or no threadpoolctl).

    ESPIRiT's BLAS calls are many small products; with a shared, busy CPU a multithreaded
    OpenBLAS spin-waits on its helper threads and runs up to 10x slower than with one thread.
    """
    if xp is not np or n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def _operator_coefficients(kernels: Any) -> Any:
    """Fourier coefficients ``[2ky-1, 2kx-1, C, C]`` of the per-pixel ESPIRiT operator ``W(x)``.

    ``W(x) = Σ_s coef[s] e^{+2πi s·x/N}`` for frequencies ``s = -(k-1) .. k-1`` (in that order),
    ``x`` the pixel position relative to the centre of the (centred) image grid.
    """
    xp = get_xp(kernels)
    n, c, ky, kx = kernels.shape
    ly, lx = 2 * ky, 2 * kx  # >= 2k-1 points hold the products' spectrum without aliasing
    grid = xp.zeros((n, c, ly, lx), dtype=np.complex64)
    grid[:, :, :ky, :kx] = kernels
    g = xp.fft.ifftn(grid, axes=(-2, -1)) * np.float32(ly * lx)  # g_j(x) = Σ_r b_j[r] e^{2πi r·x/L}
    g = g.transpose(2, 3, 0, 1)  # [ly, lx, n, c]
    w_small = xp.matmul(g.swapaxes(-1, -2), g.conj()) / np.float32(ky * kx)  # [ly, lx, c, c]
    coef = xp.fft.fftn(w_small, axes=(0, 1)) / np.float32(ly * lx)
    iy = np.r_[ly - (ky - 1) : ly, 0:ky]  # frequencies -(k-1) .. k-1
    ix = np.r_[lx - (kx - 1) : lx, 0:kx]
    return xp.ascontiguousarray(coef[xp.asarray(iy)][:, xp.asarray(ix)]).astype(np.complex64)


def _evaluate_operator(coef: Any, pos_y: Any, pos_x: Any, n: tuple[int, int]) -> Any:
    """``W`` at positions ``pos_y × pos_x`` (pixels from the centre, period ``n``): ``[Y, X, C, C]``.

    Two small matrix products with the DFT matrices ``E[i, s] = e^{2πi s·pos_i/N}`` (exact; about
    as cheap as an FFT for ``2k-1`` coefficients and already in pixel-major layout).
    """
    xp = get_xp(coef)
    sy, sx, c, _ = coef.shape
    fy = xp.arange(sy, dtype=np.float64) - (sy - 1) // 2
    fx = xp.arange(sx, dtype=np.float64) - (sx - 1) // 2
    ey = xp.exp(2j * np.pi * xp.outer(pos_y, fy) / n[0]).astype(np.complex64)  # [Y, sy]
    ex = xp.exp(2j * np.pi * xp.outer(pos_x, fx) / n[1]).astype(np.complex64)  # [X, sx]
    t = (ey @ coef.reshape(sy, sx * c * c)).reshape(-1, sx, c * c)  # [Y, sx, cc]
    w = xp.matmul(ex[None], t)  # [Y, X, cc]
    return w.reshape(w.shape[0], w.shape[1], c, c)


def _dominant_eigenvectors(w: Any, squarings: int) -> tuple[Any, Any]:
    """Dominant eigenvector ``[..., C]`` and eigenvalue ``[...]`` of Hermitian ``w [..., C, C]``.

    Repeated squaring ``M <- M² / tr(M²)`` gives ``W^{2^s}`` up to scale, whose columns all point
    along the dominant eigenvector; the column with the largest diagonal is taken, refined by
    one multiplication with ``W`` and normalized; the eigenvalue is the Rayleigh quotient.
    """
    xp = get_xp(w)
    eps = np.float32(1e-30)
    m = w
    for _ in range(squarings):
        m = xp.matmul(m, m)
        tr = xp.real(xp.trace(m, axis1=-2, axis2=-1))
        m *= (1 / (tr + eps)).astype(np.float32)[..., None, None]  # multiply: cheaper than /
    diag = xp.real(xp.diagonal(m, axis1=-2, axis2=-1))
    idx = xp.argmax(diag, axis=-1)
    v = xp.take_along_axis(m, idx[..., None, None], axis=-1)[..., 0]  # [..., C]
    v, lam = _power_step(w, v)
    return v, lam


def _power_step(w: Any, v: Any) -> tuple[Any, Any]:
    """``v <- W v / ||W v||`` and the Rayleigh quotient ``vᴴ W v`` of the new ``v``."""
    v, lam, _ = _power_step_residual(w, v)
    return v, lam


def _power_step_residual(w: Any, v: Any) -> tuple[Any, Any, Any]:
    """:func:`_power_step` plus the eigen-residual ``||W v - λ v||`` of the new ``v``."""
    xp = get_xp(w)
    eps = np.float32(1e-30)
    v = xp.matmul(w, v[..., None])[..., 0]
    v = v * (1 / (xp.linalg.norm(v, axis=-1) + eps))[..., None]
    wv = xp.matmul(w, v[..., None])[..., 0]
    lam = xp.real(xp.sum(xp.conj(v) * wv, axis=-1)).astype(np.float32)
    res = xp.linalg.norm(wv - lam[..., None] * v, axis=-1)
    return v, lam, res


def _align_phase(v: Any, u: Any) -> Any:
    """Rotate each vector of ``v [..., C]`` so that ``uᴴ v`` is real and non-negative."""
    xp = get_xp(v)
    z = v @ u.conj()
    mag = xp.abs(z)
    ph = xp.where(mag > 0, xp.conj(z) / xp.maximum(mag, np.float32(1e-30)), 1)
    return v * ph.astype(np.complex64)[..., None]


def _principal_direction(v: Any, weight: Any) -> Any:
    """First principal component ``[C]`` of the vectors ``v [..., C]`` weighted by ``weight``."""
    xp = get_xp(v)
    c = v.shape[-1]
    flat = v.reshape(-1, c) * xp.sqrt(weight.reshape(-1, 1))
    cov = flat.T @ flat.conj()
    _, vecs = xp.linalg.eigh(cov)
    return vecs[:, -1].conj()  # cov = Σ v vᴴ transposed; its top eigenvector conjugated


def _interp_periodic(v: Any, n: int, axis: int) -> Any:
    """Linear interpolation of ``v`` sampled at ``j · n / m`` (``m = v.shape[axis]``) to ``n`` points.

    Periodic (the ESPIRiT operator is periodic over the field of view).
    """
    xp = get_xp(v)
    m = v.shape[axis]
    t = np.arange(n) * (m / n)
    j0 = np.floor(t).astype(np.int64)
    wt = (t - j0).astype(np.float32)
    j1 = (j0 + 1) % m
    a = xp.take(v, xp.asarray(j0), axis=axis)
    b = xp.take(v, xp.asarray(j1), axis=axis)
    shape = [1] * v.ndim
    shape[axis] = n
    wt = xp.asarray(wt).reshape(shape)
    return a * (1 - wt) + b * wt


def espirit(
    kspace: Any,
    calib: int | tuple[int, int] = 24,
    kernel: int | tuple[int, int] = 6,
    threshold: float = 0.001,
    crop: float = 0.8,
    mask: Any | None = None,
    coarse: int | None = None,
    squarings: int = 8,
    refine_iter: int = 2,
    residual_tol: float = 1e-3,
    blas_threads: int | None = 1,
) -> EspiritResult:
    """ESPIRiT calibration: coil maps and eigenvalue map (first set of maps only, like ``-m1``).

    The eigenvectors are computed exactly (repeated squaring, effective power ``2**squarings``)
    on a coarse grid of about ``N/4`` points per axis, rotated to a common phase reference,
    interpolated linearly to full size, and refined there by ``refine_iter`` power iterations
    with the exact full-resolution operator. The eigenvalue (for ``crop``) is the full-resolution
    Rayleigh quotient.

    Parameters
    ----------
    kspace : complex ``[C, ky, kx]`` k-space (numpy or cupy) with a fully sampled centre;
        unsampled points are zero.
    calib : maximum calibration region size (``bart ecalib -r``), int or ``(ny, nx)``.
    kernel : kernel size (``bart ecalib -k``), int or ``(ky, kx)``.
    threshold : keep kernels whose squared singular value relative to the largest exceeds this
        (``bart ecalib -t``; 0.001 keeps singular values above ``√0.001 ≈ 3.2 %`` of the largest,
        the same count BART reports).
    crop : maps are set to 0 where the dominant eigenvalue is ``≤ crop`` (``bart ecalib -c``).
    mask : optional sampling mask used to locate the calibration region (see
        :func:`calibration_region`).
    coarse : points per axis of the coarse eigen-solve grid (default ``max(32, N // 4)``,
        capped at ``N``); ``coarse >= N`` solves at full resolution.
    squarings : repeated squarings on the coarse grid.
    refine_iter : power iterations at full resolution (at least 1 is done).
    residual_tol : pixels with eigenvalue above ``0.9 · crop`` whose relative eigen-residual
        ``||W v - λ v|| / λ`` after refinement exceeds this are re-solved exactly (repeated
        squaring at full resolution).
    blas_threads : BLAS threads for the numpy path (``None`` leaves the pool alone); the
        work is many small matrix products, which one thread does best on a shared CPU.

    Returns
    -------
    EspiritResult
        ``maps`` complex64 ``[C, ky, kx]`` with ``Σ_c |S_c|² = 1`` where the eigenvalue exceeds
        ``crop`` and 0 elsewhere; the phase is rotated so that the projection of the maps on
        their first principal component (a virtual body coil) is real and positive, as BART
        does. ``eigenvalues`` float32 ``[ky, kx]``.
    """
    xp = get_xp(kspace)
    if kspace.ndim != 3:
        raise ValueError(f"kspace must be [C, ky, kx]: {kspace.shape=}")
    if not bool(xp.all(xp.isfinite(kspace))):
        raise DataError("k-space contains NaN or Inf values")
    if not 0.0 <= crop < 1.0:
        raise ValueError(f"crop must be in [0, 1): {crop=}")
    if squarings < 0 or refine_iter < 0:
        raise ValueError(f"{squarings=} and {refine_iter=} must be >= 0")
    _, ny, nx = kspace.shape
    ksz = _pair(kernel, "kernel")
    if ny < 2 * ksz[0] - 1 or nx < 2 * ksz[1] - 1:
        raise DataError(f"image {(ny, nx)} is too small for kernel {ksz}")
    cal = calibration_region(kspace, calib, mask).astype(np.complex64)
    if cal.shape[1] < ksz[0] or cal.shape[2] < ksz[1]:
        raise DataError(
            f"calibration region {tuple(cal.shape[1:])} is smaller than the kernel {ksz}: "
            "need more fully sampled centre lines"
        )
    with _blas_threads(xp, blas_threads):
        return _espirit(
            kspace, cal, ksz, threshold, crop, coarse, squarings, refine_iter, residual_tol
        )


def _espirit(
    kspace: Any,
    cal: Any,
    ksz: tuple[int, int],
    threshold: float,
    crop: float,
    coarse: int | None,
    squarings: int,
    refine_iter: int,
    residual_tol: float,
) -> EspiritResult:
    xp = get_xp(kspace)
    _, ny, nx = kspace.shape
    scale = float(xp.abs(cal).max())  # numerical range only; maps are scale invariant
    kernels = _calibration_kernels(cal * np.float32(1 / scale), ksz, threshold)
    coef = _operator_coefficients(kernels)

    # coarse grid: exact eigenvectors at positions j * N / m
    my = min(ny, coarse or max(32, ny // 4))
    mx = min(nx, coarse or max(32, nx // 4))
    py = xp.arange(my, dtype=np.float64) * (ny / my) - ny // 2
    px = xp.arange(mx, dtype=np.float64) * (nx / mx) - nx // 2
    v, lam = _dominant_eigenvectors(_evaluate_operator(coef, py, px, (ny, nx)), squarings)
    u = _principal_direction(v, lam * (lam > crop))
    v = _align_phase(v, u)

    # full resolution: interpolate, refine with the exact operator
    w = _evaluate_operator(
        coef,
        xp.arange(ny, dtype=np.float64) - ny // 2,
        xp.arange(nx, dtype=np.float64) - nx // 2,
        (ny, nx),
    )
    if (my, mx) != (ny, nx):
        v = _interp_periodic(_interp_periodic(v, ny, 0), nx, 1)
    for _ in range(max(refine_iter, 1)):
        v, lam, res = _power_step_residual(w, v)
    # pixels near the support whose start vector was poor (interpolated across the support's
    # edge) and whose eigenvalue gap is small: solve them exactly at full resolution
    bad = (lam > 0.9 * crop) & (res > residual_tol * xp.maximum(lam, np.float32(1e-6)))
    n_bad = int(bad.sum())
    if n_bad:
        logger.debug("ESPIRiT: %d pixels solved exactly at full resolution", n_bad)
        vb, lb = _dominant_eigenvectors(w[bad], squarings)
        v[bad] = vb
        lam[bad] = lb
    v = _align_phase(v, u)
    support = lam > crop
    maps = xp.ascontiguousarray(xp.moveaxis(v * support[..., None], -1, 0)).astype(np.complex64)
    return EspiritResult(maps, lam, int(kernels.shape[0]), (int(cal.shape[1]), int(cal.shape[2])))


def espirit_maps(
    kspace: Any,
    calib: int | tuple[int, int] = 24,
    kernel: int | tuple[int, int] = 6,
    threshold: float = 0.001,
    crop: float = 0.8,
    mask: Any | None = None,
    **kwargs: Any,
) -> Any:
    """ESPIRiT coil maps ``[C, ky, kx]`` (complex64, numpy or cupy like ``kspace``).

    ``Σ_c |S_c|² = 1`` where the ESPIRiT eigenvalue exceeds ``crop`` and 0 elsewhere.
    See :func:`espirit` for the parameters (``coarse``, ``squarings``, ``refine_iter`` pass
    through ``kwargs``) and the method.
    """
    return espirit(
        kspace, calib=calib, kernel=kernel, threshold=threshold, crop=crop, mask=mask, **kwargs
    ).maps
