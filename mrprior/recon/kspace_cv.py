"""k-space cross-validation: the pieces shared by every parameter chosen from the measured data
(``l1``'s λ, :mod:`mrprior.recon.l1_lambda`; prior-PICS's data weight κ,
:mod:`mrprior.recon.prior_kappa`).

Leave part of the sampled k-space out (:func:`holdout_folds`), reconstruct from the rest, and
score how well the reconstruction predicts what was left out (:func:`held_out_errors`), weighted
by ``(1 − p) / p`` of the local sampling density ``p`` so that the sum estimates the error where
k-space is missing; search the parameter on a geometric grid (:func:`search_log_grid`). A batch
of planes takes part through a few planes that hold the object (:func:`cv_planes`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "CV_FOLDS",
    "CV_FRACTION",
    "Fold",
    "HoldOut",
    "NothingToHoldOut",
    "cv_planes",
    "held_out_errors",
    "held_out_parts",
    "held_out_score",
    "holdout_folds",
    "is_regular_lattice",
    "plane_folds",
    "sampling_density",
    "sampling_units",
    "search_log_grid",
]

#: folds of a cross-validation (disjoint hold-out sets)
CV_FOLDS: int = 2
#: share of the eligible sampled pieces each fold holds out
CV_FRACTION: float = 0.15


class NothingToHoldOut(ValueError):
    """The mask samples nothing outside its fully sampled region (:func:`holdout_folds`)."""


@dataclass(frozen=True)
class HoldOut:
    """Hold-out folds of a plane's sampled k-space (:func:`holdout_folds`).

    Attributes
    ----------
    masks : bool ``[F, ky, kx]``: the sampled positions each fold keeps (reconstructs from).
    held : bool ``[F, ky, kx]``: the positions each fold leaves out (scores the prediction of).
    weight : float ``[ky, kx]``: importance weight ``(1 − p) / p`` of a held-out position,
        ``p`` the local sampling density (0 where k-space is fully sampled).
    units : ``"rows"``, ``"columns"`` or ``"points"``: what is held out as one piece.
    """

    masks: torch.Tensor
    held: torch.Tensor
    weight: torch.Tensor
    units: str


def sampling_units(mask: torch.Tensor) -> str:
    """``"rows"`` when every ``ky`` row of ``mask [ky, kx]`` is sampled completely or not at
    all (1D phase encoding along ``ky``, a full readout per line), ``"columns"`` likewise along
    ``kx``, else ``"points"``."""
    m = mask.to(torch.bool)
    if bool((m.any(dim=1) == m.all(dim=1)).all()):
        return "rows"
    if bool((m.any(dim=0) == m.all(dim=0)).all()):
        return "columns"
    return "points"


def sampling_density(mask: torch.Tensor, units: str, width: int | None = None) -> torch.Tensor:
    """Local sampling density ``p`` of ``mask [ky, kx]``: the mean of the mask over a box of
    ``width`` (default ``max(5, n / 16)``, odd) samples per phase-encoding axis (only along
    ``ky`` for ``units="rows"``, only ``kx`` for ``"columns"``), edges replicated."""
    m = mask.to(torch.float32)[None, None]
    ny, nx = mask.shape

    def box(n: int) -> int:
        w = width if width is not None else max(5, n // 16)
        return min(w | 1, (n - 1) | 1)

    ky = box(ny) if units in ("rows", "points") else 1
    kx = box(nx) if units in ("columns", "points") else 1
    pad = (kx // 2, kx // 2, ky // 2, ky // 2)
    m = torch.nn.functional.pad(m, pad, mode="replicate")
    return torch.nn.functional.avg_pool2d(m, (ky, kx), stride=1)[0, 0]


def is_regular_lattice(mask: torch.Tensor, max_period: int = 8) -> bool:
    """Whether ``mask [ky, kx]`` samples a regular lattice outside its fully sampled
    calibration region (uniform or CAIPI undersampling; not Poisson-disc or variable-density
    lines): along each axis some shift of at most ``max_period`` maps the pattern onto itself
    (at least 99 % of the positions away from the calibration region agree with the one
    ``period`` further on, a local density (:func:`sampling_density`) below 0.5 marking them),
    and that region is undersampled."""
    m = mask.to(torch.bool)
    outside = sampling_density(m, "points") < 0.5
    if int(outside.sum()) == 0 or float(m[outside].float().mean()) > 0.9:
        return False

    def periodic(dim: int) -> bool:
        n = int(m.shape[dim])
        for period in range(1, min(max_period, n - 1) + 1):
            a, b = m.narrow(dim, 0, n - period), m.narrow(dim, period, n - period)
            both = outside.narrow(dim, 0, n - period) & outside.narrow(dim, period, n - period)
            if int(both.sum()) and float((a == b)[both].float().mean()) >= 0.99:
                return True
        return False

    return periodic(0) and periodic(1)


def holdout_folds(
    mask: torch.Tensor, folds: int = 2, fraction: float = 0.15, seed: int = 0
) -> HoldOut:
    """Disjoint random hold-out sets of the sampled k-space of one plane.

    The pieces held out follow the sampling: whole phase-encoding lines for 1D line sampling,
    single positions otherwise (:func:`sampling_units`), so a fold's problem is the same kind of
    problem with a little more undersampling. Only pieces whose local density
    (:func:`sampling_density`) is below 1 are eligible: the inside of a fully sampled
    calibration region, which every reconstruction samples, is never held out (its outermost
    few lines or points can be, with the small weight of a density close to 1); each fold
    leaves out ``fraction`` of the eligible pieces.

    Parameters
    ----------
    mask : bool ``[ky, kx]``.
    folds : number of folds (>= 1), disjoint (``folds · fraction <= 1``).
    fraction : share of the eligible pieces each fold leaves out, in ``(0, 1)``.
    seed : seed of the random draw (same seed -> same folds).
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be [ky, kx]: {tuple(mask.shape)}")
    if folds < 1 or not 0 < fraction < 1 or folds * fraction > 1 + 1e-9:
        raise ValueError(
            f"need folds >= 1 and 0 < fraction, folds·fraction <= 1: {folds=}, {fraction=}"
        )
    m = mask.to(torch.bool).cpu()
    if not bool(m.any()):
        raise ValueError("mask samples nothing")
    units = sampling_units(m)
    p = sampling_density(m, units)
    weight = torch.where(m & (p < 1.0 - 1e-6), (1.0 - p) / p.clamp_min(1e-6), 0.0)
    if units == "rows":
        eligible = torch.nonzero(m.any(dim=1) & (weight.amax(dim=1) > 0)).flatten()
    elif units == "columns":
        eligible = torch.nonzero(m.any(dim=0) & (weight.amax(dim=0) > 0)).flatten()
    else:
        eligible = torch.nonzero((weight > 0).flatten()).flatten()
    per_fold = round(fraction * eligible.numel())
    if per_fold < 1:
        raise NothingToHoldOut("no sampled k-space outside the fully sampled region to hold out")
    gen = torch.Generator().manual_seed(int(seed))
    order = eligible[torch.randperm(eligible.numel(), generator=gen)]
    held = torch.zeros((folds, *m.shape), dtype=torch.bool)
    for f in range(folds):
        idx = order[f * per_fold : (f + 1) * per_fold]
        if units == "rows":
            held[f, idx, :] = True
        elif units == "columns":
            held[f, :, idx] = True
        else:
            held[f].view(-1)[idx] = True
    held &= m
    return HoldOut(m & ~held, held, weight.to(torch.float32), units)


