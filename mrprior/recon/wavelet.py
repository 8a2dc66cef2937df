"""Orthogonal 2D Daubechies wavelet transform (periodic) in torch, and complex soft-thresholding.

The transform is built from PyWavelets' filter coefficients (``pywt.Wavelet(name).dec_lo``)
as one periodic analysis matrix per level and axis, applied separably to the last two axes with
batched matmuls, for any number of levels. Boundaries are **periodic** (circular), which keeps every level exactly orthogonal.

Any image size works: the image ``[..., H, W]`` is zero-padded at the end of each axis to the next
multiple of ``2**levels`` (``[..., Hp, Wp]``), transformed, and the adjoint crops back. Hence
``W.adjoint(W.forward(x)) == x`` (perfect reconstruction) and ``||W x|| == ||x||`` for all sizes;
``W W^H`` is the identity only when no padding is needed.

Coefficients are packed in one array ``[..., Hp, Wp]`` in the usual Mallat layout: the coarse
approximation in the top-left ``[Hp / 2**L, Wp / 2**L]`` block, then for each level (coarsest
first) the three detail bands (LH, HL, HH) around it.

The default wavelet is ``"db2"`` (4 taps), the filter BART's ``pics`` uses by default (BART calls
it ``dau2``). BART's own transform uses symmetric boundaries with slightly redundant bands; the
periodic orthogonal transform here is a different discretization of the same wavelet.
"""

from __future__ import annotations

import math

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


def num_levels(shape: tuple[int, int], min_size: int = 16) -> int:
    """Levels used by default: decompose while both (ceil-halved) sizes are at least ``min_size``.

    This matches BART's rule for ``pics -l1`` (decompose while the band is at least 16): a
    256×256 image gets 5 levels in both.
    """
    n = min(shape)
    levels = 0
    while n >= min_size and n >= 2:
        n = (n + 1) // 2
        levels += 1
    return max(levels, 1)


