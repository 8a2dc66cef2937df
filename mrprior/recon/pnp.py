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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mrprior.mr.linop import FunctionOperator, LinearOperator
from mrprior.priors.base import ScorePrior
from mrprior.recon.cg import conjugate_gradient, normal_operator
from mrprior.recon.planes import PlaneSenseOperator, map_planes
from mrprior.recon.prior_pics import Callback, max_scale, sigma_schedule
from mrprior.recon.views import View, denoise_in_view

logger = logging.getLogger(__name__)


def regularized_normal(op: LinearOperator, mu: float | torch.Tensor) -> LinearOperator:
    """The operator ``AᴴA + μ I`` (``μ`` scalar or broadcastable per batch item)."""
    gram = normal_operator(op)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return gram(x) + mu * x

    return FunctionOperator(apply, apply, op.ishape, op.ishape, name=f"({op.name}ᴴ{op.name}+μI)")


def planewise(
    op: LinearOperator,
    count: int,
    chunk: int | None,
    fn: Callable[[LinearOperator, slice], torch.Tensor],
) -> torch.Tensor:
    """``fn(op, slice(None))``, or for a batch of planes (:class:`PlaneSenseOperator`) with a
    ``chunk``, ``fn(op.select(sl), sl)`` on ``chunk`` planes at a time, concatenated: the
    planes are independent systems, so the result is the same while the ``[B, C, H, W]``
    temporaries of the operator shrink to ``[chunk, C, H, W]``."""
    if chunk is None or not isinstance(op, PlaneSenseOperator):
        return fn(op, slice(None))
    return map_planes(lambda sl: fn(op.select(sl), sl), count, chunk)


def _rows(t: torch.Tensor, sl: slice, count: int) -> torch.Tensor:
    """The planes ``sl`` of a per-plane value ``[B, 1, 1]`` (a shared value as it is)."""
    return t[sl] if t.ndim >= 3 and t.shape[-3] == count else t


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
    views: Sequence[View] = (),
    volume_planes: torch.Tensor | None = None,
    plane_chunk: int | None = None,
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
    views : :class:`~mrprior.recon.views.View` s cycled over the levels (level ``k`` denoises in
        ``views[k % len(views)]``); empty: the planes as they are. With a resliced view the
        batch must be a whole 3D volume (see ``volume_planes``); each plane keeps its own scale
        (one scale for the volume measured worse off the brain, see
        :mod:`mrprior.recon.views`).
    volume_planes : bool ``[B]``: which planes of the whole volume the batch holds (resliced
        views); default all.
    plane_chunk : for a batch of planes without leading sample dims, solve the data
        consistency ``plane_chunk`` planes at a time (bounds memory; same result).
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
    count = int(y.shape[0]) if y.ndim > len(op.oshape) else 1
    rhs0 = planewise(op, count, plane_chunk, lambda o, sl: o.adjoint(y[sl]))
    batch_ndim = rhs0.ndim - len(op.ishape)  # each image of a batch is its own system
    x_cg = planewise(
        op,
        count,
        plane_chunk,
        lambda o, sl: conjugate_gradient(
            normal_operator(o), rhs0[sl], max_iterations=cg_iterations, batch_ndim=batch_ndim
        ),
    )
    if support is not None:
        x_cg = x_cg * support
    c = max_scale(x_cg) if scale is None else torch.as_tensor(scale, device=y.device)
    x = x_cg if x0 is None else x0.clone()
    if support is not None:
        x = x * support
    for k, s in enumerate(sigmas):
        x = hqs_step(
            op, rhs0, prior, x, s, scale=c, noise_std=sn, kappa=kappa, mu_min=mu_min,
            cg_iterations=cg_iterations, support=support,
            view=views[k % len(views)] if views else None, volume_planes=volume_planes,
            plane_chunk=plane_chunk,
        ).x  # fmt: skip
        if callback is not None and callback(k, x):
            break
    return x


@dataclass
class HqsStep:
    """Result of :func:`hqs_step`: the new iterate ``x``, the denoised ``z`` and the weight
    ``μ`` (all in data units)."""

    x: torch.Tensor
    z: torch.Tensor
    mu: torch.Tensor


def hqs_step(
    op: LinearOperator,
    rhs0: torch.Tensor,
    prior: ScorePrior,
    x: torch.Tensor,
    sigma: float,
    *,
    scale: torch.Tensor,
    noise_std: torch.Tensor,
    kappa: float,
    mu_min: float,
    cg_iterations: int,
    support: torch.Tensor | None = None,
    perturbation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    view: View | None = None,
    volume_planes: torch.Tensor | None = None,
    plane_chunk: int | None = None,
) -> HqsStep:
    """One HQS iteration in data units: ``z = c · D(x / c, σ)`` (zero outside the support),
    then ``(AᴴA + μ) x = Aᴴy + μ z [+ perturbation(μ)]`` by warm-started CG, with
    ``μ = κ σ_n² / (σ c)²`` (at least ``mu_min``).

    ``rhs0 = Aᴴy``; ``x`` may carry leading sample dims before those of ``rhs0`` (each image is
    its own CG system). ``perturbation(μ)``, when given, is added to the right-hand side (a
    perturb-and-MAP draw from the Gaussian conditional, see :mod:`mrprior.recon.posterior`).
    ``view`` / ``volume_planes``: the view the denoiser sees
    (:func:`~mrprior.recon.views.denoise_in_view`); ``plane_chunk``: CG on that many planes at
    a time (:func:`planewise`; planes without leading sample dims).
    """
    z = denoise_in_view(prior, x / scale, sigma, view, volume_planes) * scale
    if support is not None:
        z = z * support
    mu = (kappa * noise_std**2 / (sigma * scale) ** 2).clamp_min(mu_min)
    rhs = rhs0 + mu * z
    if perturbation is not None:
        rhs = rhs + perturbation(mu)
    batch_ndim = x.ndim - len(op.ishape)
    count = int(x.shape[0]) if batch_ndim == 1 else 1
    x = planewise(
        op,
        count,
        plane_chunk if batch_ndim == 1 else None,
        lambda o, sl: conjugate_gradient(
            regularized_normal(o, _rows(mu, sl, count)),
            rhs[sl],
            x0=z[sl],
            max_iterations=cg_iterations,
            batch_ndim=batch_ndim,
        ),
    )
    if support is not None:
        x = x * support
    return HqsStep(x, z, mu)
