"""NLINV: operator derivative, Gauss–Newton convergence, coil-map recovery, the method."""

from __future__ import annotations

import itertools

import pytest
import torch

from mrprior.metrics import psnr
from mrprior.mr.sense import sense_operator
from mrprior.recon.nlinv import NlinvOperator, irgnm, nlinv, sobolev_weights
from mrprior.recon.pnp import pnp_hqs
from mrprior.recon.prior_methods import prior_nlinv_method
from mrprior.recon.problem import method_needs_csm
from tests.operator_checks import check_operator
from tests.recon.priors_for_tests import GaussianSmoothnessPrior, simulated_case

N = 48


@pytest.fixture(scope="module")
def case():
    return simulated_case(n=N, accel=3.0, coils=6, noise_std=0.005, seed=2)


def _rand(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=torch.complex64, generator=g)


def coil_correlation(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``|Σ_c conj(Ŝ_c) S_c| / (‖Ŝ‖ ‖S‖)``: 1 when equal up to a per-pixel phase."""
    num = (est.conj() * ref).sum(0).abs()
    den = est.abs().pow(2).sum(0).sqrt() * ref.abs().pow(2).sum(0).sqrt()
    return num / den.clamp_min(1e-12)


def test_sobolev_weights():
    w = sobolev_weights((32, 32))
    assert w[16, 16] == 1.0
    assert float(w[0, 0]) < 1e-10  # (1 + 220·0.5)^(-16)
    assert torch.allclose(w, w.flip(0).roll(1, 0))  # symmetric about the centre


def test_derivative_is_a_linear_operator_and_matches_finite_differences():
    mask = torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) < 0.5
    op = NlinvOperator(mask, coils=3)
    x = _rand(op.ishape, 1)
    dg = op.derivative(x)
    check_operator(dg)
    dx = _rand(op.ishape, 2)
    eps = 1e-3
    fd = (op.forward(x + eps * dx) - op.forward(x - eps * dx)) / (2 * eps)
    lin = dg.forward(dx)
    assert torch.linalg.vector_norm(fd - lin) < 1e-3 * torch.linalg.vector_norm(lin)


def test_irgnm_reduces_residual(case):
    op = NlinvOperator(case.problem.mask, coils=case.problem.kspace.shape[0])
    y = case.problem.kspace * (100 / torch.linalg.vector_norm(case.problem.kspace))
    x0 = torch.zeros(op.ishape, dtype=torch.complex64)
    x0[0] = 1
    res = []
    irgnm(
        op,
        y,
        x0,
        max_iterations=6,
        cg_iterations=20,
        callback=lambda n, x: (
            res.append(float(torch.linalg.vector_norm(op.forward(x) - y))) and False
        ),
    )
    assert len(res) == 6
    assert all(b < a for a, b in itertools.pairwise(res)), res
    assert res[-1] < 0.2 * float(torch.linalg.vector_norm(y))


def test_recovers_coil_maps(case):
    """Measure: per-pixel coil correlation (1 = equal up to a phase), inside the object
    (|x| > 0.2 max); threshold: mean > 0.95 and 5th percentile > 0.85."""
    r = nlinv(case.problem.kspace, case.problem.mask, None, max_iterations=8, cg_iterations=30)
    obj = case.truth.abs() > 0.2 * case.truth.abs().max()
    corr = coil_correlation(r.csm, case.csm)[obj]
    assert float(corr.mean()) > 0.95, float(corr.mean())
    assert float(corr.quantile(0.05)) > 0.85, float(corr.quantile(0.05))
    # normalized coil maps, and an image comparable to the truth
    norm = r.csm.abs().pow(2).sum(0)
    assert torch.allclose(norm[obj], torch.ones_like(norm[obj]), atol=1e-4)
    assert psnr(r.image, case.truth) > 25.0


def test_method_is_calibration_free_and_uses_the_prior(case):
    assert method_needs_csm("prior-nlinv") is False
    problem = type(case.problem)(
        kspace=case.problem.kspace, mask=case.problem.mask, noise_std=case.problem.noise_std
    )
    prior = GaussianSmoothnessPrior()
    res = prior_nlinv_method(
        problem,
        {
            "prior": prior,
            "iterations": 6,
            "prior_steps": 2,
            "inner_iterations": 3,
            "cg_iterations": 20,
        },
    )
    assert prior.calls == 6  # inner_iterations denoiser calls after each of the final steps
    assert res.extras["csm"].shape == case.csm.shape
    assert psnr(res.image, case.truth) > 25.0


def test_prior_needs_noise_level(case):
    with pytest.raises(ValueError, match="noise_std"):
        nlinv(case.problem.kspace, case.problem.mask, GaussianSmoothnessPrior())


def test_prior_phase_matches_pics_with_true_coils_and_keeps_the_gauge():
    """The prior phase (coil-only Gauss–Newton steps alternating with HQS on the image) must do
    about as well as the same prior in PICS-HQS with the *true* coil maps, and the image must
    not collapse (the failure mode of a prior target inside the joint Gauss–Newton step, where
    the image/coil gauge drifts: its image lost 18 dB)."""
    noisy = simulated_case(n=N, accel=3.0, coils=6, noise_std=0.02, seed=3)
    p = noisy.problem
    sn = 0.02 / 2**0.5
    prior = GaussianSmoothnessPrior()
    res = nlinv(
        p.kspace,
        p.mask,
        prior,
        max_iterations=8,
        prior_steps=2,
        inner_iterations=4,
        cg_iterations=30,
        noise_std=sn,
    )
    assert prior.calls == 8
    pics = pnp_hqs(
        sense_operator(p.csm, p.mask),
        p.kspace,
        GaussianSmoothnessPrior(),
        noise_std=sn,
        max_iterations=8,
    )
    assert psnr(res.image, noisy.truth) > psnr(pics, noisy.truth) - 2.0
    ratio = float(res.image.abs().sum() / noisy.truth.abs().sum())
    assert 0.8 < ratio < 1.2, ratio
