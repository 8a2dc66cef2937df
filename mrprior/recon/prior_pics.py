"""PICS with a learned prior, the published scheme: FISTA whose regularization step is a
gradient step on the prior's negative log-density.

Objective (image ``x`` scaled to ``max|x| = 1`` where the prior acts)::

    min_x  ½‖A x − y‖²  −  λ log p_σ(x)

Each iteration takes a gradient step on the data term from the momentum point ``z``,
``u = z − τ Aᴴ(A z − y)``, then a gradient step on ``−λ log p_σ``: the image is scaled to
``max|u| = 1``, moved by ``τ λ ∇ log p_σ = τ λ s(u, σ)``, and scaled back. With ``τ λ = σ²`` the
prior step is exactly the MMSE denoiser (Tweedie); smaller values relax towards ``u``.

Reference: G. Luo, M. Blumenthal, M. Heide, M. Uecker, "Bayesian MRI reconstruction with joint
uncertainty estimation using diffusion models", MRM 2023, and G. Luo, X. Wang, M. Blumenthal,
M. Schilling, E. H. U. Rauf, R. Kotikalapudi, N. Focke, M. Uecker, "Generative image priors for
MRI reconstruction trained from magnitude-only images", MRM 2023 (BART ``pics -R TF``).

This module also holds the helpers every prior solver shares: scaling to ``max|x| = 1``, padding
to the prior's ``size_multiple`` and back, and the coil-map support.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch

from mrprior.mr.linop import LinearOperator, power_iteration
from mrprior.priors.base import ScorePrior
from mrprior.recon.planes import coil_support

logger = logging.getLogger(__name__)

__all__ = [
    "coil_support",
    "data_residual",
    "lipschitz",
    "max_scale",
    "prior_denoise",
    "prior_fista",
    "scaled_denoise",
    "sigma_schedule",
]

#: callback(iteration, x) -> True stops the solver
Callback = Callable[[int, torch.Tensor], bool | None]

_TINY = 1e-12


# -- helpers shared by the prior solvers -------------------------------------------------------
def _pad_to_multiple(x: torch.Tensor, m: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two axes of ``x`` symmetrically to a multiple of ``m``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    if ph == 0 and pw == 0:
        return x, pads
    re = torch.nn.functional.pad(x.real, pads)
    im = torch.nn.functional.pad(x.imag, pads)
    return torch.complex(re, im), pads


def _crop(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pads
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


#: pixels per network call on a GPU (images are sent in chunks of at most this many pixels)
PIXELS_PER_CALL = 16 * 256 * 256
#: pixels per network call on a CPU: one 256² image per call is fastest — a batch of 4 costs
#: 13 % more per image (its activations no longer fit in the caches); the results are identical
CPU_PIXELS_PER_CALL = 256 * 256


def prior_denoise(
    prior: ScorePrior,
    x: torch.Tensor,
    sigma: float | torch.Tensor,
    pixels_per_call: int | None = None,
) -> torch.Tensor:
    """``D(x, σ)`` for complex ``x [..., H, W]`` already scaled to ``max|x| ≈ 1``.

    All leading dims (planes, samples) are flattened into one network batch, sent in chunks of
    at most ``pixels_per_call`` pixels (default :data:`PIXELS_PER_CALL` on a GPU,
    :data:`CPU_PIXELS_PER_CALL` on a CPU; at least one image per call). Pads to
    ``prior.size_multiple`` and crops back, so any matrix size works. ``sigma`` is a scalar or
    one value per image (``x.shape[:-2]``).
    """
    if x.ndim < 2 or not x.is_complex():
        raise ValueError(f"prior input must be complex [..., H, W]: {tuple(x.shape)=}")
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    xb = x.reshape(-1, h, w)
    n = xb.shape[0]
    sig = torch.as_tensor(sigma, dtype=torch.float32)
    if sig.numel() > 1:
        sig = sig.reshape(-1)
        if sig.numel() != n:
            raise ValueError(f"sigma: one value or one per image ({n}), got {sig.numel()}")
    xp, pads = _pad_to_multiple(xb, max(1, int(getattr(prior, "size_multiple", 1))))
    if pixels_per_call is None:
        device = torch.device(getattr(prior, "device", x.device))
        pixels_per_call = CPU_PIXELS_PER_CALL if device.type == "cpu" else PIXELS_PER_CALL
    per_call = max(1, pixels_per_call // (xp.shape[-2] * xp.shape[-1]))
    out = []
    with torch.no_grad():
        for i in range(0, n, per_call):
            si = sig[i : i + per_call] if sig.numel() > 1 else sigma
            out.append(prior.denoise(xp[i : i + per_call].to(torch.complex64), si))
    d = _crop(torch.cat(out) if len(out) > 1 else out[0], pads).to(x.dtype)
    return d.reshape(*lead, h, w)


def max_scale(x: torch.Tensor) -> torch.Tensor:
    """``max|x|`` over the last two axes, keepdim (per batch item), never zero."""
    return x.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(_TINY)


def scaled_denoise(
    prior: ScorePrior, x: torch.Tensor, sigma: float | torch.Tensor, relax: float = 1.0
) -> torch.Tensor:
    """Scale ``x`` to ``max|x| = 1``, move it towards ``D(x, σ)`` by ``relax``, scale back.

    ``relax = τλ/σ²`` of a gradient step ``x + τλ s(x, σ)`` on ``log p_σ``; 1 is Tweedie's MMSE
    denoiser.
    """
    c = max_scale(x)
    xs = x / c
    d = prior_denoise(prior, xs, sigma)
    return (xs + relax * (d - xs)) * c


def sigma_schedule(start: float, end: float, n: int) -> list[float]:
    """Geometric schedule of ``n`` noise levels from ``start`` to ``end``."""
    if n <= 1 or start == end:
        return [float(end)] * max(n, 1)
    r = (end / start) ** (1.0 / (n - 1))
    return [float(start * r**i) for i in range(n)]


def lipschitz(op: LinearOperator, device: torch.device, iterations: int = 20) -> float:
    """Largest eigenvalue of ``AᴴA`` by power iteration (step size ``1/L``)."""
    return max(power_iteration(op.gram, iterations=iterations, device=device), _TINY)


def data_residual(op: LinearOperator, x: torch.Tensor, y: torch.Tensor) -> float:
    """Relative data-consistency error ``‖A x − y‖ / ‖y‖``."""
    return float(
        torch.linalg.vector_norm(op.forward(x) - y) / torch.linalg.vector_norm(y).clamp_min(_TINY)
    )


# -- the solver --------------------------------------------------------------------------------
def prior_fista(
    op: LinearOperator,
    y: torch.Tensor,
    prior: ScorePrior,
    *,
    lam: float = 1.0,
    sigma: float | Sequence[float] = (0.05, 0.01),
    max_iterations: int = 50,
    step: float | None = None,
    x0: torch.Tensor | None = None,
    support: torch.Tensor | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """FISTA with a gradient step on ``−λ log p_σ`` (the published prior-PICS scheme).

    Parameters
    ----------
    op : forward operator ``A`` (e.g. SENSE), image ``[..., H, W]`` -> k-space.
    y : measured k-space, ``op.oshape`` with optional leading batch dims.
    prior : any :class:`~mrprior.priors.base.ScorePrior`.
    lam : weight λ of the prior term, in the scaled image units (``max|x| = 1``); the prior
        step moves ``τλ/σ²`` of the way to the denoised image, so keep ``τλ ≤ σ²``.
    sigma : noise level at which the score is evaluated: one value, or ``(start, end)`` for a
        geometric schedule over the iterations.
    max_iterations : FISTA iterations.
    step : gradient step ``τ``; default ``1/L`` with ``L`` from a power iteration on ``A.gram``.
    x0 : initial image; default ``Aᴴ y``.
    support : bool ``[H, W]``: the image is set to zero outside (e.g. ESPIRiT support).
    callback : ``callback(k, x)``; returning True stops.

    Returns
    -------
    Complex image with the shape of ``x0``.
    """
    if max_iterations < 1:
        raise ValueError(f"{max_iterations=} must be >= 1")
    if step is None:
        step = 1.0 / lipschitz(op, y.device)
    if isinstance(sigma, int | float):
        sigmas = [float(sigma)] * max_iterations
    else:
        if len(sigma) != 2:
            raise ValueError(f"sigma must be a number or (start, end): {sigma!r}")
        sigmas = sigma_schedule(float(sigma[0]), float(sigma[1]), max_iterations)
    x = op.adjoint(y) if x0 is None else x0.clone()
    if support is not None:
        x = x * support
    z, t = x, 1.0
    for k in range(max_iterations):
        u = z - step * op.adjoint(op.forward(z) - y)
        relax = min(step * lam / sigmas[k] ** 2, 1.0)
        x_new = scaled_denoise(prior, u, sigmas[k], relax=relax)
        if support is not None:
            x_new = x_new * support
        t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        z = x_new + ((t - 1.0) / t_new) * (x_new - x)
        x, t = x_new, t_new
        if callback is not None and callback(k, x):
            break
    return x
