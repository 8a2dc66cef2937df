"""The interface every learned image prior offers to the solvers.

Priors act on complex images ``[B, H, W]`` (complex64) that the caller has scaled to
``max|x| = 1``. The (real, imag) channel pair exists only inside the network wrapper.
A denoiser becomes a score by Tweedie's formula: ``s(x, σ) = (D(x, σ) − x) / σ²``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class ScorePrior(Protocol):
    """A learned prior p_σ(x) over complex images, usable by any solver."""

    #: network channels: 2 for a complex prior, 1 for a magnitude prior
    channels: int
    #: noise-level range the prior was trained on
    sigma_min: float
    sigma_max: float
    #: multiple the spatial size is padded to before the network runs
    size_multiple: int

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """MMSE denoiser D(x, σ) for complex ``x [B, H, W]``; ``sigma`` scalar or ``[B]``."""
        ...

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """∇ₓ log p_σ(x) = (D(x, σ) − x) / σ², complex ``[B, H, W]``."""
        ...

    def to(self, device: torch.device | str) -> ScorePrior:
        """Move the prior to a torch device and return it."""
        ...
