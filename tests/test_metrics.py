import math

import numpy as np
import pytest
import torch

from mrprior.metrics import (
    all_metrics,
    fit_scale,
    interval_coverage,
    nrmse,
    psnr,
    ssim,
    standardized_errors,
)


def test_hand_computed_values():
    ref = np.array([1.0, 0.0, 0.0, 0.0])
    x = np.array([0.5, 0.5, 0.0, 0.0])
    # a = <x, r>/<x, x> = 0.5 / 0.5 = 1
    assert fit_scale(x, ref) == pytest.approx(1.0)
    assert psnr(x, ref) == pytest.approx(10 * math.log10(1 / 0.125))
    assert nrmse(x, ref) == pytest.approx(math.sqrt(0.5))
    # without the fit, a scaled copy is penalized; with it, it is perfect
    assert psnr(3 * ref, ref, scale=False) == pytest.approx(10 * math.log10(1 / 1.0))
    assert psnr(3 * ref, ref) == math.inf
    assert nrmse(-2j * ref, ref) == pytest.approx(0.0)


def test_magnitude_and_scale_fit_least_squares():
    rng = np.random.default_rng(0)
    ref = rng.random((20, 20))
    x = 2.5 * ref * np.exp(1j * rng.random((20, 20))) + 0.01 * rng.random((20, 20))
    a = fit_scale(x, ref)
    errs = [np.linalg.norm(b * np.abs(x) - ref) for b in (a * 0.99, a, a * 1.01)]
    assert errs[1] < errs[0] and errs[1] < errs[2]
    assert a == pytest.approx(0.4, rel=0.02)


def _ssim_bruteforce(x, y, data_range):
    """Direct SSIM: explicit 11x11 Gaussian window (sigma 1.5), symmetric padding, per pixel."""
    r = 5
    ax = np.arange(-r, r + 1)
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5**2))
    g /= g.sum()
    xp = np.pad(x, r, mode="symmetric")
    yp = np.pad(y, r, mode="symmetric")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(r, x.shape[0] - r):
        for j in range(r, x.shape[1] - r):
            wx = xp[i : i + 2 * r + 1, j : j + 2 * r + 1]
            wy = yp[i : i + 2 * r + 1, j : j + 2 * r + 1]
            mx, my = (g * wx).sum(), (g * wy).sum()
            vx = (g * wx * wx).sum() - mx**2
            vy = (g * wy * wy).sum() - my**2
            cxy = (g * wx * wy).sum() - mx * my
            vals.append(
                ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            )
    return float(np.mean(vals))


def test_ssim_matches_direct_formula():
    rng = np.random.default_rng(1)
    ref = rng.random((24, 26))
    x = ref + 0.2 * rng.standard_normal((24, 26))
    a = fit_scale(x, ref)
    expected = _ssim_bruteforce(a * np.abs(x), ref, ref.max() - ref.min())
    assert ssim(x, ref) == pytest.approx(expected, abs=1e-6)
    assert ssim(ref, ref) == pytest.approx(1.0)
    assert ssim(x, ref) < 0.95


def test_torch_inputs_and_batches():
    rng = np.random.default_rng(2)
    ref = rng.random((2, 16, 16)).astype(np.float32)
    x = (ref + 0.1 * rng.random((2, 16, 16))).astype(np.complex64)
    m_np = all_metrics(x, ref)
    m_t = all_metrics(torch.from_numpy(x), torch.from_numpy(ref))
    for k in m_np:
        assert m_t[k] == pytest.approx(m_np[k], rel=1e-9)
    assert m_np["ssim"] == pytest.approx(
        np.mean([ssim(x[i], ref[i], scale=False) for i in range(2)]), rel=0.05
    )


def test_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        psnr(np.array([np.nan, 1.0]), np.ones(2))
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.ones((5, 5)), np.ones((5, 5)))
    with pytest.raises(ValueError, match="zeros"):
        psnr(np.ones(3), np.zeros(3))


def test_interval_coverage_is_nominal_for_a_calibrated_gaussian_error():
    rng = np.random.default_rng(1)
    truth = 1.0 + rng.random((128, 128))  # every pixel is object
    phase = np.exp(1j * rng.uniform(-np.pi, np.pi, truth.shape))
    std = 0.05 * (1 + rng.random(truth.shape))  # per-pixel std of the complex error
    err = (
        std
        / math.sqrt(2)
        * (rng.standard_normal(truth.shape) + 1j * rng.standard_normal(truth.shape))
    )
    mean = (truth + err) * phase  # the phase does not count: magnitudes are compared
    cov = interval_coverage(mean, std, truth)
    assert cov == pytest.approx(math.erf(2 / math.sqrt(2)), abs=0.01)
    # an uncertainty map half as large covers far less; twice as large nearly everything
    assert interval_coverage(mean, std / 2, truth) == pytest.approx(
        math.erf(1 / math.sqrt(2)), abs=0.02
    )
    assert interval_coverage(mean, 2 * std, truth) > 0.999


def test_standardized_errors_only_count_the_object():
    truth = np.zeros((8, 8))
    truth[2:6, 2:6] = 1.0
    mean = truth.copy()
    mean[0, 0] = 5.0  # a large error in the background is ignored
    z = standardized_errors(mean, np.full(truth.shape, 0.1), truth)
    assert z.size == 16
    with pytest.raises(ValueError, match="shapes differ"):
        standardized_errors(mean, np.ones((4, 4)), truth)
