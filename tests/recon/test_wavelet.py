import numpy as np
import pytest
import pywt
import torch

from mrprior.recon.wavelet import (
    WaveletTransform,
    analysis_matrix,
    num_levels,
    soft_threshold,
    wavelet_soft_threshold,
)
from tests.operator_checks import check_operator
from tests.operator_checks import random_complex as _cx


@pytest.mark.parametrize(
    ("shape", "wavelet", "levels"),
    [
        ((64, 64), "db2", None),
        ((37, 50), "db4", 2),
        ((8, 12), "haar", 2),
        ((250, 256), "db2", None),
    ],
)
def test_perfect_reconstruction_and_isometry(shape, wavelet, levels):
    wt = WaveletTransform(shape, wavelet, levels=levels)
    x = _cx((3, *shape))
    c = wt.forward(x)
    assert c.shape == (3, *wt.padded_shape)
    torch.testing.assert_close(wt.adjoint(c), x, rtol=1e-5, atol=1e-5)
    assert torch.linalg.vector_norm(c) == pytest.approx(
        float(torch.linalg.vector_norm(x)), rel=1e-5
    )
    check_operator(wt)
    if wt.padded_shape == tuple(shape):  # no padding: W is square orthogonal, W Wᴴ = I too
        torch.testing.assert_close(wt.forward(wt.adjoint(c)), c, rtol=1e-5, atol=1e-5)


def test_analysis_matrix_orthogonal_for_small_and_large_sizes():
    for name in ("haar", "db2", "db4"):
        w = pywt.Wavelet(name)
        lo, hi = np.array(w.dec_lo[::-1]), np.array(w.dec_hi[::-1])
        for n in (2, 4, 6, 16, 34):
            a = analysis_matrix(n, lo, hi)
            np.testing.assert_allclose(a @ a.T, np.eye(n), atol=1e-12)
    with pytest.raises(ValueError):
        analysis_matrix(5, lo, hi)


def test_same_filters_as_pywavelets():
    """One level equals PyWavelets' periodized DWT up to a fixed circular alignment."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 16))
    c = WaveletTransform((16, 16), "db2", levels=1).forward(torch.from_numpy(x).float()).numpy()
    matches = []
    for s in range(-4, 5):
        ca, (ch, cv, cd) = pywt.dwt2(np.roll(x, (s, s), (0, 1)), "db2", mode="periodization")
        ours = [c[:8, :8], c[8:, :8], c[:8, 8:], c[8:, 8:]]
        if all(np.allclose(o, p, atol=1e-5) for o, p in zip(ours, (ca, ch, cv, cd), strict=True)):
            matches.append(s)
    assert matches, "no circular alignment matches pywt.dwt2(mode='periodization')"


def test_levels_rule_and_sparsity():
    assert num_levels((256, 256)) == 5  # BART also decomposes 256 five times (down to 10)
    assert num_levels((16, 16)) == 1
    wt = WaveletTransform((64, 48), "db2")
    c = wt.forward(torch.full((64, 48), 2.0 + 1.0j))
    coarse = wt.coarse_mask()
    assert torch.all(c[~coarse].abs() < 1e-5)  # a constant image lives in the coarse band only
    # piecewise-constant image: sparse in wavelets
    x = torch.zeros(64, 64, dtype=torch.complex64)
    x[10:40, 20:50] = 1
    c = WaveletTransform((64, 64), "db2").forward(x)
    assert (c.abs() > 1e-4).float().mean() < 0.2


def test_soft_threshold_complex():
    z = torch.tensor([3 + 4j, 0.3 + 0.4j, 0j, -2 + 0j], dtype=torch.complex64)
    out = soft_threshold(z, 1.0)
    torch.testing.assert_close(
        out, torch.tensor([2.4 + 3.2j, 0, 0, -1 + 0j], dtype=torch.complex64)
    )
    torch.testing.assert_close(
        soft_threshold(torch.tensor([-3.0, 0.5]), 1.0), torch.tensor([-2.0, 0.0])
    )


def test_wavelet_prox_shift_equivariance_and_coarse_option():
    wt = WaveletTransform((32, 32), "db2")
    x = _cx((32, 32), 3)
    a = wavelet_soft_threshold(x, wt, 0.5, shift=(3, 7))
    b = torch.roll(
        wavelet_soft_threshold(torch.roll(x, (3, 7), (-2, -1)), wt, 0.5), (-3, -7), (-2, -1)
    )
    torch.testing.assert_close(a, b)
    assert torch.linalg.vector_norm(a) < torch.linalg.vector_norm(x)
    keep = wavelet_soft_threshold(x, wt, 0.5, threshold_coarse=False)
    m = wt.coarse_mask()
    torch.testing.assert_close(wt.forward(keep)[m], wt.forward(x)[m], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wavelet_soft_threshold(x, wt, 0.0), x, rtol=1e-5, atol=1e-5)


def test_rejects_biorthogonal():
    with pytest.raises(ValueError, match="orthogonal"):
        WaveletTransform((16, 16), "bior2.2")
