"""Stochastic-HQS posterior sampling: shapes, seeds, mean near prior-PICS, a spread that
follows the information in the data."""

from __future__ import annotations

import pytest
import torch

from mrprior.metrics import psnr
from mrprior.mr.sense import sense_operator
from mrprior.recon.planes import coil_support
from mrprior.recon.pnp import pnp_hqs
from mrprior.recon.posterior import hqs_posterior
from tests.recon.priors_for_tests import GaussianSmoothnessPrior, simulated_case

N = 48
SN = 0.01 / 2**0.5
KW = {"steps": 8, "branch": 4, "sigma": (0.1, 0.005), "kappa": 0.5}


@pytest.fixture(scope="module")
def under():
    return simulated_case(n=N, accel=4.0, noise_std=0.01, seed=2)


def _sample(case, **kw):
    op = sense_operator(case.csm, case.problem.mask)
    support = coil_support(case.csm)
    args = {**KW, "num_samples": 4, **kw}
    return hqs_posterior(
        op, case.problem.kspace, GaussianSmoothnessPrior(), noise_std=SN, support=support, **args
    )


def test_shapes_seeds_and_batches(under):
    res = _sample(under, keep_samples=True)
    assert res.mean.shape == res.std.shape == (N, N)
    assert res.samples.shape == (4, N, N)
    again = _sample(under, keep_samples=True)
    torch.testing.assert_close(again.samples, res.samples)
    other = _sample(under, seed=5, keep_samples=True)
    assert not torch.allclose(other.samples, res.samples)
    split = _sample(under, batch_size=3)
    assert split.mean.shape == (N, N)
    # the std is √(1 + 1/N) × the sample std (the error of an N-sample mean)
    dev = res.samples - res.samples.mean(0)
    sample_std = ((dev.abs() ** 2).sum(0) / 3).sqrt()
    torch.testing.assert_close(res.std, sample_std * (1 + 1 / 4) ** 0.5)


def test_mean_close_to_prior_pics_and_better_than_one_sample(under):
    op = sense_operator(under.csm, under.problem.mask)
    support = coil_support(under.csm)
    pics = pnp_hqs(
        op, under.problem.kspace, GaussianSmoothnessPrior(), noise_std=SN, sigma=(0.1, 0.005),
        max_iterations=8, kappa=0.5, mu_min=1e-4, support=support,
    )  # fmt: skip
    res = _sample(under, keep_samples=True)
    p_mean, p_pics = psnr(res.mean, under.truth), psnr(pics, under.truth)
    assert abs(p_mean - p_pics) < 0.5, (p_mean, p_pics)
    assert p_mean > max(psnr(s, under.truth) for s in res.samples), p_mean


def test_spread_follows_the_data(under):
    """Zero outside the support; fully sampled data leave less uncertainty than R = 4."""
    full = simulated_case(n=N, accel=4.0, noise_std=0.01, seed=2, full=True)
    res_u, res_f = _sample(under), _sample(full)
    support = coil_support(under.csm)
    assert torch.all(res_u.std[~support] == 0)
    assert float(res_u.std[support].mean()) > 1.3 * float(res_f.std[support].mean())
    assert float(res_f.std[support].mean()) > 0


def test_invalid_arguments(under):
    with pytest.raises(ValueError, match="branch"):
        _sample(under, branch=8)
    with pytest.raises(ValueError, match="num_samples"):
        _sample(under, num_samples=0)
