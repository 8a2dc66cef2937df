"""Geometric views of the iterate for the prior's denoiser: a cost-free self-ensemble.

A plug-and-play ladder calls the denoiser once per noise level. Showing it the image in a
different geometric view at each level — flipped, transposed, and for a whole 3D volume resliced
along one of its three axes — and mapping the result back spreads the network's small
orientation-dependent errors over the ladder instead of accumulating them, at no extra network
evaluation (an ensemble over levels rather than within one). A diffusion prior trained with
flips, 90° rotations and slices of every orientation (``mrprior prepare``'s ``axis: all``) is
meant to be equivariant to these views, so each one is a valid denoiser.

For a whole volume of planes ``[B, H, W]`` (one ``(kz, ky)`` plane per readout position) the
resliced views ``axis = 1, 2`` show the denoiser the two perpendicular orientations, so the prior
also acts across the readout, which independent 2D planes never see: the 2D prior regularizes in
3D. Those views need every plane of the volume (not a subset of planes). Each plane keeps its
own intensity scale (``max|x| = 1`` per plane, as the data-consistency weight assumes): one scale
for the whole volume helped brains a little more but cost 0.3–0.7 dB on an abdominal training
volume.

**When to reslice** (``prior-pics`` setting ``views: volume``, the default for whole volumes since
stop 20; benchmarks/RESULTS.md "Stop 17" and "Stop 20"): the first half of the ladder keeps to the
in-plane views, the second half cycles the three orientations. Reslicing from the first level
gained 0.4–1.0 dB on training heads at 64 × 128 × 128 but lost 0.2–0.35 dB on an abdominal training
volume; the high-noise levels, which remove the undersampling artefacts, work better on the (ky,
kz) planes, whose artefacts are incoherent within the plane but repeat identically along the
readout — in a resliced plane they look like structure. Reslicing only the second half (the detail
levels) kept 70–90 % of the heads' gain and lost at most 0.1 dB on the abdomen. With the data
weight fixed (κ 0.5) it failed the held-out gate (+0.2 dB on one brain, −0.5 dB on a proton-density
series of 7 mm slices); with κ cross-validated per volume (:mod:`mrprior.recon.prior_kappa`) it
gains on all six training cases (+0.02 to +0.75 dB, mean +0.34) and +0.09 dB on the mean of six
held-out cases at 96 × 192 × 192 (+0.13 to +0.31 on the 3D-like sources, −0.02 / −0.33 on the
thick-slice series), and became the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mrprior.priors.base import ScorePrior
from mrprior.recon.prior_pics import prior_denoise

#: the eight flips/transposes of a plane in the order a ladder cycles them (bit 1: flip columns,
#: bit 2: flip rows, bit 4: transpose); consecutive levels differ in as many bits as possible
DIHEDRAL_ORDER = (0, 5, 3, 6, 1, 4, 2, 7)


@dataclass(frozen=True)
class View:
    """One view of images ``[..., B, H, W]``.

    Attributes
    ----------
    axis : 0 the planes themselves; 1 the slices ``[H, B, W]``; 2 the slices ``[W, B, H]``
        (only meaningful when the planes are a whole 3D volume).
    code : in-plane flips/transposes, bits of :data:`DIHEDRAL_ORDER`.
    """

    axis: int = 0
    code: int = 0

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2) or not 0 <= self.code < 8:
            raise ValueError(f"invalid view: axis {self.axis} (0, 1, 2), code {self.code} (0..7)")

    @property
    def resliced(self) -> bool:
        return self.axis != 0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The view of ``x [..., B, H, W]``."""
        if self.axis == 1:
            x = x.movedim(-2, -3)
        elif self.axis == 2:
            x = x.movedim(-1, -3)
        if self.code & 4:
            x = x.transpose(-2, -1)
        if self.code & 1:
            x = x.flip(-1)
        if self.code & 2:
            x = x.flip(-2)
        return x.contiguous()

    def invert(self, d: torch.Tensor) -> torch.Tensor:
        """Map an image of the view back: ``invert(apply(x)) == x``."""
        if self.code & 2:
            d = d.flip(-2)
        if self.code & 1:
            d = d.flip(-1)
        if self.code & 4:
            d = d.transpose(-2, -1)
        if self.axis == 1:
            d = d.movedim(-3, -2)
        elif self.axis == 2:
            d = d.movedim(-3, -1)
        return d.contiguous()


#: fraction of a volume's ladder (the high-noise levels) that keeps to the in-plane views
#: before the resliced orientations join (module docstring)
RESLICE_FROM = 0.5


def view_cycle(volume: bool = False, levels: int | None = None) -> tuple[View, ...]:
    """The views a ladder goes through, level by level (level ``k`` uses view ``k`` of the
    tuple, cyclically).

    Planes: the eight flips/transposes (:data:`DIHEDRAL_ORDER`). A whole volume (``levels``,
    the ladder's length, required): ``levels`` views, the first :data:`RESLICE_FROM` of them
    in-plane, then the three slice orientations in turn (resliced first), each level with the
    next in-plane flip/transpose.
    """
    if not volume:
        return tuple(View(0, c) for c in DIHEDRAL_ORDER)
    if levels is None or levels < 1:
        raise ValueError(f"a volume's views need the ladder's number of levels >= 1: {levels}")
    first = int(levels * RESLICE_FROM)
    return tuple(
        View(0 if k < first else (1, 2, 0)[(k - first) % 3], DIHEDRAL_ORDER[k % 8])
        for k in range(levels)
    )


def denoise_in_view(
    prior: ScorePrior,
    x: torch.Tensor,
    sigma: float | torch.Tensor,
    view: View | None,
    planes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The prior's denoiser ``D(x, σ)`` applied to ``x [..., A, H, W]`` (scaled to
    ``max|x| ≈ 1``) seen through ``view`` and mapped back.

    ``planes`` (bool ``[B]``, ``A`` of them True) places the ``A`` planes of ``x`` within a whole
    volume of ``B`` planes, for resliced views: the planes left out (noise-only planes that are
    not reconstructed) are zero there. Default: ``x`` is the whole volume.
    """
    if view is None:
        return prior_denoise(prior, x, sigma)
    if not view.resliced or planes is None or bool(planes.all()):
        return view.invert(prior_denoise(prior, view.apply(x), sigma))
    full = x.new_zeros((*x.shape[:-3], int(planes.numel()), *x.shape[-2:]))
    full[..., planes, :, :] = x
    d = view.invert(prior_denoise(prior, view.apply(full), sigma))
    return d[..., planes, :, :]


__all__ = ["DIHEDRAL_ORDER", "RESLICE_FROM", "View", "denoise_in_view", "view_cycle"]
