"""Readout oversampling removal against a direct reference."""

import numpy as np
import pytest

from mrprior.mr.fft import fftc, ifftc
from mrprior.mr.oversampling import remove_readout_oversampling


@pytest.mark.parametrize(("n", "m"), [(256, 128), (255, 128), (200, 101), (64, 64)])
def test_matches_direct_crop(n, m):
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((3, 10, n)) + 1j * rng.standard_normal((3, 10, n))).astype(
        np.complex64
    )
    out = remove_readout_oversampling(k, m)
    assert out.shape == (3, 10, m) and out.dtype == np.complex64
    # reference: explicit DFT matrices (not the FFT helpers)
    xs = np.arange(n) - n // 2
    f_inv = np.exp(2j * np.pi * np.outer(xs, xs) / n) / np.sqrt(n)  # centred inverse DFT
    img = k.astype(np.complex128) @ f_inv.T
    crop = img[..., n // 2 - m // 2 : n // 2 - m // 2 + m]
    ys = np.arange(m) - m // 2
    f_fwd = np.exp(-2j * np.pi * np.outer(ys, ys) / m) / np.sqrt(m)
    ref = crop @ f_fwd.T
    np.testing.assert_allclose(out, ref, atol=2e-4 * np.abs(ref).max())


def test_object_in_the_centre_survives():
    """An object inside the recon FOV keeps its image values; noise std per sample is kept."""
    img = np.zeros((4, 256), np.complex64)
    img[:, 100:156] = np.hanning(56)
    k = fftc(img, ndim=1)
    out = remove_readout_oversampling(k, 128)
    np.testing.assert_allclose(ifftc(out, ndim=1), img[:, 64:192], atol=1e-5)
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal((64, 512)) + 1j * rng.standard_normal((64, 512))) / np.sqrt(2)
    assert np.std(remove_readout_oversampling(noise.astype(np.complex64), 256)) == pytest.approx(
        1.0, rel=0.02
    )


def test_errors():
    with pytest.raises(ValueError, match="nx_recon"):
        remove_readout_oversampling(np.zeros((2, 8), np.complex64), 9)
    np.testing.assert_array_equal(
        remove_readout_oversampling(np.ones((2, 8), np.complex64), 8), np.ones((2, 8))
    )
