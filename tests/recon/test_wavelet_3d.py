"""The wavelet transform over three axes (a whole volume): perfect reconstruction and
orthogonality for any size, per-axis levels (BART's rule), the Mallat packing generalized, the
same filters as PyWavelets, and the shifted prox."""

import numpy as np
import pytest
import pywt
import torch

from mrprior.recon.wavelet import (
    WaveletTransform,
    axis_levels,
    num_levels,
    wavelet_soft_threshold,
)
from tests.operator_checks import check_operator
from tests.operator_checks import random_complex as _cx


@pytest.mark.parametrize(
    ("shape", "wavelet", "levels"),
    [
        ((17, 30, 31), "db2", None),  # odd sizes: padded on every axis
        ((9, 40, 21), "db2", (1, 2, 1)),  # levels per axis, odd sizes
        ((16, 32, 24), "db4", (1, 2, 2)),  # no padding: square orthogonal
        ((8, 8, 12), "haar", 2),
    ],
)
def test_3d_perfect_reconstruction_and_isometry(shape, wavelet, levels):
    wt = WaveletTransform(shape, wavelet, levels=levels)
    x = _cx((2, *shape))
    c = wt.forward(x)
    assert c.shape == (2, *wt.padded_shape)
    assert all(p % 2**lv == 0 for p, lv in zip(wt.padded_shape, wt.axis_levels, strict=True))
    torch.testing.assert_close(wt.adjoint(c), x, rtol=1e-5, atol=1e-5)
    assert torch.linalg.vector_norm(c) == pytest.approx(
        float(torch.linalg.vector_norm(x)), rel=1e-5
    )
    check_operator(wt)
    if wt.padded_shape == tuple(shape):  # no padding: W Wᴴ = I too
        y = _cx((2, *shape), 1)
        torch.testing.assert_close(wt.forward(wt.adjoint(y)), y, rtol=1e-5, atol=1e-5)


def test_bart_levels_per_axis():
    """BART decomposes each axis while it is at least 16, each on its own (``minsize =
    min(n, 16)``): 48 → 2 levels, 64 → 3, 256 → 5, 192 → 4, an axis under 16 once."""
    assert axis_levels((48, 64, 64)) == (2, 3, 3)
    assert axis_levels((256, 192, 256)) == (5, 4, 5)
    assert axis_levels((8, 64)) == (1, 3)
    assert num_levels((48, 64, 64)) == 2  # the same on every axis: the smallest axis's
    wt = WaveletTransform((48, 64, 64), levels=axis_levels((48, 64, 64)))
    assert wt.levels == 3 and wt.axis_levels == (2, 3, 3)
    m = wt.coarse_mask()
    assert m.shape == (48, 64, 64) and int(m.sum()) == 12 * 8 * 8
    assert bool(m[:12, :8, :8].all())
    # a constant volume lives in the coarse band only
    c = wt.forward(torch.full((48, 64, 64), 1.0 - 2.0j))
    assert float(c[~m].abs().max()) < 1e-4


def test_3d_same_filters_as_pywavelets():
    """One 3D level equals PyWavelets' periodized ``dwtn`` (8 bands, Mallat corners) up to one
    circular alignment; two levels transform the coarse corner again."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16, 12))
    c = WaveletTransform(x.shape, "db2", levels=1).forward(torch.from_numpy(x).float()).numpy()
    half = [n // 2 for n in x.shape]

    def band(key: str) -> np.ndarray:
        sl = tuple(
            slice(0, h) if k == "a" else slice(h, None) for k, h in zip(key, half, strict=True)
        )
        return c[sl]

    matches = []
    for s in range(-4, 5):
        ref = pywt.dwtn(np.roll(x, (s, s, s), (0, 1, 2)), "db2", mode="periodization")
        if all(np.allclose(band(k), v, atol=1e-5) for k, v in ref.items()):
            matches.append(s)
    assert matches, "no circular alignment matches pywt.dwtn(mode='periodization')"
    two = WaveletTransform(x.shape, "db2", levels=2).forward(torch.from_numpy(x).float()).numpy()
    inner = WaveletTransform(tuple(half), "db2", levels=1)
    np.testing.assert_allclose(
        two[:4, :8, :6], inner.forward(torch.from_numpy(band("aaa"))).numpy(), atol=1e-5
    )
    np.testing.assert_allclose(two[4:], c[4:], atol=1e-6)  # the detail bands stay


def test_3d_prox_shift_equivariance_and_errors():
    wt = WaveletTransform((12, 16, 16), "db2", levels=(1, 2, 2))
    x = _cx((12, 16, 16), 3)
    a = wavelet_soft_threshold(x, wt, 0.5, shift=(1, 3, 2))
    dims = (-3, -2, -1)
    b = torch.roll(
        wavelet_soft_threshold(torch.roll(x, (1, 3, 2), dims), wt, 0.5), (-1, -3, -2), dims
    )
    torch.testing.assert_close(a, b)
    assert torch.linalg.vector_norm(a) < torch.linalg.vector_norm(x)
    torch.testing.assert_close(wavelet_soft_threshold(x, wt, 0.0), x, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one shift per"):
        wavelet_soft_threshold(x, wt, 0.5, shift=(1, 2))
    with pytest.raises(ValueError, match="2 or 3"):
        WaveletTransform((4, 4, 4, 4))
    with pytest.raises(ValueError, match="one per axis"):
        WaveletTransform((16, 16, 16), levels=(1, 2))
