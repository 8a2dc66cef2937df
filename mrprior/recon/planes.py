"""Batches of independent 2D planes: a SENSE operator with per-plane coil maps and masks, the
detection of planes that hold only noise, and scattering per-plane results back into a batch.

A batch of planes is how every method sees a multi-slice 2D exam or a 3D volume after the
inverse FFT along the readout (one ``(ky, kz)`` plane per readout position): k-space
``[B, C, ny, nx]``, masks ``[B, ny, nx]``, coil maps ``[B, C, ny, nx]``, images ``[B, ny, nx]``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from mrprior.mr.linop import LinearOperator
from mrprior.mr.sense import SenseOperator


class PlaneSenseOperator(SenseOperator):
    """SENSE for a batch of independent 2D planes, each with its own coil maps and mask.

    ``forward``: image ``[..., B, H, W]`` -> k-space ``[..., B, C, H, W]``;
    ``adjoint``: the reverse. Leading dims (e.g. posterior samples) broadcast. The arithmetic
    is :class:`~mrprior.mr.sense.SenseOperator`'s (inherited); only the shapes differ: maps
    ``[B, C, H, W]`` act on ``[B, H, W]``, masks ``[B, H, W]`` (or one ``[H, W]``) on every coil.

    Parameters
    ----------
    csm : complex ``[B, C, H, W]``.
    mask : bool/float ``[B, H, W]`` or ``[H, W]``.
    """

    def __init__(self, csm: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        if csm.ndim != 4 or not csm.is_complex():
            raise ValueError(f"plane coil maps must be complex [B, C, H, W]: {tuple(csm.shape)=}")
        b, c, h, w = (int(s) for s in csm.shape)
        # trailing shapes of one plane: solvers treat the plane axis as a batch axis (CG per plane)
        LinearOperator.__init__(self, (h, w), (c, h, w), name="PlaneSense")
        self.csm = csm
        self.ndim = 2
        if mask is not None:
            mask = torch.as_tensor(mask, device=csm.device)
            if tuple(mask.shape) not in ((h, w), (b, h, w)):
                raise ValueError(f"mask {tuple(mask.shape)} does not fit planes {(b, h, w)}")
            mask = mask.to(torch.float32).unsqueeze(-3)  # [B, 1, H, W] or [1, H, W]: every coil
        self.mask = mask

    def __repr__(self) -> str:
        b, c, h, w = self.csm.shape
        return f"PlaneSense(planes={b}, coils={c}, image={(h, w)})"

    def select(self, planes: slice) -> PlaneSenseOperator:
        """The operator of planes ``planes`` (views of the maps and masks, no copies)."""
        mask = self.mask  # stored [B, 1, H, W], or [1, H, W] when shared
        if mask is not None:
            mask = mask[0] if mask.ndim == 3 else mask[planes, 0]
        return PlaneSenseOperator(self.csm[planes], mask)


def plane_operator(csm: torch.Tensor, mask: torch.Tensor) -> SenseOperator:
    """The SENSE operator of one plane (``csm [C, H, W]``) or a batch (``csm [B, C, H, W]``)."""
    if csm.ndim == 3:
        return SenseOperator(csm, mask)
    return PlaneSenseOperator(csm, mask)


#: planes per chunk where a method walks a large batch (a whole 3D volume) in parts to bound
#: the memory of its ``[B, C, H, W]`` temporaries
PLANES_PER_CHUNK = 16


def map_planes(
    fn: Callable[[slice], torch.Tensor], count: int, chunk: int | None = PLANES_PER_CHUNK
) -> torch.Tensor:
    """``fn`` on slices of ``chunk`` planes out of ``count`` (``fn(slice)`` returns that
    slice's result with the plane axis first), concatenated; one call when ``chunk`` is None or
    covers every plane."""
    if chunk is None or chunk >= count:
        return fn(slice(0, count))
    return torch.cat([fn(slice(i, min(i + chunk, count))) for i in range(0, count, chunk)])


def coil_support(csm: torch.Tensor | None, threshold: float = 1e-6) -> torch.Tensor | None:
    """Boolean ``[..., H, W]`` support of coil maps ``[..., C, H, W]``: ``Σ|S_c|² > threshold``."""
    if csm is None:
        return None
    if csm.ndim == 4:  # a batch of planes, possibly a whole volume: in chunks of planes
        return map_planes(lambda sl: (csm[sl].abs() ** 2).sum(dim=-3) > threshold, len(csm))
    return (csm.abs() ** 2).sum(dim=-3) > threshold


def signal_planes(
    kspace: torch.Tensor, mask: torch.Tensor, noise_std: torch.Tensor, z: float = 6.0
) -> torch.Tensor:
    """Which planes hold signal above the noise: bool ``[B]``.

    For pure complex Gaussian noise of std ``σ`` per sample, ``|y|²`` has mean and standard
    deviation ``σ²``, so the energy of the ``N`` acquired samples (all coils) is
    ``N σ² ± √N σ²``. A plane counts as signal when ``‖y‖² > N σ² (1 + z/√N)`` (``z = 6``: a
    pure-noise plane passes with probability ~1e-9; any visible object exceeds it by far).

    Parameters
    ----------
    kspace : complex ``[B, C, H, W]`` (zero where not acquired).
    mask : bool ``[B, H, W]``.
    noise_std : ``[B]`` std of a complex k-space sample per plane.
    """
    coils = kspace.shape[-3]
    n = mask.flatten(1).sum(dim=1).to(torch.float64) * coils
    energy = map_planes(
        lambda sl: (kspace[sl].abs() ** 2).flatten(1).sum(dim=1).to(torch.float64), len(kspace)
    )
    sigma2 = noise_std.to(torch.float64).reshape(-1) ** 2
    limit = n * sigma2 * (1.0 + z / n.clamp_min(1.0).sqrt())
    return (energy > limit) | (sigma2 <= 0)


def zero_filled_noise_std(
    csm: torch.Tensor, mask: torch.Tensor, noise_std: torch.Tensor
) -> torch.Tensor:
    """Per-pixel std ``[B, H, W]`` of the noise in the coil-combined zero-filled image ``Aᴴn``.

    With orthonormal FFTs and white noise of std ``σ`` per complex sample, ``Aᴴn`` at pixel
    ``r`` has variance ``σ² · f · Σ_c|S_c(r)|²`` with ``f`` the sampled fraction.
    """
    frac = mask.flatten(1).float().mean(dim=1)
    s2 = (csm.abs() ** 2).sum(dim=-3)
    return (noise_std.reshape(-1, 1, 1) * (frac.reshape(-1, 1, 1) * s2).sqrt()).to(torch.float32)


def scatter_planes(
    active: torch.Tensor, computed: torch.Tensor, fill: torch.Tensor
) -> torch.Tensor:
    """``fill`` with the planes where ``active [B]`` is True replaced by ``computed [A, ...]``."""
    if bool(active.all()):
        return computed
    out = fill.clone()
    out[active] = computed.to(out.dtype)
    return out


def plane_generators(kspace: torch.Tensor, seed: int | None) -> list[torch.Generator]:
    """One CPU random generator per plane of ``kspace [B, C, H, W]``, seeded from ``seed`` and
    the plane's own data, so that a plane draws the same random numbers alone or in any batch
    (and different planes draw independent ones)."""
    gens = []
    for plane in kspace:
        digest = hashlib.blake2b(digest_size=8)
        digest.update(str(seed).encode())
        digest.update(plane[..., ::3, ::3].detach().cpu().contiguous().numpy().tobytes())
        gens.append(torch.Generator(device="cpu").manual_seed(int.from_bytes(digest.digest())))
    return gens


def randn_planes(
    generators: list[torch.Generator],
    shape: tuple[int, ...],
    device: torch.device,
    plane_ndim: int = 2,
) -> torch.Tensor:
    """Complex normal noise (unit variance in the real and in the imaginary part) with the
    plane axis inserted before the last ``plane_ndim`` dims of ``shape``: ``shape = (*lead,
    *per_plane)`` gives ``[*lead, B, *per_plane]``, plane ``p`` drawn from ``generators[p]``."""
    cut = len(shape) - plane_ndim
    planes = [
        torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
        for g in generators
    ]
    return torch.stack(planes, dim=cut).to(device)


def per_plane(value: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """A scalar or ``[B]`` value as a float32 tensor ``[B]``."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"expected a scalar or {batch} values per plane, got {t.numel()}")
    return t


__all__ = [
    "PLANES_PER_CHUNK",
    "PlaneSenseOperator",
    "coil_support",
    "map_planes",
    "per_plane",
    "plane_generators",
    "plane_operator",
    "randn_planes",
    "scatter_planes",
    "signal_planes",
    "zero_filled_noise_std",
]
