"""Automatic λ for ℓ1-wavelet reconstruction (``l1`` with ``lam: auto``), from the noise level.

In BART's units (:mod:`mrprior.recon.fista`), ``l1`` solves
``argmin_x ½‖A x − y/s‖² + λ‖Ψ x‖₁`` with ``s`` the data scale (:func:`bart_scaling`). The
ℓ1 term soft-thresholds wavelet coefficients; the threshold that balances noise suppression
against detail loss is proportional to the noise standard deviation of those coefficients. With
orthonormal FFTs and unit-norm coil maps, white k-space noise of standard deviation ``σ`` per
sample (``σ = 1`` for prewhitened data) gives ``Aᴴ n`` a per-pixel standard deviation
``σ / √R`` on average over the image (only ``1/R`` of k-space carries noise), i.e.
``σ / (s √R)`` in BART's units. The rule is therefore

    λ_auto = κ · σ / (s · √R),

with one constant ``κ`` (:data:`KAPPA`) calibrated once on training scans (never on the
held-out evaluation scans; ``benchmarks/bench_l1_lambda.py`` prints the calibration), the
analogue of a universal threshold ``σ√(2 ln N)`` whose factor is fitted rather than taken from
the asymptotic worst case (which over-smooths images by an order of magnitude). When the
problem carries no noise level, ``σ`` is estimated from the outermost sampled k-space (robust
Rayleigh-median estimate, :func:`estimate_noise_std`).
"""

from __future__ import annotations

import math
import statistics

import torch

from mrprior.recon.problem import ReconProblem

__all__ = ["KAPPA", "auto_lambda", "estimate_noise_std", "noise_std"]

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
