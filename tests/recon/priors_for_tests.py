"""Analytic priors with an exact score, for fast deterministic solver tests.

:class:`GaussianSmoothnessPrior` is a stationary Gaussian prior on complex images whose real and
imaginary parts are independent with power spectrum ``c(k) = 1 / (1 + (|k|/k0)²)^p``. Its noisy
version ``p_σ`` is Gaussian too, so the MMSE denoiser is the Wiener filter
``D(x, σ) = Fᴴ (c / (c + σ²)) F x`` and the score ``(D − x)/σ²`` is exact. It follows the
:class:`mrprior.priors.base.ScorePrior` convention: ``σ`` is the noise std of each real component.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mrprior.mr.fft import fftc, ifftc
from mrprior.recon.problem import ReconProblem


class GaussianSmoothnessPrior:
    """Stationary Gaussian prior with a smoothness spectrum; exact denoiser and score.

    Parameters
    ----------
    k0 : corner frequency in cycles per field of view.
    power : spectral decay exponent ``p``.
    amplitude : overall variance scale of ``c(k)``.
    """

    channels = 2
    sigma_min = 1e-3
    sigma_max = 1.0
    size_multiple = 1

    def __init__(self, k0: float = 4.0, power: float = 2.0, amplitude: float = 1.0) -> None:
        self.k0, self.power, self.amplitude = k0, power, amplitude
        self.device = torch.device("cpu")
        self.calls = 0

    def spectrum(self, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Per-frequency prior variance ``c(k)`` for an image of ``shape`` (centered k-space)."""
        ky = torch.arange(shape[0], device=device, dtype=torch.float32) - shape[0] // 2
        kx = torch.arange(shape[1], device=device, dtype=torch.float32) - shape[1] // 2
        r2 = ky[:, None] ** 2 + kx[None, :] ** 2
        # normalize by the number of pixels so that image-domain variance is O(amplitude)
        n = shape[0] * shape[1]
        return self.amplitude * n / (1.0 + r2 / self.k0**2) ** self.power / _norm(shape, self)

    def _sigma(self, sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        return s.reshape(-1, 1, 1) if s.ndim == 1 else s

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Wiener filter ``Fᴴ (c/(c+σ²)) F x`` for complex ``x [B, H, W]``."""
        self.calls += 1
        c = self.spectrum(tuple(x.shape[-2:]), x.device)
        s = self._sigma(sigma, x)
        return ifftc(fftc(x, 2) * (c / (c + s**2)), 2)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Exact score ``(D(x, σ) − x) / σ²``."""
        s = self._sigma(sigma, x)
        return (self.denoise(x, sigma) - x) / s**2

    def sample(self, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        """Draw one complex image ``[H, W]`` from the prior (for tests that need typical images)."""
        c = self.spectrum(shape, torch.device("cpu"))
        w = torch.complex(
            torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
        )
        return ifftc(w * c.sqrt(), 2).to(torch.complex64)

    def to(self, device: torch.device | str) -> GaussianSmoothnessPrior:
        self.device = torch.device(device)
        return self


def _norm(shape: tuple[int, int], prior: GaussianSmoothnessPrior) -> float:
    """Sum of the un-normalized spectrum, so that the per-pixel prior variance is ``amplitude``."""
    ky = torch.arange(shape[0], dtype=torch.float64) - shape[0] // 2
    kx = torch.arange(shape[1], dtype=torch.float64) - shape[1] // 2
    r2 = ky[:, None] ** 2 + kx[None, :] ** 2
    return float((1.0 / (1.0 + r2 / prior.k0**2) ** prior.power).sum())


def smooth_phantom(n: int = 64, seed: int = 0) -> torch.Tensor:
    """A smooth complex test object ``[n, n]``: ellipses blurred, with a slow phase, max|x| = 1."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    img = ((x / 0.8) ** 2 + (y / 0.9) ** 2 < 1).float() * 0.6
    for _ in range(4):
        cx, cy = (torch.rand(2, generator=g) - 0.5) * 0.8
        rx, ry = 0.1 + 0.2 * torch.rand(2, generator=g)
        img = img + 0.4 * (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1).float()
    k = fftc(img.to(torch.complex64), 2)
    r2 = (torch.arange(n) - n // 2)[:, None] ** 2 + (torch.arange(n) - n // 2)[None, :] ** 2
    img = ifftc(k * torch.exp(-r2 / (2 * (n / 3) ** 2)), 2).real
    phase = torch.exp(1j * (0.8 * x + 0.5 * y))
    out = (img.clamp_min(0) * phase).to(torch.complex64)
    return out / out.abs().max()


@dataclass
class SimulatedCase:
    """A small simulated reconstruction problem and its ground truth."""

    problem: ReconProblem
    truth: torch.Tensor
    csm: torch.Tensor


def simulated_case(
    n: int = 64,
    accel: float = 4.0,
    coils: int = 8,
    noise_std: float = 0.005,
    seed: int = 0,
    full: bool = False,
) -> SimulatedCase:
    """:func:`smooth_phantom` simulated as ``coils``-coil k-space (birdcage maps, noise) and
    undersampled by a Poisson-disc mask at ``accel`` (12×12 calibration box), or fully sampled."""
    from mrprior.mr.sampling import poisson_disc
    from mrprior.mr.simulate import simulate_kspace

    truth = smooth_phantom(n, seed=seed)
    sim = simulate_kspace(truth.numpy(), coils=coils, noise_std=noise_std, seed=seed)
    if full:
        mask = np.ones((n, n), dtype=bool)
        calib = mask.copy()
    else:
        m = poisson_disc((n, n), accel, calib=(12, 12), seed=seed)
        mask, calib = m.mask, m.calib
    k = torch.from_numpy(sim.kspace * mask[None])
    problem = ReconProblem(
        kspace=k,
        mask=torch.from_numpy(mask),
        csm=torch.from_numpy(sim.csm),
        noise_std=sim.noise_std,
        calib=torch.from_numpy(calib),
    )
    return SimulatedCase(problem=problem, truth=torch.from_numpy(sim.image), csm=problem.csm)
