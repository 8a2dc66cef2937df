"""Posterior sampling: Welford statistics, data consistency, uncertainty, repeatability."""

from __future__ import annotations

import pytest
import torch

from mrprior.metrics import psnr
from mrprior.mr.fft import ifftc
from mrprior.mr.sense import sense_operator
from mrprior.recon.langevin import Welford, annealed_langevin
from mrprior.recon.prior_methods import prior_sample_method
from mrprior.recon.prior_pics import data_residual
from tests.recon.priors_for_tests import GaussianSmoothnessPrior, simulated_case

N = 32
KW = {"levels": 20, "corrector_steps": 1, "sigma": (1.0, 0.005)}


@pytest.fixture(scope="module")
def under():
    return simulated_case(n=N, accel=4.0, coils=4, noise_std=0.01, seed=0)


@pytest.fixture(scope="module")
def full():
    return simulated_case(n=N, coils=4, noise_std=0.01, seed=0, full=True)


def _sample(case, **kw):
    op = sense_operator(case.csm, case.problem.mask)
    args = {**KW, "num_samples": 6, "noise_std": 0.01 / 2**0.5, "scale": 1.0, **kw}
    return op, annealed_langevin(op, case.problem.kspace, GaussianSmoothnessPrior(), **args)


def test_welford_matches_batch_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 5, 4, dtype=torch.complex64, generator=g) * 3 + 1j
    acc = Welford()
    for chunk in (x[:3], x[3:4], x[4:]):
        acc.update(chunk)
    assert acc.n == 10
    assert torch.allclose(acc.mean, x.mean(0), atol=1e-5)
    ref_var = ((x - x.mean(0)).abs() ** 2).sum(0) / 9
    assert torch.allclose(acc.variance, ref_var, rtol=1e-4)


def test_posterior_mean_is_data_consistent(under, full):
    op, res = _sample(under)
    y = under.problem.kspace
    assert data_residual(op, res.mean, y) < 0.2  # 1.0 for x = 0
    # fully sampled: the posterior concentrates on the data (noise 0.01, image max 1)
    _, rf = _sample(full)
    assert psnr(rf.mean, full.truth) > 30.0


def test_uncertainty_higher_with_missing_kspace(under, full):
    _, ru = _sample(under)
    _, rf = _sample(full)
    assert ru.std.shape == (N, N) and not ru.std.is_complex()
    ratio = float(ru.std.mean() / rf.std.mean())
    assert ratio > 2.0, ratio


def test_seed_makes_runs_repeatable(under):
    _, a = _sample(under, seed=7, keep_samples=True)
    _, b = _sample(under, seed=7, keep_samples=True)
    _, c = _sample(under, seed=8, keep_samples=True)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.mean, b.mean)
    assert not torch.allclose(a.samples, c.samples)
    gen = torch.Generator().manual_seed(7)
    _, d = _sample(under, generator=gen, keep_samples=True)
    assert torch.equal(a.samples, d.samples)


def test_batches_give_the_same_number_of_samples(under):
    _, res = _sample(under, num_samples=5, batch_size=2, keep_samples=True)
    assert res.samples.shape == (5, N, N)
    assert torch.allclose(res.mean, res.samples.mean(0), atol=1e-6)


def test_method_returns_uncertainty_map(under):
    res = prior_sample_method(
        under.problem,
        {
            "prior": GaussianSmoothnessPrior(),
            "sampler": "langevin",
            "num_samples": 3,
            "levels": 10,
            "seed": 1,
        },
    )
    assert res.image.shape == (N, N)
    assert res.extras["uncertainty"].shape == (N, N)
    assert res.info["num_samples"] == 3


def test_invalid_arguments(under):
    op = sense_operator(under.csm, under.problem.mask)
    y = under.problem.kspace
    with pytest.raises(ValueError, match="num_samples"):
        annealed_langevin(op, y, GaussianSmoothnessPrior(), noise_std=0.01, scale=1, num_samples=0)
    with pytest.raises(ValueError, match="scale"):
        annealed_langevin(op, y, GaussianSmoothnessPrior(), noise_std=0.01, scale=0)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_matches_the_exact_gaussian_posterior(fraction):
    """With one unit coil (A = M F) and the Gaussian prior the posterior is diagonal in k-space:
    mean ``c/(c+σ_n²) y`` and variance ``c σ_n²/(c+σ_n²)`` where sampled, prior variance ``c``
    elsewhere. The sample mean must agree to within ~2× its Monte-Carlo error and the mean
    pixel variance to within 20 %."""
    n, samples = 16, 32
    prior = GaussianSmoothnessPrior(amplitude=0.1)
    g = torch.Generator().manual_seed(0)
    x = prior.sample((n, n), g)
    mask = torch.rand(n, n, generator=g) < fraction
    op = sense_operator(torch.ones(1, n, n, dtype=torch.complex64), mask)
    sn = 0.05
    noise = torch.complex(torch.randn(1, n, n, generator=g), torch.randn(1, n, n, generator=g))
    y = op(x) + sn * noise * mask
    c = prior.spectrum((n, n), torch.device("cpu"))
    m = mask.float()
    exact_mean = ifftc(m * c / (c + sn**2) * y[0], 2)
    exact_var = 2 * (m * c * sn**2 / (c + sn**2) + (1 - m) * c).mean()  # E|x − mean|² per pixel
    res = annealed_langevin(
        op, y, prior, noise_std=sn, scale=1.0, num_samples=samples, levels=40,
        corrector_steps=2, sigma=(3.0, 0.005), seed=1,
    )  # fmt: skip
    mc_error = float((exact_var * n * n / samples) ** 0.5 / exact_mean.norm())
    rel_error = float((res.mean - exact_mean).norm() / exact_mean.norm())
    assert rel_error < 2 * mc_error, (rel_error, mc_error)  # measured ≈ 1.1× at n=32
    ratio = float((res.std**2).mean() / exact_var)
    assert 0.8 < ratio < 1.25, ratio  # measured 1.00
