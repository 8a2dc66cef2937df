"""Simulated scanner acquisitions (raw file → pipeline preprocessing) and their reference."""

from __future__ import annotations

import numpy as np
import pytest

from mrprior.acquisition import (
    AcquisitionSpec,
    convention_reference,
    is_line_mask,
    reconstruction_problem,
    simulate_acquisition,
)
from mrprior.errors import ConfigError, DataError
from mrprior.evaluation import complex_image, heldout_names, load_image
from mrprior.metrics import psnr
from mrprior.mr.fft import ifftc
from mrprior.mr.noise import prewhiten
from mrprior.mr.sampling import poisson_disc, uniform_2d, variable_density_lines
from mrprior.mr.simulate import simulate_kspace
from mrprior.recon.l1_lambda import estimate_noise_std
from mrprior.recon.problem import get_method


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return complex_image(load_image(heldout_names()[0], 64), "synthetic", seed=1)


def test_line_scheme_goes_through_the_raw_path(image):
    mask = variable_density_lines((64, 64), 3.0, calib_lines=12, seed=0)
    acq = simulate_acquisition(image, mask, AcquisitionSpec(coils=8, snr=30.0), seed=2)
    ks = acq.kspace
    # prewhitened, readout oversampling (2x in the file) removed, lines as acquired
    assert ks.prewhitened and ks.oversampling_removed
    assert ks.data.shape == (8, 64, 64) and ks.encoding.encoded_matrix[0] == 128
    np.testing.assert_array_equal(ks.mask.any(axis=1), mask.mask.any(axis=1))
    assert acq.acceleration == pytest.approx(mask.acceleration)
    # whitened noise has unit variance per sample (outer k-space is noise only)
    problem = reconstruction_problem(acq, 12, with_csm=False)
    assert problem.csm is None and problem.noise_std == 1.0
    sigma = estimate_noise_std(problem.kspace, problem.mask)
    assert sigma == pytest.approx(1.0, rel=0.15)


def test_2d_scheme_is_applied_after_preprocessing(image):
    mask = poisson_disc((64, 64), 4.0, calib=(16, 16), seed=0)
    assert not is_line_mask(mask.mask)
    acq = simulate_acquisition(image, mask, AcquisitionSpec(coils=8), seed=0)
    np.testing.assert_array_equal(acq.kspace.mask, mask.mask)
    np.testing.assert_array_equal(acq.kspace.calib, mask.calib)
    assert np.all(acq.kspace.data[:, ~mask.mask] == 0)
    assert is_line_mask(uniform_2d((64, 64), (4, 1), calib=(8, 64)).mask)


def test_reference_is_the_whitened_coil_combination(image):
    """|x|·‖W S‖ equals the root-sum-of-squares of the whitened noiseless coil images."""
    sim = simulate_kspace(image, coils=6, seed=0, add_phase=False)
    rng = np.random.default_rng(0)
    w = np.tril(rng.standard_normal((6, 6)) + 1j * rng.standard_normal((6, 6))).astype(
        np.complex64
    ) + 3 * np.eye(6, dtype=np.complex64)
    rss = np.sqrt((np.abs(ifftc(prewhiten(sim.kspace, w), 2)) ** 2).sum(0))
    ref = convention_reference(sim.image, sim.csm, w)
    np.testing.assert_allclose(ref, rss, rtol=1e-3, atol=1e-4 * rss.max())


def test_recon_matches_the_convention_reference_not_the_object(image):
    """Fully sampled, nearly noiseless: the ESPIRiT recon of prewhitened data is |x|·‖W S‖,
    and scoring it against |x| would cost many dB."""
    full = variable_density_lines((64, 64), 1.0, calib_lines=24, seed=0)
    acq = simulate_acquisition(
        image, full, AcquisitionSpec(coils=8, snr=1e4, noise_correlation=0.5), seed=0
    )
    problem = reconstruction_problem(acq, calib_size=24)
    x = get_method("zerofill")(problem, {}).image
    inside = np.abs(acq.image) > 0.05 * np.abs(acq.image).max()
    x_in = np.where(inside, x.numpy(), 0)
    assert psnr(x_in, np.where(inside, acq.reference, 0)) > 45.0
    assert (
        psnr(x_in, np.where(inside, acq.reference, 0))
        > psnr(x_in, np.where(inside, np.abs(acq.image), 0)) + 5.0
    )


def test_bad_input_is_rejected(image):
    mask = variable_density_lines((64, 64), 3.0, calib_lines=12, seed=0)
    with pytest.raises(DataError, match="does not fit"):
        simulate_acquisition(image[:32], mask)
    with pytest.raises(ConfigError, match="coils"):
        simulate_acquisition(image, mask, AcquisitionSpec(coils=1))
    with pytest.raises(ConfigError, match="noise_correlation"):
        simulate_acquisition(image, mask, AcquisitionSpec(noise_correlation=1.0))
