"""Plug-and-play HQS: data consistency, prior weighting and batching."""

from __future__ import annotations

import pytest
import torch

from mrprior.metrics import psnr
from mrprior.mr.sense import sense_operator
from mrprior.recon.cg import conjugate_gradient
from mrprior.recon.pnp import pnp_hqs, regularized_normal
from mrprior.recon.prior_pics import data_residual
from tests.recon.priors_for_tests import GaussianSmoothnessPrior, simulated_case

SN = 0.01 / 2**0.5  # noise std per real component of the simulated case


@pytest.fixture(scope="module")
def case():
    return simulated_case(n=64, accel=6.0, noise_std=0.01, seed=0)


def test_reduces_data_error_and_beats_zero_filling(case):
    op = sense_operator(case.csm, case.problem.mask)
    y = case.problem.kspace
    x0 = torch.zeros_like(case.truth)
    errors: list[float] = []
    x = pnp_hqs(
        op,
        y,
        GaussianSmoothnessPrior(),
        noise_std=SN,
        kappa=100.0,
        max_iterations=20,
        x0=x0,
        callback=lambda k, xk: errors.append(data_residual(op, xk, y)) and False,
    )
    assert data_residual(op, x0, y) == pytest.approx(1.0)
    assert len(errors) == 20 and errors[-1] < 0.1
    gain = psnr(x, case.truth) - psnr(op.adjoint(y), case.truth)
    assert gain > 1.5, gain  # measured +2.0 dB from x0 = 0


def test_prior_weight_trades_data_consistency(case):
    """A larger κ (stronger prior) must give a larger data residual."""
    op = sense_operator(case.csm, case.problem.mask)
    y = case.problem.kspace
    res = [
        data_residual(
            op,
            pnp_hqs(op, y, GaussianSmoothnessPrior(), noise_std=SN, kappa=k, max_iterations=8),
            y,
        )
        for k in (0.1, 10.0, 1000.0)
    ]
    assert res[0] < res[1] < res[2], res


def test_batch_matches_single(case):
    op = sense_operator(case.csm, case.problem.mask)
    y = case.problem.kspace
    other = simulated_case(n=64, accel=6.0, noise_std=0.01, seed=1)
    y2 = torch.stack([y, other.problem.kspace * case.problem.mask])
    kw = {"noise_std": SN, "kappa": 10.0, "max_iterations": 6}
    xb = pnp_hqs(op, y2, GaussianSmoothnessPrior(), **kw)
    x0 = pnp_hqs(op, y, GaussianSmoothnessPrior(), **kw)
    assert xb.shape == (2, 64, 64)
    assert torch.allclose(xb[0], x0, atol=2e-3 * float(x0.abs().max()))


def test_regularized_normal_solves_tikhonov(case):
    op = sense_operator(case.csm, case.problem.mask)
    mu = 0.5
    normal = regularized_normal(op, mu)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 64, dtype=torch.complex64, generator=g)
    rhs = op.adjoint(op.forward(x)) + mu * x
    assert torch.allclose(normal.forward(x), rhs, atol=1e-5)
    sol = conjugate_gradient(normal, rhs, max_iterations=100, tol=1e-7)
    assert torch.linalg.vector_norm(sol - x) < 1e-3 * torch.linalg.vector_norm(x)


def test_invalid_arguments(case):
    op = sense_operator(case.csm, case.problem.mask)
    with pytest.raises(ValueError, match="max_iterations"):
        pnp_hqs(op, case.problem.kspace, GaussianSmoothnessPrior(), noise_std=SN, max_iterations=0)
    with pytest.raises(ValueError, match="noise_std"):
        pnp_hqs(op, case.problem.kspace, GaussianSmoothnessPrior(), noise_std=-1.0)
