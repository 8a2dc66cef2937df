"""Centered, orthonormal FFTs for numpy, cupy and torch arrays.

Convention: ``ifftshift -> fftn(norm="ortho") -> fftshift`` over the last ``ndim`` axes.
"""

from __future__ import annotations

from typing import Any

import torch

from mrprior.backend import get_xp


def _axes(ndim: int) -> tuple[int, ...]:
    return tuple(range(-ndim, 0))


def fftc(x: Any, ndim: int = 2) -> Any:
    """Centered orthonormal forward FFT over the last ``ndim`` axes (image -> k-space)."""
    ax = _axes(ndim)
    if isinstance(x, torch.Tensor):
        return torch.fft.fftshift(
            torch.fft.fftn(torch.fft.ifftshift(x, dim=ax), dim=ax, norm="ortho"), dim=ax
        )
    xp = get_xp(x)
    return xp.fft.fftshift(
        xp.fft.fftn(xp.fft.ifftshift(x, axes=ax), axes=ax, norm="ortho"), axes=ax
    )


def ifftc(x: Any, ndim: int = 2) -> Any:
    """Centered orthonormal inverse FFT over the last ``ndim`` axes (k-space -> image)."""
    ax = _axes(ndim)
    if isinstance(x, torch.Tensor):
        return torch.fft.fftshift(
            torch.fft.ifftn(torch.fft.ifftshift(x, dim=ax), dim=ax, norm="ortho"), dim=ax
        )
    xp = get_xp(x)
    return xp.fft.fftshift(
        xp.fft.ifftn(xp.fft.ifftshift(x, axes=ax), axes=ax, norm="ortho"), axes=ax
    )