def cv_planes(kspace: torch.Tensor, count: int, mask: torch.Tensor | None = None) -> list[int]:
    """Up to ``count`` plane indices of ``kspace [B, C, ky, kx]``: spread evenly over the planes
    whose k-space energy (at the sampled positions ``mask``, ``[ky, kx]`` or ``[B, ky, kx]``,
    when given) is at least the median (the planes that hold the object). The energy is
    summed :data:`~mrprior.recon.planes.PLANES_PER_CHUNK` planes at a time: no masked or
    squared copy of a whole volume's k-space."""
    from mrprior.recon.planes import PLANES_PER_CHUNK, map_planes

    b = int(kspace.shape[0])
    if b <= count:
        return list(range(b))

    def energy_of(sl: slice) -> torch.Tensor:
        k = kspace[sl]
        if mask is not None:
            k = k * (mask if mask.ndim == 2 else mask[sl].unsqueeze(1))
        return (k.abs() ** 2).sum(dim=(1, 2, 3))

    energy = map_planes(energy_of, b, PLANES_PER_CHUNK).cpu()
    full = torch.nonzero(energy >= energy.median()).flatten().tolist()
    pos = torch.linspace(0, len(full) - 1, count).round().long().tolist()
    return sorted({full[j] for j in pos})


def search_log_grid(
    score: Any, scores: dict[float, float], lam0: float, step: float, max_steps: int
) -> float:
    """Walk from ``lam0`` downhill on the grid ``lam0 · step^k`` (``score(λ)`` fills
    ``scores``), then refine the best λ by a parabola in log λ through its neighbours."""
    score(lam0)
    for direction in (step, 1.0 / step):
        cur = lam0
        for _ in range(max_steps):
            nxt = cur * direction
            if score(nxt) >= score(cur):
                break
            cur = nxt
    tried = sorted(scores)  # contiguous points of the grid λ0 · step^k
    i = min(range(len(tried)), key=lambda j: scores[tried[j]])
    best = lam_cv = tried[i]
    if 0 < i < len(tried) - 1:
        s_lo, s0, s_hi = scores[tried[i - 1]], scores[best], scores[tried[i + 1]]
        curv = s_lo - 2 * s0 + s_hi
        if curv > 0:
            t = 0.5 * (s_lo - s_hi) / curv  # in steps, |t| <= 0.5 at a bracketed minimum
            lam_cv = best * step ** max(-0.5, min(0.5, t))
    return lam_cv


