"""Automatic λ for ℓ1-wavelet reconstruction: ``l1`` with ``lam: auto`` (k-space
cross-validation, :func:`cv_lambda`) or ``lam: noise`` (a noise-level rule, :func:`auto_lambda`).

In BART's units (:mod:`mrprior.recon.fista`), ``l1`` solves
``argmin_x ½‖A x − y/s‖² + λ‖Ψ x‖₁`` with ``s`` the data scale (:func:`bart_scaling`).

**Cross-validation** (``lam: auto``). The best λ depends on the image (how sparse it is in the
wavelet domain, how much of the field of view it fills) and on how the aliasing of the sampling
pattern looks, which no rule in the noise level and the acceleration alone captures (1D
variable-density lines were the noise rule's worst case). The measured data tell it, without
any ground truth: leave out part of the sampled k-space, reconstruct from the rest, and score
how well the reconstruction predicts what was left out. Here

* the pieces left out follow the sampling (:func:`holdout_folds`): whole phase-encoding lines
  for 1D line sampling, single positions for 2D patterns, never the inside of the fully
  sampled calibration region; ``F = 2`` disjoint folds of 15 % of the eligible pieces each,
  drawn with a fixed seed (deterministic);
* the score is the held-out prediction error ``Σ_k w(k) Σ_c |y_c(k) − (S_c x̂)^(k)|²`` with the
  importance weight ``w = (1 − p) / p`` of the local sampling density ``p``
  (:func:`sampling_density`): the held-out positions are drawn with density ``∝ p``, the
  positions a reconstruction must fill in have density ``1 − p``, so the weighted sum estimates
  the error where k-space is missing (the noise of the held-out samples adds a constant);
* λ is searched on a geometric grid (factor 2) from the noise rule's λ downhill until the score
  rises, then refined by a parabola in ``log λ``; the reconstructions use the final solver's
  settings (iterations, wavelet, seed), so the score is that of the image ``l1`` returns;
* the folds' problems are a little more undersampled than the real one, and a held-out line or
  point always sits in a locally sparser neighbourhood than an unsampled one does, so the
  cross-validated λ is systematically too large; one factor :data:`CV_CORRECTION` maps it to
  the λ for all the data, calibrated once on training scans (never on the held-out evaluation
  scans; ``benchmarks/bench_l1_lambda.py`` prints the calibration);
* a batch of planes (a 3D volume) gets one λ, from up to :data:`CV_PLANES` planes spread over
  the planes that hold the object (:func:`~mrprior.recon.kspace_cv.cv_planes`), their scores
  summed.

Cost: each λ tried is one FISTA run on ``F × planes`` planes; typically 3–5 λ, i.e. 6–10 times
one 2D reconstruction (about 2–5 s at 256² and 8–12 coils on one busy CPU core) before the
final one; for a 3D volume of hundreds of planes a small fraction of the volume's own
reconstruction. Data with nothing to hold out (fully sampled) fall back to the noise rule.

**Noise rule** (``lam: noise``). The ℓ1 term soft-thresholds wavelet coefficients; the threshold
that balances noise suppression against detail loss is proportional to the noise standard
deviation of those coefficients. With orthonormal FFTs and unit-norm coil maps, white k-space
noise of standard deviation ``σ`` per sample (``σ = 1`` for prewhitened data) gives ``Aᴴ n`` a
per-pixel standard deviation ``σ / √R`` on average over the image (only ``1/R`` of k-space
carries noise), i.e. ``σ / (s √R)`` in BART's units. The rule is therefore

    λ_noise = κ · σ / (s · √R),

with one constant ``κ`` (:data:`KAPPA`) calibrated on training scans, the analogue of a
universal threshold ``σ√(2 ln N)`` whose factor is fitted rather than taken from the asymptotic
worst case (which over-smooths images by an order of magnitude). When the problem carries no
noise level, ``σ`` is estimated from the outermost sampled k-space (robust Rayleigh-median
estimate, :func:`estimate_noise_std`). It costs nothing and is the cross-validation's starting
point.
"""

