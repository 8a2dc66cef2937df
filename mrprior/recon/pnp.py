"""Plug-and-play half-quadratic splitting (HQS) with a learned denoiser.

Alternates, with the denoiser's noise level ``σ`` annealed geometrically::

    z ← c · D(x / c, σ)                      (Tweedie: D = x + σ² s(x, σ))
    x ← argmin ‖A x − y‖² + μ ‖x − z‖²       i.e. (AᴴA + μ I) x = Aᴴ y + μ z   (CG)

where ``c`` is ``max|x|`` of a short CG-SENSE solution (fixed over the iterations, so that the
prior sees ``max|x| ≈ 1`` and ``μ`` does not depend on the current iterate), and
``μ = κ σ_n² / (σ c)²``: the HQS weight of a Gaussian likelihood with noise ``σ_n`` per
k-space component against a denoiser whose noise level is ``σ c`` in the same (data) units.

Reference: K. Zhang, W. Zuo, S. Gu, L. Zhang, "Learning deep CNN denoiser prior for image
restoration", CVPR 2017; applied to MRI priors as in Luo et al., MRM 2023.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from mrprior.mr.linop import FunctionOperator, LinearOperator
from mrprior.priors.base import ScorePrior
from mrprior.recon.cg import conjugate_gradient, normal_operator
from mrprior.recon.prior_pics import Callback, max_scale, prior_denoise, sigma_schedule

logger = logging.getLogger(__name__)


def regularized_normal(op: LinearOperator, mu: float | torch.Tensor) -> LinearOperator:
    """The operator ``AᴴA + μ I`` (``μ`` scalar or broadcastable per batch item)."""
    gram = normal_operator(op)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return gram(x) + mu * x

    return FunctionOperator(apply, apply, op.ishape, op.ishape, name=f"({op.name}ᴴ{op.name}+μI)")


def pnp_hqs(
    op: LinearOperator,
    y: torch.Tensor,
    prior: ScorePrior,
    *,
    noise_std: float | torch.Tensor,
    sigma: Sequence[float] = (0.1, 0.005),
    max_iterations: int = 30,
    kappa: float = 1.0,
    mu_min: float = 0.0,
    cg_iterations: int = 5,
    scale: float | torch.Tensor | None = None,
    x0: torch.Tensor | None = None,
    support: torch.Tensor | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Plug-and-play HQS: CG data consistency alternating with the prior's MMSE denoiser.

    Parameters
    ----------
    op : forward operator ``A`` (SENSE), image ``[..., H, W]`` -> k-space.
    y : measured k-space (``op.oshape``, optional leading batch dims).
    prior : any :class:`~mrprior.priors.base.ScorePrior`.
    noise_std : ``σ_n``, noise std per real component of a k-space sample (prewhitened data);
        a scalar or one value per image of a batch (shaped ``[B, 1, 1]``).
    sigma : ``(start, end)`` of the geometric schedule of the denoiser's noise level (in units of
        the image scaled to ``max|x| = 1``).
    max_iterations : outer HQS iterations (= number of noise levels).
    kappa : factor ``κ`` in ``μ = κ σ_n² / (σ c)²``.
    mu_min : lower bound on ``μ`` relative to ``‖AᴴA‖`` (keeps CG well conditioned when
        ``σ_n`` is tiny).
    cg_iterations : CG iterations per data-consistency solve (warm-started).
    scale : ``c``; default ``max|x_cg|`` (per batch item) of ``cg_iterations`` CG iterations on
        ``AᴴA x = Aᴴ y``.
    x0 : initial image; default that CG solution.
    support : bool ``[H, W]``; the image is set to zero outside (ESPIRiT support).
    callback : ``callback(k, x)``; returning True stops.

    Returns
    -------
    Complex image.
    """
    if max_iterations < 1:
        raise ValueError(f"{max_iterations=} must be >= 1")
    sn = torch.as_tensor(noise_std, dtype=torch.float32, device=y.device)
    if bool((sn < 0).any()):
        raise ValueError(f"{noise_std=} must be >= 0")
    sigmas = sigma_schedule(float(sigma[0]), float(sigma[1]), max_iterations)
    rhs0 = op.adjoint(y)
    batch_ndim = rhs0.ndim - len(op.ishape)  # each image of a batch is its own system
    x_cg = conjugate_gradient(
        normal_operator(op), rhs0, max_iterations=cg_iterations, batch_ndim=batch_ndim
    )
    if support is not None:
        x_cg = x_cg * support
    c = max_scale(x_cg) if scale is None else torch.as_tensor(scale, device=y.device)
    x = x_cg if x0 is None else x0.clone()
    if support is not None:
        x = x * support
    for k, s in enumerate(sigmas):
        z = prior_denoise(prior, x / c, s) * c
        if support is not None:
            z = z * support
        mu = (kappa * sn**2 / (s * c) ** 2).clamp_min(mu_min)
        x = conjugate_gradient(
            regularized_normal(op, mu), rhs0 + mu * z, x0=z, max_iterations=cg_iterations
        )
        if support is not None:
            x = x * support
        if callback is not None and callback(k, x):
            break
    return x
