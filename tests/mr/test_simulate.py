"""Simulated multi-coil k-space: normalized smooth maps, noise level, seeds."""

import numpy as np
import pytest

from mrprior.errors import DataError
from mrprior.mr.fft import ifftc
from mrprior.mr.simulate import birdcage_maps, simulate_kspace


def phantom(h: int = 96, w: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    yy = (yy - h // 2) / (h / 2)
    xx = (xx - w // 2) / (w / 2)
    return ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1).astype(np.float32) * (1 + 0.5 * xx)


@pytest.mark.parametrize(("shape", "coils"), [((96, 80), 8), ((64, 64), 1), ((33, 70), 12)])
def test_birdcage_normalized_and_smooth(shape, coils):
    s = birdcage_maps(shape, coils)
    assert s.shape == (coils, *shape) and s.dtype == np.complex64
    np.testing.assert_allclose(np.sum(np.abs(s) ** 2, axis=0), 1.0, atol=1e-5)
    if coils > 1:
        # smooth: neighbouring pixels nearly equal; distinct coils differ
        assert np.abs(np.diff(s, axis=-1)).max() < 0.15
        o = coils // 2  # the opposite coil
        corr = np.abs(np.vdot(s[0], s[o])) / (np.linalg.norm(s[0]) * np.linalg.norm(s[o]))
        assert corr < 0.9
        # magnitude falls off away from each coil: coil 0 sits at angle 0 (+x side)
        m0 = np.abs(s[0])
        assert m0[:, -1].mean() > 2 * m0[:, 0].mean()
    with pytest.raises(ValueError, match="outside"):
        birdcage_maps(shape, coils, radius=0.9)


def test_noise_std_and_model():
    img = phantom()
    sim = simulate_kspace(img, coils=8, noise_std=0.05, seed=3)
    assert sim.kspace.shape == (8, 96, 80) and sim.kspace.dtype == np.complex64
    np.testing.assert_allclose(np.sum(np.abs(sim.csm) ** 2, axis=0), 1.0, atol=1e-5)
    # magnitude preserved, phase added and smooth
    np.testing.assert_allclose(np.abs(sim.image), img, atol=1e-5)
    assert np.abs(np.angle(sim.image[img > 0])).std() > 0.05
    clean = simulate_kspace(img, coils=8, noise_std=0.0, seed=3)
    noise = sim.kspace - clean.kspace
    assert np.std(noise) == pytest.approx(0.05, rel=0.03)  # E|n|² = σ²
    assert np.std(noise.real) == pytest.approx(0.05 / np.sqrt(2), rel=0.03)
    assert sim.noise_std == 0.05
    # noiseless data are exactly F(S x); coil combination returns the image
    comb = np.sum(np.conj(clean.csm) * ifftc(clean.kspace), axis=0)
    np.testing.assert_allclose(comb, clean.image, atol=1e-5)


def test_snr_definition():
    img = phantom()
    sim = simulate_kspace(img, snr=20.0, seed=0)
    obj = img > 0.1 * img.max()
    assert sim.noise_std == pytest.approx(img[obj].mean() / 20.0, rel=1e-5)
    with pytest.raises(ValueError, match="not both"):
        simulate_kspace(img, noise_std=0.1, snr=10.0)


def test_seeds_and_complex_input():
    img = phantom()
    a = simulate_kspace(img, noise_std=0.01, seed=5)
    b = simulate_kspace(img, noise_std=0.01, seed=5)
    c = simulate_kspace(img, noise_std=0.01, seed=6)
    np.testing.assert_array_equal(a.kspace, b.kspace)
    assert not np.array_equal(a.kspace, c.kspace)
    assert not np.allclose(np.angle(a.image), np.angle(c.image))
    z = img * np.exp(0.3j).astype(np.complex64)
    d = simulate_kspace(z, noise_std=0.0, seed=5)
    np.testing.assert_allclose(d.image, z, atol=1e-6)  # complex image keeps its phase
    e = simulate_kspace(img, noise_std=0.0, add_phase=False)
    np.testing.assert_allclose(e.image, img, atol=1e-6)
    with pytest.raises(DataError, match="NaN"):
        simulate_kspace(np.full((8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        simulate_kspace(img, csm=birdcage_maps((10, 10), 4))
