"""Posterior sampling in a few network calls: stochastic half-quadratic splitting (HQS with
restarts), i.e. decomposed-diffusion steps whose denoised estimate is made data-consistent by CG
and then re-noised to the next level.

On a geometric ladder ``σ_1 > … > σ_K`` (image scaled by ``1/c`` so that ``max|x| ≈ 1``), every
sample ``x`` of every plane takes, at level ``σ_k``::

    x̂  = D(x, σ_k)                                     (Tweedie: E[x_0 | x_k])
    x̃  = argmin ‖A x − y‖²/σ_n² + ‖x − x̂‖²/(σ_k² / κ)   (CG on (AᴴA + μ) x = Aᴴy + μ x̂,
                                                          μ = κ σ_n² / (σ_k c)², as HQS)
    x  ← x̃ + σ_{k+1} ξ                                 (fresh noise, ξ complex normal)

and the last ``x̃`` is the sample. The start is the CG-SENSE image plus noise of level ``σ_1``,
so each sample costs exactly ``K`` network evaluations, and all samples and planes go through
the network together. Without the re-noising this is the deterministic plug-and-play HQS of
prior-PICS; with it, every level draws the image afresh around the current estimate (the
ancestral limit of a DDIM step). Reusing the predicted noise ``(x − x̂)/σ_k`` (deterministic
DDIM, η = 0) was tried and loses ~10 dB at 10 levels: after the data-consistency step that
residual no longer matches the estimate, and re-adding it carries the aliasing along.

The lowest level defaults to the noise of the data itself in the scaled image, ``σ_K =
σ_n/c`` per real component (``σ_n`` per real k-space component; with orthonormal FFTs and
normalized coil maps it is the image-domain noise of a fully sampled SENSE image): below it the
data fix the image, above it the prior's spread is not yet resolved.

The returned uncertainty is the per-pixel standard deviation of the error of the returned mean:
the sample std times ``√(1 + 1/N)`` (the posterior spread plus the Monte-Carlo error of an
``N``-sample mean), so that ``mean ± 2·uncertainty`` is an honest interval for the truth under a
calibrated posterior.

References: H. Chung, S. Lee, J. C. Ye, "Decomposed diffusion sampler for accelerating
large-scale inverse problems", ICLR 2024; J. Song, C. Meng, S. Ermon, "Denoising diffusion
implicit models", ICLR 2021; K. Zhang et al., "Plug-and-play image restoration with deep
denoiser prior", IEEE TPAMI 2022 (HQS); G. Luo et al., MRM 2023 (posterior sampling for MRI).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from mrprior.mr.linop import LinearOperator
from mrprior.priors.base import ScorePrior
from mrprior.recon.cg import conjugate_gradient, normal_operator
from mrprior.recon.langevin import PosteriorSamples, Welford
from mrprior.recon.planes import plane_generators, randn_planes
from mrprior.recon.pnp import hqs_step, pnp_hqs, regularized_normal
from mrprior.recon.prior_pics import max_scale, sigma_schedule
from mrprior.recon.views import View

logger = logging.getLogger(__name__)

#: Calibration of the uncertainty map of :func:`hqs_posterior` (``prior-sample``'s default
#: sampler): the factor on the std of the mean's error that makes ``mean ± 2·std`` cover its
#: nominal 95.4 % of the true magnitude errors inside the object, pooled over simulated
#: acquisitions of **training** scans at every sampling of the bench
#: (``benchmarks/calibrate_uncertainty.py`` fits and prints it; the held-out coverage is measured
#: by ``benchmarks/bench_speed.py --sections sampler``). It is large because the samples differ
#: only in the detail the last, stochastic levels resolve: structure fixed by the shared
#: deterministic levels, and the scan's own noise that no recon recovers, are absent from the
#: sample spread. The spread gives the map's shape (where the data leave the image open); this
#: factor gives its scale.
HQS_UNCERTAINTY_SCALE: float = 5.0


def hqs_posterior(
    op: LinearOperator,
    y: torch.Tensor,
    prior: ScorePrior,
    *,
    noise_std: float | torch.Tensor,
    num_samples: int = 4,
    batch_size: int | None = None,
    steps: int = 20,
    branch: int = 16,
    sigma: Sequence[float] = (0.1, 0.005),
    kappa: float = 0.5,
    mu_min: float = 1e-4,
    cg_iterations: int = 5,
    scale: torch.Tensor | None = None,
    support: torch.Tensor | None = None,
    seed: int | None = 0,
    keep_samples: bool = False,
    views: Sequence[View] = (),
) -> PosteriorSamples:
    """Posterior samples by stochastic HQS restarts (module docstring).

    Parameters
    ----------
    op : SENSE operator, image ``[H, W]`` -> k-space ``[C, H, W]``, or a
        :class:`~mrprior.recon.planes.PlaneSenseOperator` for a batch of planes.
    y : k-space ``[C, H, W]`` or ``[B, C, H, W]``.
    prior : any :class:`~mrprior.priors.base.ScorePrior`.
    noise_std : ``σ_n`` per real component of a k-space sample, data units (scalar or per plane
        ``[B, 1, 1]``).
    num_samples : samples ``N`` per plane.
    batch_size : samples drawn at once (default all ``N``; all planes of the batch at once).
    steps : noise levels ``K`` of the ladder (network evaluations per sample).
    branch : levels ``K_0`` run once, deterministically, before the samples split
        (``0 ≤ K_0 < K``); the network cost is ``K_0 + N (K − K_0)`` images per plane.
    sigma : ``(σ_1, σ_K)`` of the geometric ladder (scaled image units).
    kappa, mu_min, cg_iterations : data-consistency weight and solver, as
        :func:`~mrprior.recon.pnp.pnp_hqs` (with the same values the shared levels are exactly
        prior-PICS's first ``K_0`` iterations).
    scale : ``c`` per plane ``[(B,) 1, 1]``; default ``max|x|`` of a CG-SENSE image.
    support : bool ``[(B,) H, W]``; samples are zero outside.
    seed : seeds one generator per plane (:func:`~mrprior.recon.planes.plane_generators`), so a
        plane draws the same samples alone or in a batch.
    keep_samples : also return the samples ``[N, (B,) H, W]``.
    views : in-plane :class:`~mrprior.recon.views.View` s cycled over the levels, as
        :func:`~mrprior.recon.pnp.pnp_hqs` (level ``k`` of the ladder denoises in view ``k``).

    Returns
    -------
    :class:`~mrprior.recon.langevin.PosteriorSamples` in data units: ``mean`` (Rao–Blackwell:
    the average of the last level's conditional means), ``std`` (``√(1 + 1/N)`` × the sample
    std: the std of the mean's error) and optionally the samples.
    """
    if any(v.resliced for v in views):
        raise ValueError("hqs_posterior takes in-plane views only")
    if num_samples < 1 or steps < 1 or not 0 <= branch < steps:
        raise ValueError(f"need num_samples >= 1 and 0 <= branch < steps: {num_samples=}, "
                         f"{steps=}, {branch=}")  # fmt: skip
    single = y.ndim == len(op.oshape)
    yb = y[None] if single else y  # [B, C, H, W]; a plain SENSE operator broadcasts over B
    device = y.device
    rhs0 = op.adjoint(yb)  # [B, H, W]
    sup = None if support is None else (support[None] if support.ndim == 2 else support)
    sn = torch.as_tensor(noise_std, dtype=torch.float32, device=device)
    sn = sn.reshape(-1, 1, 1) if sn.ndim else sn
    x_cg = conjugate_gradient(normal_operator(op), rhs0, max_iterations=cg_iterations, batch_ndim=1)
    if sup is not None:
        x_cg = x_cg * sup
    c = max_scale(x_cg) if scale is None else torch.as_tensor(scale, device=device)
    c = c.reshape(-1, 1, 1) if c.ndim else c
    sigmas = sigma_schedule(float(sigma[0]), float(sigma[1]), steps)
    step_kw = {"scale": c, "noise_std": sn, "kappa": kappa, "mu_min": mu_min,
               "cg_iterations": cg_iterations, "support": sup}  # fmt: skip
    shared = x_cg
    if branch > 0:  # the deterministic start: prior-PICS's first levels, once for all samples
        shared = pnp_hqs(
            op, yb, prior, noise_std=sn, sigma=(sigmas[0], sigmas[branch - 1]),
            max_iterations=branch, kappa=kappa, mu_min=mu_min, cg_iterations=cg_iterations,
            scale=c, x0=x_cg, support=sup, views=views,
        )  # fmt: skip
    gens = plane_generators(yb, 0 if seed is None else seed)
    planes, h, w = x_cg.shape
    coils = int(op.oshape[0])
    sn_k = sn.unsqueeze(-3) if sn.ndim else sn  # per plane on k-space [B, 1, 1, 1]
    batch_size = num_samples if batch_size is None else max(1, min(batch_size, num_samples))
    acc, acc_mean = Welford(), Welford()  # the samples (spread); the conditional means (mean)
    kept: list[torch.Tensor] = []
    done = 0
    while done < num_samples:
        b = min(batch_size, num_samples - done)

        def noise(b: int = b) -> torch.Tensor:
            return randn_planes(gens, (b, h, w), device)  # [b, B, H, W]

        def perturbation(mu: torch.Tensor, b: int = b) -> torch.Tensor:
            # Aᴴ(σ_n ξ) + √μ σ_n η: the CG solution becomes a draw from the Gaussian
            # conditional with precision (AᴴA + μ)/σ_n² (perturb-and-MAP)
            kn = randn_planes(gens, (b, coils, h, w), device, plane_ndim=3)
            return op.adjoint(sn_k * kn) + mu.sqrt() * sn * noise()

        x = shared.expand(b, planes, h, w)
        for k in range(branch, steps):
            x = x + sigmas[k] * c * noise()  # restart with fresh noise of this level
            last = k + 1 == steps
            res = hqs_step(
                op, rhs0, prior, x, sigmas[k], perturbation=perturbation if last else None,
                view=views[k % len(views)] if views else None, **step_kw,
            )  # fmt: skip
            x = res.x
        # the last level's conditional mean (same system, unperturbed right-hand side)
        cond_mean = conjugate_gradient(
            regularized_normal(op, res.mu), rhs0 + res.mu * res.z, x0=res.z,
            max_iterations=cg_iterations, batch_ndim=2,
        )  # fmt: skip
        acc.update(x)
        acc_mean.update(cond_mean * sup if sup is not None else cond_mean)
        if keep_samples:
            kept.append(x)
        done += b
        logger.debug("drew %d/%d posterior samples", done, num_samples)
    assert acc.m2 is not None and acc_mean.mean is not None
    std = acc.std * math.sqrt(1.0 + 1.0 / acc.n) if acc.n > 1 else torch.zeros_like(acc.m2)
    mean = acc_mean.mean
    out = torch.cat(kept) if keep_samples else None
    if single:
        return PosteriorSamples(mean[0], std[0], None if out is None else out[:, 0])
    return PosteriorSamples(mean, std, out)
