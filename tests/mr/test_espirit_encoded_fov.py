"""Coil maps over the encoded (oversampled) readout field of view: an object that fills the
recon field of view along the readout meets no wrap-around edge in the maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from mrprior.acquisition import AcquisitionSpec, simulate_acquisition
from mrprior.errors import DataError
from mrprior.mr.espirit import calibration_box, encoded_calibration_region
from mrprior.mr.sampling import variable_density_lines
from mrprior.mr.simulate import simulate_kspace
from mrprior.pipeline import CoilMapConfig, ReconConfig, coil_maps

N = 64


def _filling_object() -> np.ndarray:
    """Smooth texture over the whole field of view: the object touches both readout ends."""
    rng = np.random.default_rng(3)
    tex = gaussian_filter(rng.standard_normal((N, N)), 3.0)
    tex = (tex - tex.min()) / np.ptp(tex)
    ramp = np.linspace(0.4, 1.0, N)[None, :]  # different values at the two readout ends
    return (0.3 + 0.7 * tex * ramp).astype(np.float32)


def _edge_coherence(maps: np.ndarray, truth: np.ndarray, cols: int = 3) -> tuple[float, float]:
    """Mean per-pixel phase-invariant coherence over the outer ``cols`` readout columns (each
    side) and over the rest."""
    num = np.abs((maps.conj() * truth).sum(0))
    den = np.linalg.norm(maps, axis=0) * np.linalg.norm(truth, axis=0) + 1e-12
    coh = num / den
    edge = np.concatenate([coh[:, :cols], coh[:, -cols:]], axis=1)
    return float(edge.mean()), float(coh[:, cols:-cols].mean())


def test_maps_over_the_encoded_fov_follow_an_object_that_fills_the_readout():
    img = _filling_object()
    mask = variable_density_lines((N, N), 2.5, calib_lines=20, seed=0)
    spec = AcquisitionSpec(coils=8)
    acq = simulate_acquisition(img.astype(np.complex64), mask, spec, seed=0)
    ks = acq.kspace
    assert ks.oversampling_removed and ks.encoded_centre is not None
    # the default calib_size (24 lines) covers the 20 flagged calibration lines
    assert ks.encoded_centre.data.shape == (8, 24, 2 * N)
    # the true (prewhitened) sensitivities of the simulation
    sim = simulate_kspace(img.astype(np.complex64), coils=8, seed=0, add_phase=False)
    truth = np.tensordot(acq.whitening, sim.csm, axes=(1, 0))

    def maps(encoded_fov: bool) -> np.ndarray:
        cfg = ReconConfig(coil_maps=CoilMapConfig(calib_size=20, encoded_fov=encoded_fov))
        return np.asarray(coil_maps(ks, cfg, "cpu"))

    edge_new, inner_new = _edge_coherence(maps(True), truth)
    edge_old, inner_old = _edge_coherence(maps(False), truth)
    assert edge_new > 0.98, edge_new
    assert edge_old < edge_new - 0.02, (edge_old, edge_new)  # the wrap-around the fix removes
    assert inner_new > 0.99 and inner_new >= inner_old - 1e-3


def test_encoded_calibration_region_is_the_recon_box_at_the_encoded_readout():
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((2, 32, 48)) + 1j * rng.standard_normal((2, 32, 48))).astype(
        np.complex64
    )
    box = calibration_box(k, (8, 12))
    assert box == (slice(12, 20), slice(18, 30))
    encoded = (rng.standard_normal((2, 16, 96)) + 0j).astype(np.complex64)  # lines 8..23
    cal = encoded_calibration_region(encoded, (8,), box, 48)
    np.testing.assert_array_equal(cal, encoded[:, 4:12, 36:60])  # 24 = 12·96/48 about 48
    with pytest.raises(DataError, match="beyond the k-space centre kept"):
        encoded_calibration_region(encoded[:, :6], (8,), box, 48)
    with pytest.raises(ValueError, match="shorter than the recon readout"):
        encoded_calibration_region(encoded[..., :40], (8,), box, 48)
    with pytest.raises(ValueError, match="start indices"):
        encoded_calibration_region(encoded, (8, 0), box, 48)


def test_no_oversampling_keeps_no_encoded_centre():
    img = _filling_object()
    mask = variable_density_lines((N, N), 2.5, calib_lines=20, seed=0)
    acq = simulate_acquisition(
        img.astype(np.complex64), mask, AcquisitionSpec(coils=4, readout_oversampling=1), seed=0
    )
    assert acq.kspace.encoded_centre is None


def test_coarse_solve_over_the_recon_part_of_the_encoded_fov_matches_a_full_solve():
    """The coarse eigen-solve keeps only the coarse samples bracketing the recon FOV (memory of a
    3D volume); the maps agree with an exact full-resolution solve over the encoded FOV."""
    from mrprior.mr.espirit import espirit

    img = _filling_object()
    mask = variable_density_lines((N, N), 2.5, calib_lines=20, seed=0)
    ks = simulate_acquisition(
        img.astype(np.complex64), mask, AcquisitionSpec(coils=8), seed=0
    ).kspace
    centre = ks.encoded_centre
    assert centre is not None
    kw = {"calib": 20, "mask": ks.mask | ks.calib, "encoded": centre.data}
    fast = espirit(ks.data, encoded_start=centre.start, coarse=16, **kw)
    exact = espirit(ks.data, encoded_start=centre.start, coarse=4 * N, **kw)
    support = (fast.eigenvalues > 0.8) & (exact.eigenvalues > 0.8)
    assert support.mean() > 0.9
    coh = np.abs((fast.maps.conj() * exact.maps).sum(0))[support]
    assert coh.min() > 0.995, coh.min()
    np.testing.assert_allclose(fast.eigenvalues, exact.eigenvalues, atol=2e-3)