def held_out_errors(
    predict: Any, x: torch.Tensor, k: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """``Σ weight · |P x - k|²`` per plane (``[B]``) over the held-out positions of ``predict`` (a
    :class:`~mrprior.recon.planes.PlaneSenseOperator` masked to them) and all coils, on
    :data:`~mrprior.recon.planes.PLANES_PER_CHUNK` planes at a time; ``weight`` ``[H, W]`` or
    one per plane ``[B, H, W]``."""
    from mrprior.recon.planes import PLANES_PER_CHUNK, map_planes

    def part(sl: slice) -> torch.Tensor:
        op = predict.select(sl)
        r = op.forward(x[sl]) - k[sl] * op.mask
        w = weight if weight.ndim == 2 else weight[sl]
        return ((r.abs() ** 2).sum(dim=1) * w).sum(dim=(-2, -1)).reshape(-1)

    return map_planes(part, int(k.shape[0]), PLANES_PER_CHUNK)


#: one fold of a batch of planes: (positions kept, positions held out, their weights), each
#: ``[H, W]`` when the planes share one pattern, else ``[P, H, W]``
Fold = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def plane_folds(
    masks: torch.Tensor,
    folds: int,
    fraction: float,
    seeds: int | Sequence[int],
    device: torch.device | None = None,
) -> list[Fold]:
    """The hold-out folds of a batch of planes (masks ``[P, H, W]``, or one ``[H, W]``).

    ``seeds`` one int: when the planes share one pattern, one draw (:func:`holdout_folds`) for
    all of them — the same positions out of every plane (the readout lines of a 3D k-space,
    what a reconstruction that couples the planes needs) — else one draw per plane with that
    seed; a sequence: one draw per plane with its own seed. Raises :class:`NothingToHoldOut` as
    :func:`holdout_folds` does."""
    m = masks.to(torch.bool)
    if isinstance(seeds, int):
        if m.ndim == 2 or bool((m == m[:1]).all()):
            hs = [holdout_folds(m if m.ndim == 2 else m[0], folds, fraction, seeds)]
        else:
            hs = [holdout_folds(mi, folds, fraction, seeds) for mi in m]
    else:
        if m.ndim != 3 or len(seeds) != m.shape[0]:
            raise ValueError(f"one seed per plane: {len(seeds)} seeds, masks {tuple(m.shape)}")
        hs = [holdout_folds(mi, folds, fraction, si) for mi, si in zip(m, seeds, strict=True)]

    def fold(f: int) -> Fold:
        keep = torch.stack([h.masks[f] for h in hs]).to(device)
        held = torch.stack([h.held[f] for h in hs]).to(device)
        w = torch.stack([h.weight for h in hs]).to(device)
        return (keep[0], held[0], w[0]) if len(hs) == 1 else (keep, held, w)

    return [fold(f) for f in range(folds)]


def held_out_parts(
    fold_data: list[Fold],
    csm: torch.Tensor,
    kspace: torch.Tensor,
    reconstruct: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The weighted held-out error of each fold and plane (:func:`held_out_errors`), ``[F, P]``:
    ``reconstruct(keep)`` is the image ``[P, H, W]`` of the planes (maps ``csm [P, C, H, W]``,
    k-space ``kspace [P, C, H, W]``) from the fold's kept positions."""
    from mrprior.recon.planes import PlaneSenseOperator

    return torch.stack(
        [
            held_out_errors(PlaneSenseOperator(csm, held), reconstruct(keep), kspace, w)
            for keep, held, w in fold_data
        ]
    )


def held_out_score(
    fold_data: list[Fold],
    csm: torch.Tensor,
    kspace: torch.Tensor,
    reconstruct: Callable[[torch.Tensor], torch.Tensor],
) -> float:
    """The weighted held-out error summed over the folds and planes (:func:`held_out_parts`)."""
    return float(held_out_parts(fold_data, csm, kspace, reconstruct).sum())
