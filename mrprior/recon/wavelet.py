"""Orthogonal 2D and 3D Daubechies wavelet transforms (periodic) in torch, and complex
soft-thresholding.

The transform is built from PyWavelets' filter coefficients (``pywt.Wavelet(name).dec_lo``)
as one periodic analysis matrix per level and axis, applied separably to the last two (2D) or
three (3D, e.g. a whole volume) axes with batched matmuls, for any number of levels, one number
for every axis or one per axis. Boundaries are **periodic** (circular), which keeps every level
exactly orthogonal.

Any image size works: the image ``[..., H, W]`` (``[..., D, H, W]``) is zero-padded at the end
of each axis to the next multiple of ``2**levels`` of that axis, transformed, and the adjoint
crops back. Hence ``W.adjoint(W.forward(x)) == x`` (perfect reconstruction) and
``||W x|| == ||x||`` for all sizes; ``W W^H`` is the identity only when no padding is needed.

Coefficients are packed in one array of the padded shape in the usual Mallat layout: the
coarse approximation in the low corner block (``[Hp / 2**L, Wp / 2**L]`` in 2D), then for each
level (coarsest first) the detail bands around it (three in 2D, seven in 3D; fewer where an axis
has no more levels).

Levels: :func:`num_levels` (the same on every axis, the default, what 2D ℓ1 has always used) or
:func:`axis_levels` (BART's rule, per axis: ``bart pics -l1`` decomposes every axis of its image
while that axis is at least 16, each axis on its own, see ``wavelet_num_levels`` and
``wavelet_filter_flags`` in BART's ``src/wavelet/wavelet.c``, ``minsize = min(n, 16)`` in
``src/pics``), what the ℓ1 of a whole 3D volume uses.

The default wavelet is ``"db2"`` (4 taps), the filter BART's ``pics`` uses by default (BART calls
it ``dau2``). BART's own transform uses symmetric boundaries with slightly redundant bands; the
periodic orthogonal transform here is a different discretization of the same wavelet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pywt
import torch
import torch.nn.functional as F

from mrprior.mr.linop import LinearOperator


def analysis_matrix(n: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """One-level periodic analysis matrix ``[n, n]`` (``n`` even) from correlation taps.

    Row ``k < n/2``: ``lo[j]`` at column ``(2k + j) mod n``; row ``n/2 + k``: ``hi[j]`` likewise.
    Orthogonal for the (reversed) decomposition filters of an orthogonal wavelet.
    """
    if n % 2:
        raise ValueError(f"wavelet level size must be even: {n}")
    mat = np.zeros((n, n))
    k = np.arange(n // 2)
    for j in range(len(lo)):
        np.add.at(mat, (k, (2 * k + j) % n), lo[j])
        np.add.at(mat, (n // 2 + k, (2 * k + j) % n), hi[j])
    return mat


def num_levels(shape: tuple[int, ...], min_size: int = 16) -> int:
    """Levels on every axis by default: decompose while all (ceil-halved) sizes are at least
    ``min_size``, i.e. the levels of the smallest axis.

    This is BART's rule for ``pics -l1`` (decompose an axis while it is at least 16) for
    images with equal sides (a 256×256 image gets 5 levels); BART's own rule is per axis
    (:func:`axis_levels`).
    """
    n = min(shape)
    levels = 0
    while n >= min_size and n >= 2:
        n = (n + 1) // 2
        levels += 1
    return max(levels, 1)


def axis_levels(shape: tuple[int, ...], min_size: int = 16) -> tuple[int, ...]:
    """BART's levels per axis (``wavelet_num_levels`` with ``pics``' ``minsize = min(n, 16)``):
    each axis is decomposed while its own band is at least ``min_size`` and stops on its own
    (at least once), the others going on; 48×64×64 gets (2, 3, 3) levels.

    BART's bands of a 4-tap filter hold ``(n + 3) // 2`` samples (slightly redundant), ours
    ``ceil(n / 2)``: the counts agree for every size of the form ``2^k · m`` with ``m >= 16``
    even or a power of two (MRI matrices), and differ by one level for a few odd sizes.
    """
    return tuple(num_levels((n,), min_size) for n in shape)


class WaveletTransform(LinearOperator):
    """Orthogonal multi-level 2D or 3D DWT with periodic boundaries on complex tensors
    ``[..., H, W]`` or ``[..., D, H, W]``.

    Each level applies a one-level periodic analysis matrix ``A_n`` (``n×n``, orthogonal; rows
    ``0..n/2-1`` low-pass, ``n/2..n-1`` high-pass, row ``k`` holding the reversed
    ``dec_lo``/``dec_hi`` taps at columns ``(2k + j) mod n``) along every transformed axis of
    the current approximation block, ``C <- A_h C A_wᵀ`` in 2D (and ``A_d`` along the first axis
    in 3D). An axis with fewer levels than the others (``levels`` per axis) is left alone once
    its levels are done, the other axes of the approximation block going on (BART's
    hierarchical transform). The matrices are built once from PyWavelets' taps; applying them as
    batched matmuls is faster on CPU and GPU than strided convolutions for the image sizes of
    MRI (the work per pixel grows with the side length; fine up to ~1024).

    Coefficients are packed in one array of the padded shape in the Mallat layout generalized
    to any number of axes: the coarse approximation in the low corner block
    ``[P_a / 2**L_a]_a``, then for each level (coarsest first) its detail bands around it.

    Parameters
    ----------
    shape : image size ``(H, W)`` or ``(D, H, W)``.
    wavelet : a PyWavelets orthogonal wavelet name (``"haar"``, ``"db2"``, ``"db4"``, ...).
    levels : number of levels, one for every axis or one per axis; default :func:`num_levels`
        with ``min_size`` on every axis.
    min_size : see :func:`num_levels`.
    device : device for the matrices (they follow the input's device when needed).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        wavelet: str = "db2",
        levels: int | Sequence[int] | None = None,
        min_size: int = 16,
        device: torch.device | str | None = None,
    ) -> None:
        dims = tuple(int(s) for s in shape)
        if len(dims) not in (2, 3) or min(dims) < 1:
            raise ValueError(f"wavelet shape must be 2 or 3 positive sizes: {shape}")
        wl = pywt.Wavelet(wavelet)
        if not wl.orthogonal:
            raise ValueError(f"wavelet {wavelet!r} is not orthogonal")
        if levels is None:
            levels = num_levels(dims, min_size)
        per_axis = (levels,) * len(dims) if isinstance(levels, int) else tuple(levels)
        if len(per_axis) != len(dims) or min(int(v) for v in per_axis) < 1:
            raise ValueError(f"levels must be >= 1, one or one per axis of {dims}: {levels}")
        self.axis_levels = tuple(int(v) for v in per_axis)
        #: the most levels of any axis (the number of passes)
        self.levels = max(self.axis_levels)
        self.image_shape = dims
        self.padded_shape = tuple(
            math.ceil(n / 2**lv) * 2**lv for n, lv in zip(dims, self.axis_levels, strict=True)
        )
        super().__init__(dims, self.padded_shape, name=f"Wavelet[{wavelet}]")
        self.wavelet = wavelet
        lo = np.asarray(wl.dec_lo[::-1], dtype=np.float64)
        hi = np.asarray(wl.dec_hi[::-1], dtype=np.float64)
        # per level, per axis: the analysis matrix, or None where that axis is done
        self._mats_cpu = [
            tuple(
                torch.from_numpy(analysis_matrix(p >> lev, lo, hi)).to(torch.float32)
                if lev < lv
                else None
                for p, lv in zip(self.padded_shape, self.axis_levels, strict=True)
            )
            for lev in range(self.levels)
        ]
        self._mats: dict[torch.device, list[tuple[tuple[torch.Tensor, torch.Tensor] | None, ...]]]
        self._mats = {}
        if device is not None:
            self._matrices(torch.device(device))

    def _matrices(
        self, device: torch.device
    ) -> list[tuple[tuple[torch.Tensor, torch.Tensor] | None, ...]]:
        """Per level, per axis: ``(A, Aᵀ)`` on ``device`` (None where the axis is done)."""
        mats = self._mats.get(device)
        if mats is None:
            mats = []
            for level in self._mats_cpu:
                row = []
                for a in level:
                    if a is None:
                        row.append(None)
                    else:
                        a = a.to(device)
                        row.append((a, a.T.contiguous()))
                mats.append(tuple(row))
            self._mats[device] = mats
        return mats

    def _block(self, lev: int) -> tuple[slice, ...]:
        """The approximation block that level ``lev`` transforms (batch axis first)."""
        sizes = (
            p >> min(lev, lv) for p, lv in zip(self.padded_shape, self.axis_levels, strict=True)
        )
        return (slice(None), *(slice(0, c) for c in sizes))

    @staticmethod
    def _separable(block: torch.Tensor, mats: list[torch.Tensor | None]) -> torch.Tensor:
        """``block [R, *axes]`` times ``mats[a]`` (``n_a × n_a``) along each axis ``a`` (first
        to last; None: not that axis): a left product on ``[R·…, n_a, …]`` for all but the
        last axis, a right product with the given (transposed) matrix for the last."""
        last = len(mats) - 1
        for a, m in enumerate(mats):
            if m is None:
                continue
            if a == last:
                block = torch.matmul(block, m)
            else:
                shp = block.shape
                lead, trail = math.prod(shp[: a + 1]), math.prod(shp[a + 2 :])
                block = torch.matmul(m, block.reshape(lead, shp[a + 1], trail)).reshape(shp)
        return block

    def _to_real(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if x.is_complex():
            x = torch.view_as_real(x.to(torch.complex64)).movedim(-1, 0)
        return x.reshape(-1, *shape)

    # -- LinearOperator interface -------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = len(self.image_shape)
        lead = x.shape[:-nd]
        xr = self._to_real(x, self.image_shape)
        pad = [q for n, p in zip(self.image_shape[::-1], self.padded_shape[::-1], strict=True)
               for q in (0, p - n)]  # fmt: skip
        # a fresh buffer: the levels below write into it in place
        out = F.pad(xr, pad) if self.padded_shape != self.image_shape else xr.clone()
        last = nd - 1
        for lev, level in enumerate(self._matrices(out.device)):
            # A along every axis but the last (left products), Aᵀ on the right for the last
            mats = [None if m is None else m[1 if a == last else 0] for a, m in enumerate(level)]
            blk = self._block(lev)
            out[blk] = self._separable(out[blk], mats)
        return self._pack(out, lead, x.is_complex())

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        nd = len(self.image_shape)
        lead = y.shape[:-nd]
        out = self._to_real(y, self.padded_shape).clone()
        mats_all = self._matrices(out.device)
        last = nd - 1
        for lev in reversed(range(self.levels)):
            level = mats_all[lev]
            mats = [None if m is None else m[0 if a == last else 1] for a, m in enumerate(level)]
            blk = self._block(lev)
            out[blk] = self._separable(out[blk], mats)
        if self.padded_shape != self.image_shape:
            out = out[(slice(None), *(slice(0, n) for n in self.image_shape))]
        return self._pack(out, lead, y.is_complex())

    @staticmethod
    def _pack(r: torch.Tensor, lead: torch.Size, complex_: bool) -> torch.Tensor:
        shape = tuple(r.shape[1:])
        if not complex_:
            return r.reshape(*lead, *shape)
        r = r.reshape(2, *lead, *shape).movedim(0, -1).contiguous()
        return torch.view_as_complex(r)

    def coarse_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool of the padded shape: True on the coarse approximation band."""
        m = torch.zeros(self.padded_shape, dtype=torch.bool, device=device)
        m[self._block(self.levels)[1:]] = True
        return m

    def __repr__(self) -> str:
        lv = self.levels if len(set(self.axis_levels)) == 1 else self.axis_levels
        return (
            f"WaveletTransform({self.wavelet}, levels={lv}, "
            f"{self.image_shape} -> {self.padded_shape})"
        )


def soft_threshold(z: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Complex soft-thresholding ``z · max(1 - t/|z|, 0)`` (the prox of ``t·||z||_1``).

    Works for real tensors too (``sign(z) · max(|z| - t, 0)``).
    """
    mag = z.abs()
    scale = torch.clamp(1.0 - threshold / torch.clamp(mag, min=torch.finfo(mag.dtype).tiny), min=0)
    return z * scale


def wavelet_soft_threshold(
    x: torch.Tensor,
    wt: WaveletTransform,
    threshold: float,
    shift: tuple[int, ...] | None = None,
    threshold_coarse: bool = True,
) -> torch.Tensor:
    """Prox of ``threshold · ||W S x||_1`` for a cyclic shift ``S`` (``S`` commutes out).

    ``x -> S^{-1} W^H soft(W S x)``, ``shift`` one integer per transformed axis (default none);
    with ``threshold_coarse=False`` the coarse approximation band is left untouched (BART
    thresholds every band, which is the default here).
    """
    nd = len(wt.image_shape)
    shift = (0,) * nd if shift is None else tuple(int(v) for v in shift)
    if len(shift) != nd:
        raise ValueError(f"one shift per transformed axis ({nd}) needed: {shift}")
    dims = tuple(range(-nd, 0))
    rolled = any(shift)
    xs = torch.roll(x, shifts=shift, dims=dims) if rolled else x
    c = wt.forward(xs)
    if threshold_coarse:
        c = soft_threshold(c, threshold)
    else:
        keep = wt.coarse_mask(c.device)
        c = torch.where(keep, c, soft_threshold(c, threshold))
    out = wt.adjoint(c)
    return torch.roll(out, shifts=tuple(-v for v in shift), dims=dims) if rolled else out
