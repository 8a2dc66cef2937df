import numpy as np
import pytest
import torch

from mrprior.metrics import psnr
from mrprior.mr.linop import FunctionOperator, power_iteration
from mrprior.mr.sense import sense_operator
from mrprior.recon.baselines import cg_sense, zero_filled
from mrprior.recon.fista import _calib_block, bart_scaling, fista, l1_wavelet, lipschitz_bound
from mrprior.recon.wavelet import soft_threshold
from tests.recon.test_cg import synthetic_problem


def test_fista_solves_separable_lasso():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(50, dtype=torch.complex64, generator=g)
    lam = 0.7
    x = fista(
        lambda x: x - b,
        lambda v, t: soft_threshold(v, lam * t),
        torch.zeros_like(b),
        step=0.5,
        max_iterations=60,
    )
    torch.testing.assert_close(x, soft_threshold(b, lam), rtol=1e-5, atol=1e-5)


def test_fista_converges_on_lasso_with_restart_and_callback():
    g = torch.Generator().manual_seed(1)
    m = torch.randn((30, 20), generator=g, dtype=torch.float64)
    b = torch.randn(30, generator=g, dtype=torch.float64)
    lip = float(torch.linalg.matrix_norm(m, ord=2) ** 2)

    def obj(x):
        return 0.5 * float(torch.sum((m @ x - b) ** 2)) + 0.1 * float(x.abs().sum())

    vals = {}
    for restart in (False, True):
        hist: list[float] = []
        x = fista(
            lambda x: m.T @ (m @ x - b),
            lambda v, t: soft_threshold(v, 0.1 * t),
            torch.zeros(20, dtype=torch.float64),
            step=1 / lip,
            max_iterations=500,
            restart=restart,
            callback=lambda i, x, hist=hist: hist.append(obj(x)),
        )
        assert hist[-1] < hist[0]
        vals[restart] = obj(x)
    assert vals[True] == pytest.approx(vals[False], rel=1e-6)
    stops = []
    fista(lambda x: x, lambda v, t: v, torch.ones(3), 0.5, 10, lambda i, x: stops.append(i) or True)
    assert stops == [0]
    with pytest.raises(ValueError):
        fista(lambda x: x, lambda v, t: v, torch.ones(3), 0.0)


def test_l1_wavelet_data_consistency_quality_and_seeds():
    prob, img = synthetic_problem()
    A = sense_operator(prob.csm, prob.mask)
    res = []
    x = l1_wavelet(
        A,
        prob.kspace,
        lam=0.002,
        max_iterations=40,
        seed=3,
        callback=lambda i, x: res.append(float(torch.linalg.vector_norm(A(x) - prob.kspace))),
    )
    y_norm = float(torch.linalg.vector_norm(prob.kspace))
    assert res[-1] < 0.1 * y_norm and res[-1] < res[0]
    assert psnr(x, img) > psnr(zero_filled(prob), img) + 3
    again = l1_wavelet(A, prob.kspace, lam=0.002, max_iterations=40, seed=3)
    torch.testing.assert_close(x, again, rtol=0, atol=0)
    other = l1_wavelet(A, prob.kspace, lam=0.002, max_iterations=40, seed=4)
    assert not torch.equal(x, other)


def test_l1_wavelet_without_regularization_is_least_squares():
    prob, _ = synthetic_problem(n=32, accel_keep=0.5)
    A = sense_operator(prob.csm, prob.mask)
    x = l1_wavelet(A, prob.kspace, lam=0.0, max_iterations=150, random_shift=False)
    ref = cg_sense(A, prob.kspace, max_iterations=100, tol=1e-9)
    assert float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref)) < 0.02


def test_l1_scale_invariance():
    """With BART's data scaling, λ is relative: scaling the data scales the result."""
    prob, _ = synthetic_problem(n=32)
    A = sense_operator(prob.csm, prob.mask)
    a = l1_wavelet(A, prob.kspace, lam=0.01, max_iterations=20)
    b = l1_wavelet(A, 1000 * prob.kspace, lam=0.01, max_iterations=20)
    torch.testing.assert_close(b / 1000, a, rtol=1e-3, atol=1e-4 * float(a.abs().max()))
    with pytest.raises(ValueError):
        l1_wavelet(A, prob.kspace, lam=-1)
    with pytest.raises(ValueError):
        l1_wavelet(A, prob.kspace[:2], lam=0.1)


def test_calib_block_and_scaling_rule():
    pat = np.zeros((64, 64), dtype=bool)
    pat[32 - 10 : 32 + 10, 32 - 6 : 32 + 6] = True  # 20 ky lines x 12 kx columns
    (y0, cy), (x0, cx) = _calib_block(pat)
    assert (cy, cx) == (20, 12) and pat[y0 : y0 + cy, x0 : x0 + cx].all()
    pat[:] = True
    assert [c for _, c in _calib_block(pat)] == [32, 32]  # capped at 32 like BART
    # a flat k-space block (delta image): max is an outlier -> p90 rule picks between them
    k = torch.zeros((2, 64, 64), dtype=torch.complex64)
    k[:, 16:48, 16:48] = 1.0
    s = bart_scaling(k)
    assert s > 0 and np.isfinite(s)
    assert bart_scaling(3 * k) == pytest.approx(3 * s, rel=1e-6)


def test_bart_scaling_of_a_volume():
    """One scale for a whole 3D k-space ``[C, kz, ky, kx]`` from its central calibration
    block (``bart pics`` on 3D data; compared with BART itself in test_l1_vs_bart_3d.py)."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn((2, 40, 36, 48), dtype=torch.complex64, generator=g)
    s = bart_scaling(k)
    assert s > 0 and bart_scaling(2 * k) == pytest.approx(2 * s, rel=1e-6)
    outer = k.clone()
    outer[:, :4] = outer[:, 36:] = 0  # outside the central 32 partitions: not read
    assert bart_scaling(outer) == pytest.approx(s, rel=1e-6)
    # a single partition is the 2D estimate
    assert bart_scaling(k[:, :1]) == pytest.approx(bart_scaling(k[:, 0]), rel=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        bart_scaling(k, torch.ones((40, 36, 47), dtype=torch.bool))
    with pytest.raises(ValueError, match="kspace must be"):
        bart_scaling(k[0, 0])


def test_lipschitz_bound_is_an_upper_bound():
    prob, _ = synthetic_problem(n=32)
    A = sense_operator(prob.csm, prob.mask)
    bound = lipschitz_bound(A)
    assert bound == pytest.approx(1.0, rel=1e-5)  # normalized maps
    assert power_iteration(A.gram, iterations=50) <= bound * (1 + 1e-4)
    generic = FunctionOperator(lambda x: 3 * x, lambda x: 3 * x, (4,), (4,))
    assert lipschitz_bound(generic) == pytest.approx(9.0, rel=1e-4)