from __future__ import annotations

import logging
import math
import statistics
from typing import Any

import torch

from mrprior.errors import DataError
from mrprior.recon.kspace_cv import (
    CV_FOLDS,
    CV_FRACTION,
    NothingToHoldOut,
    cv_planes,
    held_out_score,
    holdout_folds,
    plane_folds,
    sampling_units,
    search_log_grid,
)
from mrprior.recon.problem import ReconProblem

__all__ = [
    "KAPPA",
    "auto_lambda",
    "cv_lambda",
    "estimate_noise_std",
    "noise_std",
]

logger = logging.getLogger(__name__)

#: calibration constant of :func:`auto_lambda` (see the module docstring)
KAPPA: float = 0.5


def estimate_noise_std(kspace: torch.Tensor, mask: torch.Tensor, fraction: float = 0.1) -> float:
    """Noise standard deviation per k-space sample (``E|n|² = σ²``) from the sampled positions
    farthest from the k-space centre (the outer ``fraction`` of them by elliptical radius),
    where MR signal is negligible: the median of ``|n|`` (Rayleigh) is ``σ √(ln 2)``.

    Parameters
    ----------
    kspace : complex ``[C, ky, kx]``.
    mask : bool ``[ky, kx]`` sampled positions.
    """
    if kspace.ndim != 3 or tuple(mask.shape) != tuple(kspace.shape[1:]):
        raise ValueError(
            f"need kspace [C, ky, kx] and mask [ky, kx]: {kspace.shape=}, {mask.shape=}"
        )
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]: {fraction}")
    ny, nx = mask.shape
    dev = kspace.device
    ky = (torch.arange(ny, device=dev) - ny // 2) / (ny / 2)
    kx = (torch.arange(nx, device=dev) - nx // 2) / (nx / 2)
    rad = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    sampled = mask.to(torch.bool)
    r = rad[sampled]
    if r.numel() == 0:
        raise ValueError("mask samples nothing")
    cut = torch.quantile(r.float(), 1.0 - fraction)
    outer = sampled & (rad >= cut)
    vals = kspace[:, outer].abs().flatten()
    return float(vals.median()) / math.sqrt(math.log(2.0))


def noise_std(problem: ReconProblem) -> float:
    """The problem's noise level: ``problem.noise_std`` when known (1 after prewhitening), else
    :func:`estimate_noise_std`."""
    if problem.noise_std is not None and problem.noise_std > 0:
        return float(problem.noise_std)
    if problem.batched:  # one level for the batch: the median of the planes' estimates
        planes = [problem.plane(i) for i in range(problem.num_planes)]
        return float(statistics.median(estimate_noise_std(p.kspace, p.mask) for p in planes))
    return estimate_noise_std(problem.kspace, problem.mask)


def auto_lambda(problem: ReconProblem, scale: float, kappa: float = KAPPA) -> float:
    """``λ_auto = κ σ / (s √R)`` in BART's units (module docstring).

    Parameters
    ----------
    problem : the reconstruction problem (its mask gives ``R``; its noise level ``σ``).
    scale : the data scale ``s`` the solver divides k-space by (:func:`bart_scaling`).
    kappa : calibration constant.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0: {scale}")
    if not kappa > 0:
        raise ValueError(f"kappa must be > 0: {kappa}")
    m = problem.mask
    sampled = int(torch.count_nonzero(m))
    if sampled == 0:
        raise ValueError("mask samples nothing")
    accel = m.numel() / sampled
    return kappa * noise_std(problem) / (scale * math.sqrt(accel))


#: factor between consecutive λ of the search
CV_STEP: float = 2.0
#: planes of a batch that take part (spread over the planes that hold the object)
CV_PLANES: int = 4
#: readout planes of a whole 3D volume that take part: one contiguous slab of the volume's grid
#: (the whole volume when it has no more planes), reconstructed with 3D wavelets as the volume
CV_SLAB: int = 64
#: the cross-validated λ times this factor is the λ used on all the data (calibrated on
#: training scans, ``benchmarks/bench_l1_lambda.py``)
CV_CORRECTION: float = 1.0


def cv_lambda(
    problem: ReconProblem,
    *,
    max_iterations: int = 30,
    wavelet: str = "db2",
    seed: int = 0,
    folds: int = CV_FOLDS,
    fraction: float = CV_FRACTION,
    step: float = CV_STEP,
    max_planes: int = CV_PLANES,
    correction: float = CV_CORRECTION,
    max_steps: int = 6,
    volume_wavelet: bool = True,
    slab: int = CV_SLAB,
) -> tuple[float, dict[str, Any]]:
    """λ of ``l1`` by k-space cross-validation (module docstring), in the units of the data.

    Returns ``(λ, info)``: λ for :func:`~mrprior.recon.fista.l1_wavelet` with ``scale=1``
    (divide by a data scale for BART's units), and ``info`` with the noise-rule start
    ``lam_noise``, the cross-validated ``lam_cv``, the ``scores`` (weighted held-out error per
    λ) and the number of ``reconstructions`` run (each of ``folds × planes`` planes).

    A whole 3D volume (``problem.volume``, with ``volume_wavelet``) is cross-validated as it is
    reconstructed: each fold leaves the same phase-encoding positions out of every plane
    (whole readout lines of the 3D k-space) and reconstructs a contiguous slab of up to
    ``slab`` readout planes of the volume's grid, centred on the planes that hold data (the
    whole volume when it is not larger), with 3D wavelets
    (:func:`~mrprior.recon.fista.l1_wavelet` with ``volume``); its score sums over the slab's
    planes. Each λ then costs ``folds`` slab reconstructions.
    """
    from mrprior.recon.fista import l1_wavelet
    from mrprior.recon.planes import PlaneSenseOperator

    if problem.csm is None:
        raise ValueError("cv_lambda needs coil maps (problem.csm is None)")
    if not step > 1:
        raise ValueError(f"step must be > 1: {step}")
    b = problem.as_batch()
    if not bool(torch.isfinite(torch.view_as_real(b.kspace)).all()):
        raise DataError("k-space holds NaN or infinite values")
    if not bool(b.mask.any()):
        raise DataError("mask samples nothing")
    lam0 = auto_lambda(problem, 1.0)
    if b.volume is not None and volume_wavelet:
        return _cv_volume(
            b, lam0, max_iterations, wavelet, seed, folds, fraction, step, correction,
            max_steps, slab,
        )  # fmt: skip
    planes = cv_planes(b.kspace, max_planes, b.mask)
    keep, held, weight, ks, csm = [], [], [], [], []
    try:
        holdouts = {i: holdout_folds(b.mask[i], folds, fraction, seed + i) for i in planes}
    except NothingToHoldOut as exc:
        # e.g. fully sampled k-space: nothing predicts the missing data, the noise rule stays
        logger.info("cv_lambda: %s; the noise rule's λ", exc)
        info = {"rule": "noise", "lam_noise": lam0, "lam_cv": None, "scores": {}}
        return lam0, {**info, "reconstructions": 0, "planes": planes, "units": None}
    for i in planes:
        h = holdouts[i]
        keep.append(h.masks)
        held.append(h.held)
        weight.append(h.weight.expand(folds, -1, -1))
        ks.append(b.kspace[i].expand(folds, -1, -1, -1))
        csm.append(b.csm[i].expand(folds, -1, -1, -1))
    dev = b.kspace.device
    keep_m = torch.cat(keep).to(dev)
    held_m = torch.cat(held).to(dev)
    w = torch.cat(weight).to(dev)
    k = torch.cat(ks)
    maps = torch.cat(csm).contiguous()
    A = PlaneSenseOperator(maps, keep_m)
    predict = PlaneSenseOperator(maps, held_m)  # the model's k-space at the held-out positions
    y = k * keep_m.unsqueeze(1)
    target = k * held_m.unsqueeze(1)
    scores: dict[float, float] = {}

    def score(lam: float) -> float:
        if lam not in scores:
            x = l1_wavelet(
                A, y, lam, max_iterations=max_iterations, seed=seed, wavelet=wavelet, scale=1.0
            )
            r = (predict.forward(x) - target).abs() ** 2
            scores[lam] = float((r.sum(dim=1) * w).sum())
        return scores[lam]

    lam_cv = search_log_grid(score, scores, lam0, step, max_steps)
    info = _cv_info(lam0, lam_cv, scores, planes, sampling_units(b.mask[planes[0]]))
    logger.debug("cv_lambda: %s", info)
    return correction * lam_cv, info


def _cv_info(
    lam0: float, lam_cv: float, scores: dict[float, float], planes: list[int], units: Any
) -> dict[str, Any]:
    """What :func:`cv_lambda` reports next to its λ."""
    return {
        "rule": "cv",
        "lam_noise": lam0,
        "lam_cv": lam_cv,
        "scores": dict(sorted(scores.items())),
        "reconstructions": len(scores),
        "planes": planes,
        "units": units,
    }


def _cv_volume(
    b: ReconProblem,
    lam0: float,
    max_iterations: int,
    wavelet: str,
    seed: int,
    folds: int,
    fraction: float,
    step: float,
    correction: float,
    max_steps: int,
    slab: int,
) -> tuple[float, dict[str, Any]]:
    """:func:`cv_lambda` of a whole volume (its docstring): folds of readout lines, each a
    3D reconstruction of a slab of the volume's grid."""
    from mrprior.recon.fista import l1_wavelet
    from mrprior.recon.planes import PLANES_PER_CHUNK, PlaneSenseOperator

    assert b.volume is not None and b.csm is not None
    vol = b.volume.cpu()
    grid = torch.nonzero(vol).flatten()  # grid index of each plane of the batch
    n = int(vol.numel())
    width = min(max(int(slab), 1), n)
    centre = int(grid[grid.numel() // 2])  # the median plane that holds data
    lo = max(0, min(centre - width // 2, n - width))
    window = vol[lo : lo + width]
    first = int(torch.count_nonzero(vol[:lo]))
    rows = slice(first, first + int(window.sum()))  # the batch's planes in the slab
    masks = b.mask[rows]
    try:  # one pattern: the same lines out of every plane
        fold_data = plane_folds(masks, folds, fraction, seed, b.kspace.device)
    except NothingToHoldOut as exc:
        logger.info("cv_lambda: %s; the noise rule's λ", exc)
        info = {"rule": "noise", "lam_noise": lam0, "lam_cv": None, "scores": {}}
        return lam0, {**info, "reconstructions": 0, "planes": [], "units": None}
    k, csm = b.kspace[rows], b.csm[rows]
    scores: dict[float, float] = {}

    def recon(lam: float, keep: torch.Tensor) -> torch.Tensor:
        A = PlaneSenseOperator(csm, keep)  # its adjoint masks k: no masked copy
        return l1_wavelet(
            A, k, lam, max_iterations=max_iterations, seed=seed, wavelet=wavelet, scale=1.0,
            volume=window, plane_chunk=PLANES_PER_CHUNK,
        )  # fmt: skip

    def score(lam: float) -> float:
        if lam not in scores:
            scores[lam] = held_out_score(fold_data, csm, k, lambda keep: recon(lam, keep))
        return scores[lam]

    lam_cv = search_log_grid(score, scores, lam0, step, max_steps)
    info = _cv_info(lam0, lam_cv, scores, list(range(lo, lo + width)), sampling_units(masks[0]))
    logger.debug("cv_lambda (volume): %s", info)
    return correction * lam_cv, info
