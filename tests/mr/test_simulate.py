"""Simulated multi-coil k-space: normalized smooth maps, noise level, seeds."""

import numpy as np
import pytest

from mrprior.errors import DataError
from mrprior.mr.fft import fftc, ifftc
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


# -- 3D ----------------------------------------------------------------------------------------
def ellipsoid(d: int = 24, h: int = 40, w: int = 32) -> np.ndarray:
    zz, yy, xx = np.meshgrid(
        (np.arange(d) - d // 2) / (d / 2),
        (np.arange(h) - h // 2) / (h / 2),
        (np.arange(w) - w // 2) / (w / 2),
        indexing="ij",
    )
    return ((zz / 0.8) ** 2 + (yy / 0.85) ** 2 + (xx / 0.8) ** 2 < 1).astype(np.float32)


def test_birdcage_3d_rings():
    """3D maps: normalized, smooth along every axis, two rings of 4 that differ along z."""
    s = birdcage_maps((24, 40, 32), 8)
    assert s.shape == (8, 24, 40, 32) and s.dtype == np.complex64
    np.testing.assert_allclose(np.sum(np.abs(s) ** 2, axis=0), 1.0, atol=1e-5)
    for axis in (1, 2, 3):
        assert np.abs(np.diff(s, axis=axis)).max() < 0.2
    # ring 0 (coils 0-3) sits at -z, ring 1 (coils 4-7) at +z
    lower = np.sum(np.abs(s[:4]) ** 2, axis=0)
    assert lower[:4].mean() > 0.6 and lower[-4:].mean() < 0.4
    single = birdcage_maps((24, 40, 32), 5)  # odd: one ring
    np.testing.assert_allclose(np.sum(np.abs(single) ** 2, axis=0), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="rings"):
        birdcage_maps((24, 40, 32), 8, rings=3)


def test_simulate_3d_correlated_noise_scan_and_oversampling():
    """3D k-space ``[C, kz, ky, kx_enc]`` with 2× readout oversampling: removing the
    oversampling gives back ``F_zyx(S x)``; the noise (data and noise scan) has the requested
    covariance ``σ² Ψ`` (sample covariance within 5 % of its largest entry); the phase is a smooth
    3D map; the same seed gives the same data."""
    from mrprior.mr.noise import noise_covariance
    from mrprior.mr.oversampling import remove_readout_oversampling
    from mrprior.mr.simulate import coil_noise_covariance

    vol = ellipsoid()
    psi = coil_noise_covariance(8, correlation=0.4, seed=2)
    assert np.allclose(np.mean(np.diag(psi).real), 1.0)
    kw = dict(coils=8, seed=3, noise_cov=psi, readout_oversampling=2, noise_samples=20000)
    sim = simulate_kspace(vol, noise_std=0.05, **kw)
    clean = simulate_kspace(vol, noise_std=0.0, **kw)
    assert sim.kspace.shape == (8, 24, 40, 64) and sim.readout_oversampling == 2
    assert sim.noise_scan.shape == (8, 20000)
    k = remove_readout_oversampling(clean.kspace, 32)
    np.testing.assert_allclose(k, fftc(clean.csm * clean.image[None], 3), atol=1e-4)
    np.testing.assert_allclose(np.abs(sim.image), vol, atol=1e-5)
    ph = np.angle(sim.image[4:-4, 8:-8, 8:-8] * np.conj(sim.image[4:-4, 8:-8, 8:-8].mean()))
    assert np.abs(ph).max() > 0.1  # a phase was added
    want = 0.05**2 * psi
    np.testing.assert_allclose(sim.noise_cov, want, atol=1e-7)
    for samples in (sim.noise_scan, sim.kspace - clean.kspace):
        cov = noise_covariance(samples)
        assert np.abs(cov - want).max() < 0.05 * np.abs(want).max()
    again = simulate_kspace(vol, noise_std=0.05, **kw)
    np.testing.assert_array_equal(again.kspace, sim.kspace)
    # the oversampled readout carries noise everywhere, the signal only in the central FOV
    img_x = ifftc(sim.kspace - clean.kspace, 1)
    assert np.std(img_x[..., :8]) == pytest.approx(np.std(img_x[..., 24:40]), rel=0.05)
    with pytest.raises(ValueError, match="positive definite"):
        simulate_kspace(vol, noise_std=0.1, coils=2, noise_cov=np.ones((2, 2)))
    with pytest.raises(ValueError, match="does not fit"):
        simulate_kspace(vol, noise_std=0.1, coils=2, noise_cov=np.eye(3))
