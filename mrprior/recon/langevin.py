"""Posterior sampling with a score prior: annealed Langevin / predictor–corrector with data
consistency, and the posterior mean and per-pixel standard deviation of a batch of samples.

The posterior ``p(x | y) ∝ p(y | x) p(x)`` is sampled on a geometric ladder of noise levels
``σ_1 > … > σ_L`` in the image scaled by ``1/c`` (``c ≈ max|x|``). At level ``σ`` the posterior
score is approximated (Jalal et al. 2021) by::

    ∇ log p_σ(x | y) ≈ s(x, σ) + Aᴴ(y − A x) / (σ_n² + σ²)

* corrector (Langevin): ``x ← x + α g + √(2α) ξ`` with ``α = ε σ²`` and ``ξ`` real-and-imag
  standard normal;
* predictor (reverse VE diffusion): ``x ← x + (σ_i² − σ_{i+1}²) g + √(σ_i² − σ_{i+1}²) ξ``.

The final samples are denoised once (Tweedie at ``σ_L``). Mean and variance over the samples are
accumulated with Welford's update, so any number of samples is drawn in batches.

References: Y. Song, S. Ermon, "Generative modeling by estimating gradients of the data
distribution", NeurIPS 2019; Y. Song et al., "Score-based generative modeling through stochastic
differential equations", ICLR 2021; A. Jalal et al., "Robust compressed sensing MRI with deep
generative priors", NeurIPS 2021; G. Luo, M. Blumenthal, M. Heide, M. Uecker, "Bayesian MRI
reconstruction with joint uncertainty estimation using diffusion models", MRM 2023.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mrprior.mr.linop import LinearOperator
from mrprior.priors.base import ScorePrior
from mrprior.recon.planes import plane_generators, randn_planes
from mrprior.recon.prior_pics import Callback, prior_denoise, sigma_schedule

logger = logging.getLogger(__name__)


class Welford:
    """Running mean and variance over samples arriving in batches (Welford / Chan update)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, batch: torch.Tensor) -> None:
        """Add samples ``batch [B, ...]`` (complex allowed: variance of ``|x − mean|``)."""
        b = batch.shape[0]
        bmean = batch.mean(dim=0)
        bm2 = ((batch - bmean).abs() ** 2).sum(dim=0)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = b, bmean, bm2
            return
        n = self.n + b
        delta = bmean - self.mean
        self.mean = self.mean + delta * (b / n)
        self.m2 = self.m2 + bm2 + (delta.abs() ** 2) * (self.n * b / n)
        self.n = n

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased per-pixel variance (zeros for a single sample)."""
        if self.m2 is None:
            raise ValueError("no samples")
        return self.m2 / max(self.n - 1, 1)

    @property
    def std(self) -> torch.Tensor:
        return self.variance.sqrt()


@dataclass
class PosteriorSamples:
    """Result of :func:`annealed_langevin`.

    Attributes
    ----------
    mean : complex ``[(B,) H, W]`` posterior mean (data units).
    std : real ``[(B,) H, W]`` per-pixel posterior standard deviation of the complex samples.
    samples : complex ``[N, (B,) H, W]`` the samples when ``keep_samples``, else None.
    """

    mean: torch.Tensor
    std: torch.Tensor
    samples: torch.Tensor | None = None


def _randn_complex(shape: Sequence[int], generator: torch.Generator, device: torch.device):
    """Complex normal with unit variance in the real and in the imaginary part."""
    re = torch.randn(tuple(shape), generator=generator, device=generator.device)
    im = torch.randn(tuple(shape), generator=generator, device=generator.device)
    return torch.complex(re, im).to(device)


def annealed_langevin(
    op: LinearOperator,
    y: torch.Tensor,
    prior: ScorePrior,
    *,
    noise_std: float | torch.Tensor,
    scale: float | torch.Tensor,
    num_samples: int = 4,
    batch_size: int | None = None,
    sigma: Sequence[float] = (1.0, 0.005),
    levels: int = 50,
    corrector_steps: int = 2,
    epsilon: float = 0.3,
    predictor: bool = True,
    support: torch.Tensor | None = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    keep_samples: bool = False,
    callback: Callback | None = None,
) -> PosteriorSamples:
    """Draw posterior samples by annealed Langevin dynamics (predictor–corrector) with data
    consistency; return their mean and per-pixel std.

    Parameters
    ----------
    op : forward operator ``A``, image ``[H, W]`` -> k-space ``[C, H, W]`` (broadcasts over
        the sample batch), or a :class:`~mrprior.recon.planes.PlaneSenseOperator`.
    y : measured k-space ``[C, H, W]``, or ``[B, C, H, W]`` for a batch of planes.
    prior : any :class:`~mrprior.priors.base.ScorePrior`.
    noise_std : ``σ_n`` per real component of a k-space sample, in data units (scalar or per
        plane ``[B, 1, 1]``).
    scale : ``c``: the image is sampled as ``x / c`` so that ``max|x/c| ≈ 1`` (e.g. the max of a
        CG-SENSE image); scalar or per plane ``[B, 1, 1]``.
    num_samples : number of posterior samples ``N``.
    batch_size : samples drawn at once (default all ``N``).
    sigma : ``(σ_1, σ_L)``: first and last noise level of the geometric ladder.
    levels : number of noise levels ``L``.
    corrector_steps : Langevin steps per level.
    epsilon : corrector step ``α = ε σ²``.
    predictor : add a reverse-diffusion predictor step between levels.
    support : bool ``[H, W]``; samples are zero outside.
    seed / generator : randomness; an explicit ``generator`` wins over ``seed`` for one plane;
        a batch of planes draws from :func:`~mrprior.recon.planes.plane_generators` (``seed``).
    keep_samples : also return all samples.
    callback : ``callback(level, x_batch)``; returning True stops annealing early.

    Returns
    -------
    :class:`PosteriorSamples` in data units.
    """
    if num_samples < 1 or levels < 1:
        raise ValueError(f"{num_samples=} and {levels=} must be >= 1")
    c = torch.as_tensor(scale, dtype=torch.float32, device=y.device)
    if bool((c <= 0).any()):
        raise ValueError(f"{scale=} must be > 0")
    device = y.device
    batched = y.ndim > len(op.oshape)
    if batched:  # one generator per plane: a plane draws the same noise alone or in a batch
        gens = plane_generators(y.reshape(-1, *op.oshape), 0 if seed is None else seed)
    elif generator is None:
        generator = torch.Generator(device="cpu").manual_seed(0 if seed is None else seed)

    def randn(b: int) -> torch.Tensor:
        if batched:
            return randn_planes(gens, (b, *op.ishape), device).reshape(b, *shape)
        return _randn_complex((b, *shape), generator, device)

    sigmas = sigma_schedule(float(sigma[0]), float(sigma[1]), levels)
    ys = y / (c.unsqueeze(-3) if c.ndim else c)  # c: scalar or per plane [B, 1, 1]
    sn2 = (torch.as_tensor(noise_std, dtype=torch.float32, device=y.device) / c) ** 2
    shape = (*y.shape[: y.ndim - len(op.oshape)], *op.ishape)  # [(B,) H, W]
    batch_size = num_samples if batch_size is None else max(1, min(batch_size, num_samples))
    acc = Welford()
    kept: list[torch.Tensor] = []

    def grad(x: torch.Tensor, s: float) -> torch.Tensor:
        score = (prior_denoise(prior, x, s) - x) / s**2
        g = score + op.adjoint(ys - op.forward(x)) / (sn2 + s**2)
        return g * support if support is not None else g

    done = 0
    while done < num_samples:
        b = min(batch_size, num_samples - done)
        x = sigmas[0] * randn(b)
        if support is not None:
            x = x * support
        for i, s in enumerate(sigmas):
            alpha = epsilon * s**2
            for _ in range(corrector_steps):
                noise = randn(b)
                x = x + alpha * grad(x, s) + math.sqrt(2 * alpha) * noise
            if predictor and i + 1 < len(sigmas):
                d2 = s**2 - sigmas[i + 1] ** 2
                noise = randn(b)
                x = x + d2 * grad(x, s) + math.sqrt(d2) * noise
            if support is not None:
                x = x * support
            if callback is not None and callback(i, x * c):
                break
        x = prior_denoise(prior, x, sigmas[-1])
        if support is not None:
            x = x * support
        x = x * c
        acc.update(x)
        if keep_samples:
            kept.append(x)
        done += b
        logger.debug("drew %d/%d posterior samples", done, num_samples)
    assert acc.mean is not None
    return PosteriorSamples(
        mean=acc.mean, std=acc.std, samples=torch.cat(kept) if keep_samples else None
    )