class WaveletTransform(LinearOperator):
    """Orthogonal multi-level 2D DWT with periodic boundaries on complex tensors ``[..., H, W]``.

    Each level applies a one-level periodic analysis matrix ``A_n`` (``n×n``, orthogonal; rows
    ``0..n/2-1`` low-pass, ``n/2..n-1`` high-pass, row ``k`` holding the reversed
    ``dec_lo``/``dec_hi`` taps at columns ``(2k + j) mod n``) to the current approximation block:
    ``C <- A_h C A_wᵀ``. The matrices are built once from PyWavelets' taps; applying them as
    batched matmuls is faster on CPU and GPU than strided convolutions for the image sizes of
    MRI (the work per pixel grows with the side length; fine up to ~1024).

    Parameters
    ----------
    shape : image size ``(H, W)``.
    wavelet : a PyWavelets orthogonal wavelet name (``"haar"``, ``"db2"``, ``"db4"``, ...).
    levels : number of levels; default :func:`num_levels` with ``min_size``.
    min_size : see :func:`num_levels`.
    device : device for the matrices (they follow the input's device when needed).
    """

    def __init__(
        self,
        shape: tuple[int, int],
        wavelet: str = "db2",
        levels: int | None = None,
        min_size: int = 16,
        device: torch.device | str | None = None,
    ) -> None:
        h, w = (int(s) for s in shape)
        wl = pywt.Wavelet(wavelet)
        if not wl.orthogonal:
            raise ValueError(f"wavelet {wavelet!r} is not orthogonal")
        self.levels = int(levels) if levels is not None else num_levels((h, w), min_size)
        if self.levels < 1:
            raise ValueError(f"levels must be >= 1: {self.levels}")
        m = 2**self.levels
        self.image_shape = (h, w)
        self.padded_shape = (math.ceil(h / m) * m, math.ceil(w / m) * m)
        super().__init__((h, w), self.padded_shape, name=f"Wavelet[{wavelet}]")
        self.wavelet = wavelet
        lo = np.asarray(wl.dec_lo[::-1], dtype=np.float64)
        hi = np.asarray(wl.dec_hi[::-1], dtype=np.float64)
        hp, wp = self.padded_shape
        self._mats_cpu = [
            (
                torch.from_numpy(analysis_matrix(hp >> lev, lo, hi)).to(torch.float32),
                torch.from_numpy(analysis_matrix(wp >> lev, lo, hi)).to(torch.float32),
            )
            for lev in range(self.levels)
        ]
        self._mats: dict[torch.device, list[tuple[torch.Tensor, ...]]] = {}
        if device is not None:
            self._matrices(torch.device(device))

    def _matrices(self, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
        mats = self._mats.get(device)
        if mats is None:
            mats = []
            for ah, aw in self._mats_cpu:
                ah, aw = ah.to(device), aw.to(device)
                mats.append((ah, ah.T.contiguous(), aw, aw.T.contiguous()))
            self._mats[device] = mats
        return mats

    def _to_real(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if x.is_complex():
            x = torch.view_as_real(x.to(torch.complex64)).movedim(-1, 0)
        return x.reshape(-1, h, w)

    # -- LinearOperator interface -------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-2]
        h, w = self.image_shape
        hp, wp = self.padded_shape
        xr = self._to_real(x, h, w)
        # a fresh buffer: the levels below write into it in place
        out = F.pad(xr, (0, wp - w, 0, hp - h)) if (hp, wp) != (h, w) else xr.clone()
        for lev, (ah, _, _, awt) in enumerate(self._matrices(out.device)):
            ch, cw = hp >> lev, wp >> lev
            out[:, :ch, :cw] = torch.matmul(torch.matmul(ah, out[:, :ch, :cw]), awt)
        return self._pack(out, lead, x.is_complex())

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        lead = y.shape[:-2]
        h, w = self.image_shape
        hp, wp = self.padded_shape
        out = self._to_real(y, hp, wp).clone()
        mats = self._matrices(out.device)
        for lev in reversed(range(self.levels)):
            _, aht, aw, _ = mats[lev]
            ch, cw = hp >> lev, wp >> lev
            out[:, :ch, :cw] = torch.matmul(torch.matmul(aht, out[:, :ch, :cw]), aw)
        if (hp, wp) != (h, w):
            out = out[:, :h, :w]
        return self._pack(out, lead, y.is_complex())

    @staticmethod
    def _pack(r: torch.Tensor, lead: torch.Size, complex_: bool) -> torch.Tensor:
        hh, ww = r.shape[-2:]
        if not complex_:
            return r.reshape(*lead, hh, ww)
        r = r.reshape(2, *lead, hh, ww).movedim(0, -1).contiguous()
        return torch.view_as_complex(r)

    def coarse_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool ``[Hp, Wp]``: True on the coarse approximation band."""
        m = torch.zeros(self.padded_shape, dtype=torch.bool, device=device)
        m[: self.padded_shape[0] >> self.levels, : self.padded_shape[1] >> self.levels] = True
        return m

    def __repr__(self) -> str:
        return (
            f"WaveletTransform({self.wavelet}, levels={self.levels}, "
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
    shift: tuple[int, int] = (0, 0),
    threshold_coarse: bool = True,
) -> torch.Tensor:
    """Prox of ``threshold · ||W S x||_1`` for a cyclic shift ``S`` (``S`` commutes out).

    ``x -> S^{-1} W^H soft(W S x)``; with ``threshold_coarse=False`` the coarse approximation band
    is left untouched (BART thresholds every band, which is the default here).
    """
    sy, sx = shift
    xs = torch.roll(x, shifts=(sy, sx), dims=(-2, -1)) if (sy or sx) else x
    c = wt.forward(xs)
    if threshold_coarse:
        c = soft_threshold(c, threshold)
    else:
        keep = wt.coarse_mask(c.device)
        c = torch.where(keep, c, soft_threshold(c, threshold))
    out = wt.adjoint(c)
    return torch.roll(out, shifts=(-sy, -sx), dims=(-2, -1)) if (sy or sx) else out
