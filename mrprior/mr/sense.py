"""SENSE forward model: y = M F S x, for 2D slices (and 3D volumes) on torch tensors."""

from __future__ import annotations

import torch

from mrprior.mr.fft import fftc, ifftc
from mrprior.mr.linop import LinearOperator


class SenseOperator(LinearOperator):
    """Multi-coil Cartesian SENSE operator.

    ``forward``: image ``[..., *N]`` -> k-space ``[..., C, *N]`` = mask · F(S_c · x).
    ``adjoint``: k-space ``[..., C, *N]`` -> image ``[..., *N]`` = Σ_c conj(S_c) · Fᴴ(mask · y).

    Parameters
    ----------
    csm : complex tensor ``[C, *N]`` (``N`` = (ky, kx) or (kz, ky, kx)).
    mask : bool/float tensor broadcastable to ``N`` (``None`` = fully sampled).
    """

    def __init__(self, csm: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        if csm.ndim not in (3, 4) or not csm.is_complex():
            raise ValueError(f"csm must be complex [C, ky, kx] or [C, kz, ky, kx]: {csm.shape=}")
        spatial = tuple(csm.shape[1:])
        super().__init__(spatial, tuple(csm.shape), name="Sense")
        self.csm = csm
        self.ndim = len(spatial)
        if mask is not None:
            mask = torch.as_tensor(mask, device=csm.device)
            try:
                torch.broadcast_shapes(mask.shape, spatial)
            except RuntimeError as exc:
                raise ValueError(f"mask {tuple(mask.shape)} does not fit image {spatial}") from exc
            mask = mask.to(torch.float32)
        self.mask = mask

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        k = fftc(x.unsqueeze(-self.ndim - 1) * self.csm, self.ndim)
        return k if self.mask is None else k * self.mask

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            y = y * self.mask
        return (ifftc(y, self.ndim) * self.csm.conj()).sum(dim=-self.ndim - 1)

    def __repr__(self) -> str:
        m = "full" if self.mask is None else f"mask{tuple(self.mask.shape)}"
        return f"Sense(coils={self.csm.shape[0]}, image={self.ishape}, {m})"


def sense_operator(csm: torch.Tensor, mask: torch.Tensor | None = None) -> SenseOperator:
    """Build the SENSE operator for coil maps ``csm [C, *N]`` and a sampling mask."""
    return SenseOperator(csm, mask)
