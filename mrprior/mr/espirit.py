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
import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# imported before any ``threadpool_limits`` block so that the limit covers scipy's own BLAS
from scipy.linalg import eigh
from scipy.linalg.blas import cherk
from scipy.sparse.linalg import eigsh

from mrprior.backend import get_xp
from mrprior.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "EspiritResult",
    "calibration_box",
    "calibration_region",
    "encoded_calibration_region",
    "espirit",
    "espirit_maps",
]


@dataclass
class EspiritResult:
    """Output of :func:`espirit`.

    Attributes
    ----------
    maps : complex64 ``[C, *spatial]`` coil maps (``[C, y, x]`` or ``[C, z, y, x]``),
        ``Σ_c |S_c|² = 1`` where ``eigenvalues > crop``, 0 elsewhere (numpy or cupy, like the
        input).
    eigenvalues : float32 ``[*spatial]`` dominant eigenvalue of the ESPIRiT operator per voxel.
    n_kernels : number of calibration kernels kept (signal subspace dimension).
    calib_shape : shape of the calibration region used, ``(ny, nx)`` or ``(nz, ny, nx)``.
    """

    maps: Any
    eigenvalues: Any
    n_kernels: int
    calib_shape: tuple[int, ...]


def _sizes(v: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """An int (same size on every axis) or one int per spatial axis."""
    if isinstance(v, int | np.integer):
        return (int(v),) * ndim
    t = tuple(int(a) for a in v)
    if len(t) != ndim:
        raise ValueError(f"{name} must be an int or {ndim} ints for {ndim}D k-space: {v!r}")
    return t


def _spatial_ndim(kspace: Any) -> int:
    if kspace.ndim not in (3, 4):
        raise ValueError(f"kspace must be [C, ky, kx] or [C, kz, ky, kx]: {kspace.shape=}")
    return kspace.ndim - 1


def calibration_region(
    kspace: Any,
    calib: int | Sequence[int] = 24,
    mask: Any | None = None,
) -> Any:
    """Extract the fully sampled k-space centre ``[C, ny, nx]`` or ``[C, nz, ny, nx]``.

    The largest centred box that is fully sampled is found by growing a box from the k-space
    centre (index ``N // 2`` on every axis) one plane at a time on each side of each axis (in
    axis order) while every sample in it is acquired; it is then limited to ``calib`` (like
    ``bart ecalib -r``).

    Parameters
    ----------
    kspace : complex ``[C, ky, kx]`` or ``[C, kz, ky, kx]`` (numpy or cupy); unsampled points
        are zero.
    calib : maximum calibration size, an int (same on every axis) or one int per axis.
    mask : optional bool sampling mask of the spatial shape, or without the readout axis
        (``[ky]`` for 2D, ``[kz, ky]`` for 3D; broadcast along the fully sampled readout); when
        ``None`` the sampled points are the ones that are nonzero in any coil.

    Returns
    -------
    complex ``[C, *calib_shape]`` view of the centre of ``kspace``.

    Raises
    ------
    DataError
        When no fully sampled centre of at least 2 points per axis exists.
    """
    return kspace[(slice(None), *calibration_box(kspace, calib, mask))]


def calibration_box(
    kspace: Any,
    calib: int | Sequence[int] = 24,
    mask: Any | None = None,
) -> tuple[slice, ...]:
    """The index box (one slice per spatial axis) of :func:`calibration_region`."""
    xp = get_xp(kspace)
    d = _spatial_ndim(kspace)
    spatial = tuple(int(n) for n in kspace.shape[1:])
    limit = _sizes(calib, d, "calib")
    if mask is None:
        sampled = xp.any(kspace != 0, axis=0)
    else:
        sampled = xp.asarray(mask, dtype=bool)
        if sampled.ndim == d - 1 and sampled.shape == spatial[:-1]:
            sampled = xp.broadcast_to(sampled[..., None], spatial)
        if sampled.shape != spatial:
            raise ValueError(f"mask {sampled.shape} does not fit kspace {kspace.shape}")
    s = np.asarray(sampled.get() if hasattr(sampled, "get") else sampled)
    centre = tuple(n // 2 for n in spatial)
    if not s[centre]:
        raise DataError("the k-space centre is not sampled: no calibration region")
    # box = [centre - lo, centre + hi) on every axis
    lo, hi = [0] * d, [1] * d

    def box(axis: int = -1, index: int = 0) -> tuple[slice | int, ...]:
        return tuple(
            index if a == axis else slice(centre[a] - lo[a], centre[a] + hi[a]) for a in range(d)
        )

    grown = True
    while grown:
        grown = False
        for a in range(d):  # one plane at each side of each axis when possible
            for side in (-1, 1):
                if lo[a] + hi[a] >= limit[a]:
                    break
                idx = centre[a] - lo[a] - 1 if side < 0 else centre[a] + hi[a]
                if 0 <= idx < spatial[a] and s[box(a, idx)].all():
                    if side < 0:
                        lo[a] += 1
                    else:
                        hi[a] += 1
                    grown = True
    size = [lo[a] + hi[a] for a in range(d)]
    if min(size) < 2:
        raise DataError(
            f"fully sampled k-space centre is only {'x'.join(map(str, size))}: cannot calibrate"
        )
    return tuple(slice(centre[a] - lo[a], centre[a] + hi[a]) for a in range(d))


def encoded_calibration_region(
    encoded: Any, start: Sequence[int], box: Sequence[slice], readout: int
) -> Any:
    """The calibration region of :func:`calibration_box` ``box`` (found on the recon grid, whose
    readout has ``readout`` samples) taken from ``encoded``, the k-space centre kept at the
    encoded (oversampled) readout: complex ``[C, *box sizes but the readout, nx_enc]`` whose
    first line / partition sits at ``start`` (``(y0,)`` or ``(z0, y0)``) of the recon grid. Along
    the readout the region covers the same k-space extent as the recon-grid box, i.e.
    ``nx_enc / readout`` times as many (twice as finely spaced) samples, about the centre
    ``nx_enc // 2``.

    Raises
    ------
    ValueError
        ``encoded`` does not match the box's dimensions, or its readout is shorter than ``readout``.
    DataError
        The box reaches lines or partitions that ``encoded`` does not hold.
    """
    d = len(box)
    if encoded.ndim != d + 1 or len(start) != d - 1:
        raise ValueError(
            f"encoded calibration data must be [C, {'kz, ' if d == 3 else ''}ky, kx_enc] with "
            f"{d - 1} start indices: {encoded.shape=}, {start=}"
        )
    nx_enc = int(encoded.shape[-1])
    if nx_enc < readout:
        raise ValueError(f"encoded readout {nx_enc} is shorter than the recon readout {readout}")
    index: list[slice] = []
    for a in range(d - 1):
        s0, s1 = box[a].start - int(start[a]), box[a].stop - int(start[a])
        if s0 < 0 or s1 > encoded.shape[1 + a]:
            raise DataError(
                f"the calibration region [{box[a].start}, {box[a].stop}) along axis {a} reaches "
                f"beyond the k-space centre kept at the encoded readout "
                f"[{start[a]}, {int(start[a]) + encoded.shape[1 + a]})"
            )
        index.append(slice(s0, s1))
    width = box[-1].stop - box[-1].start
    wide = min(nx_enc, round(width * nx_enc / readout))
    x0 = nx_enc // 2 - (readout // 2 - box[-1].start) * nx_enc // readout
    x0 = min(max(x0, 0), nx_enc - wide)
    return encoded[(slice(None), *index, slice(x0, x0 + wide))]


def _calibration_kernels(cal: Any, kernel: tuple[int, ...], threshold: float) -> Any:
    """Signal-subspace kernels ``[n, C, *kernel]`` from a calibration region ``[C, *calib]``."""
    xp = get_xp(cal)
    c, size = cal.shape[0], cal.shape[1:]
    valid = tuple(n - k + 1 for n, k in zip(size, kernel, strict=True))
    if min(valid) < 1:
        raise DataError(
            f"calibration region {_fmt(size)} is smaller than the kernel {_fmt(kernel)}"
        )
    # patches[c, o, p] = cal[c, p + o]; one row of A per position p, one column per (c, o)
    patches = xp.stack(
        [
            cal[(slice(None), *(slice(o, o + m) for o, m in zip(off, valid, strict=True)))]
            for off in itertools.product(*(range(k) for k in kernel))
        ],
        axis=1,
    )
    a = patches.reshape(c * math.prod(kernel), math.prod(valid))  # Aᵀ: columns are rows of A
    del patches
    # AᴴA = V Σ² Vᴴ; rows of A lie in the span of conj(V): eigh of the small Gram matrix is
    # cheaper than an SVD of A and gives BART's eigenvalues σ² directly
    ev, vec = _gram_eigh(a, threshold)
    del a
    n = int((ev / ev[0] > threshold).sum())
    logger.debug(
        "ESPIRiT: keeping %d/%d kernels (threshold %g)", n, c * math.prod(kernel), threshold
    )
    return xp.ascontiguousarray(vec[:, :n].conj().T).reshape(n, c, *kernel)


def _gram_eigh(a: Any, threshold: float) -> tuple[Any, Any]:
    """Eigenpairs of the Gram matrix ``G = conj(a) aᵀ`` of ``a [M, P]`` with ``λ > threshold·λ₀``.

    Returns the eigenvalues (descending, float64, at least the largest ``λ₀``) and their
    eigenvectors as columns. numpy: ``cherk`` forms one triangle of ``G`` (half the work of a
    product); ``λ₀`` is estimated by Lanczos (ARPACK), then LAPACK ``cheevr`` (MRRR) computes only
    the eigenpairs above a slightly lower bound (exactly thresholded by the caller) — for the
    ``8·6³ = 1728``-column 3D calibration matrix this is many times faster than all eigenpairs.
    cupy: ``G`` by a product and all eigenpairs by ``eigh``.

    Raises
    ------
    DataError
        ``G`` is zero (an all-zero calibration region).
    """
    xp = get_xp(a)
    if xp is not np:
        ev, vec = xp.linalg.eigh((a.conj() @ a.T).astype(np.complex64))
        ev, vec = ev[::-1].astype(np.float64), vec[:, ::-1]
    else:
        m = a.shape[0]
        # a (C order [M, P]) is the Fortran-ordered [P, M] matrix aᵀ; cherk(trans=2) gives
        # (aᵀ)ᴴ aᵀ = conj(a) aᵀ in the upper triangle
        gram = cherk(1.0, np.asarray(a, dtype=np.complex64).T, trans=2, lower=0)
        if m > 64:
            full = np.triu(gram) + np.triu(gram, 1).conj().T
            lam0 = float(eigsh(full, k=1, which="LA", v0=np.ones(m, np.complex64), tol=1e-6)[0][0])
            del full
            lower_bound = threshold * lam0 * (1 - 1e-3) if lam0 > 0 else -1.0
            ev, vec = eigh(
                gram,
                lower=False,
                driver="evr",
                subset_by_value=(lower_bound, np.inf),
                overwrite_a=True,
                check_finite=False,
            )
        else:
            ev, vec = eigh(gram, lower=False, driver="evr", overwrite_a=True, check_finite=False)
        ev, vec = ev[::-1].astype(np.float64), vec[:, ::-1]
    if ev.shape[0] == 0 or float(ev[0]) <= 0:
        raise DataError("calibration region is all zeros")
    return ev, vec


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(int(n)) for n in shape)


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
    """Fourier coefficients ``[2k₁-1, ..., 2k_d-1, C, C]`` of the per-voxel ESPIRiT operator.

    ``W(x) = Σ_s coef[s] e^{+2πi s·x/N}`` for frequencies ``s = -(k-1) .. k-1`` per axis (in that
    order), ``x`` the voxel position relative to the centre of the (centred) image grid.
    """
    xp = get_xp(kernels)
    n, c = kernels.shape[:2]
    k = tuple(int(v) for v in kernels.shape[2:])
    d = len(k)
    size = tuple(2 * v for v in k)  # >= 2k-1 points hold the products' spectrum without aliasing
    grid = xp.zeros((n, c, *size), dtype=np.complex64)
    grid[(slice(None), slice(None), *(slice(0, v) for v in k))] = kernels
    axes = tuple(range(2, 2 + d))
    g = xp.fft.ifftn(grid, axes=axes) * np.float32(math.prod(size))  # g_j(x) = Σ_r b_j[r] e^{..}
    g = xp.moveaxis(g, (0, 1), (-2, -1))  # [*size, n, c]
    w_small = xp.matmul(g.swapaxes(-1, -2), g.conj()) / np.float32(math.prod(k))  # [*size, c, c]
    coef = xp.fft.fftn(w_small, axes=tuple(range(d))) / np.float32(math.prod(size))
    for a in range(d):  # frequencies -(k-1) .. k-1
        idx = np.r_[size[a] - (k[a] - 1) : size[a], 0 : k[a]]
        coef = xp.take(coef, xp.asarray(idx), axis=a)
    return xp.ascontiguousarray(coef).astype(np.complex64)


def _evaluate_operator(coef: Any, positions: Sequence[Any], n: Sequence[int]) -> Any:
    """``W`` on the grid ``positions[0] × positions[1] × ...``: ``[P₁, ..., P_d, C, C]``.

    ``positions[a]`` are voxel offsets from the centre along axis ``a`` (period ``n[a]``). One
    small matrix product per axis with the DFT matrix ``E[i, s] = e^{2πi s·pos_i/N}`` (exact;
    about as cheap as an FFT for ``2k-1`` coefficients and already in voxel-major layout),
    the readout axis first; the result is a non-contiguous view for ``d > 1`` (each ``C × C``
    matrix contiguous).
    """
    xp = get_xp(coef)
    d = len(positions)
    c = coef.shape[-1]
    points = [int(p.shape[0]) for p in positions]
    # the readout (last) axis first, whose positions the caller chunks: no intermediate then
    # exceeds the result (taken last, a few readout positions of a 3D grid would need all
    # P_z × P_y positions times the readout's 11 coefficients: 11× the chunk), and the order,
    # hence the rounding, does not depend on the chunk size
    order = [d - 1, *range(d - 1)]
    t = xp.ascontiguousarray(xp.moveaxis(coef, order, list(range(d)))).reshape(1, -1)
    prefix = 1
    for a in order:
        sa = coef.shape[a]
        freq = xp.arange(sa, dtype=np.float64) - (sa - 1) // 2
        e = xp.exp(2j * np.pi * xp.outer(positions[a], freq) / n[a]).astype(np.complex64)
        t = xp.matmul(e, t.reshape(prefix, sa, -1))  # [prefix, P_a, rest]
        prefix *= points[a]
    t = t.reshape(*(points[a] for a in order), c, c)
    return xp.moveaxis(t, list(range(d)), order)  # a view in the grid's axis order


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


def _interp_periodic(
    v: Any, n: int, axis: int, index: Any | None = None, points: int | None = None, first: int = 0
) -> Any:
    """Linear interpolation of ``v`` sampled at ``j · n / m`` to ``n`` points.

    Periodic (the ESPIRiT operator is periodic over the field of view). ``index`` (host ints)
    selects which of the ``n`` output points to compute (default all). ``v`` may hold only the
    samples ``j = first, first + 1, ...`` of the ``m = points`` over the period (default: all
    ``m = v.shape[axis]``); the selected outputs must then fall between two of them.
    """
    xp = get_xp(v)
    m = v.shape[axis] if points is None else int(points)
    out = np.arange(n) if index is None else np.asarray(index)
    t = out * (m / n)
    j0 = np.floor(t).astype(np.int64)
    wt = (t - j0).astype(np.float32)
    j1 = (j0 + 1) % m
    j0, j1 = j0 - first, j1 - first
    if first or m != v.shape[axis]:
        held = v.shape[axis]
        if j0.min() < 0 or j1.min() < 0 or j0.max() >= held or j1.max() >= held:
            raise ValueError("interpolation outside the coarse samples held")
    a = xp.take(v, xp.asarray(j0), axis=axis)
    b = xp.take(v, xp.asarray(j1), axis=axis)
    shape = [1] * v.ndim
    shape[axis] = out.shape[0]
    wt = xp.asarray(wt).reshape(shape)
    return a * (1 - wt) + b * wt


def espirit(
    kspace: Any,
    calib: int | Sequence[int] = 24,
    kernel: int | Sequence[int] = 6,
    threshold: float = 0.001,
    crop: float = 0.8,
    mask: Any | None = None,
    coarse: int | None = None,
    squarings: int = 8,
    refine_iter: int = 2,
    residual_tol: float = 1e-3,
    blas_threads: int | None = 1,
    chunk_bytes: int = 512 * 2**20,
    encoded: Any | None = None,
    encoded_start: Sequence[int] = (),
) -> EspiritResult:
    """ESPIRiT calibration of 2D or 3D k-space: coil maps and eigenvalue map (like ``-m1``).

    2D k-space ``[C, ky, kx]`` gives maps ``[C, y, x]``; 3D k-space ``[C, kz, ky, kx]`` is
    calibrated from its 3D calibration box with 3D kernels and gives maps ``[C, z, y, x]`` (what
    ``bart ecalib`` computes on 3D data). The eigenvectors are computed exactly (repeated
    squaring, effective power ``2**squarings``) on a coarse grid of about ``N/4`` points per
    axis, rotated to a common phase reference, interpolated linearly to full size, and refined
    there by ``refine_iter`` power iterations with the exact full-resolution operator, which is
    evaluated in chunks of readout (x) positions of at most ``chunk_bytes`` (a 2D slice of usual
    size is one chunk). The eigenvalue (for ``crop``) is the full-resolution Rayleigh quotient.

    Parameters
    ----------
    kspace : complex ``[C, ky, kx]`` or ``[C, kz, ky, kx]`` k-space (numpy or cupy) with a fully
        sampled centre; unsampled points are zero.
    calib : maximum calibration region size (``bart ecalib -r``), an int or one per axis.
    kernel : kernel size (``bart ecalib -k``), an int or one per axis.
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
    residual_tol : voxels with eigenvalue above ``0.9 · crop`` whose relative eigen-residual
        ``||W v - λ v|| / λ`` after refinement exceeds this are re-solved exactly (repeated
        squaring at full resolution).
    blas_threads : BLAS threads for the numpy path (``None`` leaves the pool alone); the
        work is many small matrix products, which one thread does best on a shared CPU.
    chunk_bytes : memory bound of one chunk of the full-resolution operator (``C²`` complex64
        values per voxel); larger chunks are not faster.
    encoded, encoded_start : optional k-space centre kept at the encoded (oversampled) readout,
        complex ``[C, cy, kx_enc]`` or ``[C, cz, cy, kx_enc]`` whose first line / partition sits
        at ``encoded_start`` of ``kspace``'s grid (``(y0,)`` or ``(z0, y0)``). With it the
        calibration region comes from these data (:func:`encoded_calibration_region`) and the
        ESPIRiT operator is periodic over the encoded field of view along the readout; the maps
        are returned for the central ``kx`` positions (the recon field of view). An object that
        fills the recon field of view along the readout then meets no wrap-around edge in the
        maps: on the recon grid its two readout ends are neighbours, and maps from a small
        kernel cannot follow the jump between the coils' sensitivities there.

    Returns
    -------
    EspiritResult
        ``maps`` complex64 ``[C, *spatial]`` with ``Σ_c |S_c|² = 1`` where the eigenvalue
        exceeds ``crop`` and 0 elsewhere; the phase is rotated so that the projection of the
        maps on their first principal component (a virtual body coil) is real and positive, as
        BART does. ``eigenvalues`` float32 ``[*spatial]``.
    """
    xp = get_xp(kspace)
    d = _spatial_ndim(kspace)
    if not bool(xp.all(xp.isfinite(kspace))):
        raise DataError("k-space contains NaN or Inf values")
    if not 0.0 <= crop < 1.0:
        raise ValueError(f"crop must be in [0, 1): {crop=}")
    if squarings < 0 or refine_iter < 0:
        raise ValueError(f"{squarings=} and {refine_iter=} must be >= 0")
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive: {chunk_bytes=}")
    spatial = tuple(int(n) for n in kspace.shape[1:])
    ksz = _sizes(kernel, d, "kernel")
    if min(ksz) < 1:
        raise ValueError(f"kernel sizes must be >= 1: {kernel!r}")
    if any(n < 2 * k - 1 for n, k in zip(spatial, ksz, strict=True)):
        raise DataError(f"image {spatial} is too small for kernel {ksz}")
    box = calibration_box(kspace, calib, mask)
    period = spatial
    if encoded is None:
        cal = kspace[(slice(None), *box)]
    else:
        if encoded.shape[0] != kspace.shape[0]:
            raise ValueError(f"{encoded.shape=} and {kspace.shape=} differ in coils")
        cal = encoded_calibration_region(encoded, encoded_start, box, spatial[-1])
        if not bool(xp.all(xp.isfinite(cal))):
            raise DataError("the encoded calibration k-space contains NaN or Inf values")
        period = (*spatial[:-1], int(encoded.shape[-1]))
    cal = cal.astype(np.complex64)
    if any(m < k for m, k in zip(cal.shape[1:], ksz, strict=True)):
        raise DataError(
            f"calibration region {tuple(cal.shape[1:])} is smaller than the kernel {ksz}: "
            "need more fully sampled centre lines"
        )
    with _blas_threads(xp, blas_threads):
        return _espirit(
            kspace,
            cal,
            ksz,
            threshold,
            crop,
            coarse,
            squarings,
            refine_iter,
            residual_tol,
            chunk_bytes,
            period,
        )


def _espirit(
    kspace: Any,
    cal: Any,
    ksz: tuple[int, ...],
    threshold: float,
    crop: float,
    coarse: int | None,
    squarings: int,
    refine_iter: int,
    residual_tol: float,
    chunk_bytes: int,
    period: tuple[int, ...],
) -> EspiritResult:
    """:func:`espirit` from the calibration region ``cal``; the operator is periodic over
    ``period`` (the recon grid, or the encoded readout) and evaluated at the centred positions
    of ``kspace``'s grid."""
    xp = get_xp(kspace)
    spatial = tuple(int(n) for n in kspace.shape[1:])
    d = len(spatial)
    scale = float(xp.abs(cal).max())  # numerical range only; maps are scale invariant
    kernels = _calibration_kernels(cal * np.float32(1 / scale), ksz, threshold)
    coef = _operator_coefficients(kernels)
    c = int(coef.shape[-1])

    # coarse grid over the period: exact eigenvectors at positions j * N / m; along an encoded
    # readout longer than the recon one only the samples that bracket the recon FOV (memory)
    m = tuple(min(n, coarse or max(32, n // 4)) for n in period)
    pos = [
        xp.arange(mi, dtype=np.float64) * (n / mi) - n // 2 for n, mi in zip(period, m, strict=True)
    ]
    nx, px = spatial[-1], period[-1]
    shift = px // 2 - nx // 2  # recon-grid readout index -> index over the period
    first = 0
    if px != nx and m[-1] != px:
        t = (np.array([0, nx - 1]) + shift) * (m[-1] / px)
        lo, hi = int(np.floor(t[0])), int(np.floor(t[1])) + 1
        if hi < m[-1]:  # else the recon FOV's samples wrap around: keep them all
            first = lo
            pos[-1] = pos[-1][lo : hi + 1]
    v, lam = _dominant_eigenvectors(_evaluate_operator(coef, pos, period), squarings)
    u = _principal_direction(v, lam * (lam > crop))
    v = _align_phase(v, u)
    for a in range(d - 1):  # interpolate all axes but the readout now, the readout per chunk
        if m[a] != spatial[a]:
            v = _interp_periodic(v, spatial[a], a)

    # full resolution, in chunks of readout positions: interpolate, refine with the exact W
    full = [xp.arange(n, dtype=np.float64) - n // 2 for n in spatial]
    step = max(1, min(nx, chunk_bytes // (math.prod(spatial[:-1]) * c * c * 8)))
    maps = xp.zeros((c, *spatial), dtype=np.complex64)
    eigenvalues = xp.zeros(spatial, dtype=np.float32)
    n_bad = 0
    for x0 in range(0, nx, step):
        xs = np.arange(x0, min(nx, x0 + step))
        w = _evaluate_operator(coef, [*full[:-1], full[-1][x0 : x0 + len(xs)]], period)
        if m[-1] != px:
            vc = _interp_periodic(v, px, d - 1, xs + shift, points=m[-1], first=first)
        else:
            vc = v[..., x0 + shift : x0 + shift + len(xs), :]
        for _ in range(max(refine_iter, 1)):
            vc, lc, res = _power_step_residual(w, vc)
        # voxels near the support whose start vector was poor (interpolated across the
        # support's edge) and whose eigenvalue gap is small: solve them exactly
        bad = (lc > 0.9 * crop) & (res > residual_tol * xp.maximum(lc, np.float32(1e-6)))
        nb = int(bad.sum())
        if nb:
            n_bad += nb
            vb, lb = _dominant_eigenvectors(w[bad], squarings)
            vc[bad] = vb
            lc[bad] = lb
        vc = _align_phase(vc, u)
        support = lc > crop
        maps[..., x0 : x0 + len(xs)] = xp.moveaxis(vc * support[..., None], -1, 0)
        eigenvalues[..., x0 : x0 + len(xs)] = lc
        del w
    if n_bad:
        logger.debug("ESPIRiT: %d voxels solved exactly at full resolution", n_bad)
    return EspiritResult(
        maps, eigenvalues, int(kernels.shape[0]), tuple(int(n) for n in cal.shape[1:])
    )


def espirit_maps(
    kspace: Any,
    calib: int | Sequence[int] = 24,
    kernel: int | Sequence[int] = 6,
    threshold: float = 0.001,
    crop: float = 0.8,
    mask: Any | None = None,
    **kwargs: Any,
) -> Any:
    """ESPIRiT coil maps ``[C, y, x]`` or ``[C, z, y, x]`` (complex64, numpy or cupy like
    ``kspace`` ``[C, ky, kx]`` or ``[C, kz, ky, kx]``).

    ``Σ_c |S_c|² = 1`` where the ESPIRiT eigenvalue exceeds ``crop`` and 0 elsewhere.
    See :func:`espirit` for the parameters (``coarse``, ``squarings``, ``refine_iter``,
    ``chunk_bytes`` pass through ``kwargs``) and the method.
    """
    return espirit(
        kspace, calib=calib, kernel=kernel, threshold=threshold, crop=crop, mask=mask, **kwargs
    ).maps
