"""Noise covariance, whitening and prewhitening."""

import subprocess

import numpy as np
import pytest

from mrprior.errors import DataError
from mrprior.mr.fft import ifftc
from mrprior.mr.noise import noise_bandwidth_scale, noise_covariance, prewhiten, whitening_matrix


def correlated_noise(c: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((c, c)) + 1j * rng.standard_normal((c, c))
    mix = np.eye(c) + 0.4 * a  # mixing matrix: true covariance mix mixᴴ
    white = (rng.standard_normal((c, n)) + 1j * rng.standard_normal((c, n))) / np.sqrt(2)
    return (mix @ white).astype(np.complex64), mix @ mix.conj().T


def test_covariance_estimate():
    noise, cov_true = correlated_noise(6, 200_000)
    cov = noise_covariance(noise)
    assert cov.shape == (6, 6) and cov.dtype == np.complex64
    np.testing.assert_allclose(cov, cov.conj().T, atol=1e-6)
    np.testing.assert_allclose(cov, cov_true, atol=0.03 * np.abs(cov_true).max())
    # trailing sample axes are flattened
    np.testing.assert_allclose(noise_covariance(noise.reshape(6, 400, 500)), cov, rtol=1e-5)


def test_whitening_gives_identity_covariance():
    noise, _ = correlated_noise(8, 100_000, seed=1)
    w = whitening_matrix(noise_covariance(noise))
    assert np.allclose(np.triu(w, 1), 0)  # inverse Cholesky factor is lower triangular
    white = prewhiten(noise, w)
    np.testing.assert_allclose(noise_covariance(white), np.eye(8), atol=1e-4)
    # and the true covariance (to the sampling error of the estimate)
    cov_true = correlated_noise(8, 10, seed=1)[1]
    cov_w = w @ cov_true @ w.conj().T
    np.testing.assert_allclose(cov_w, np.eye(8), atol=0.05)


def test_prewhiten_shapes_and_scale():
    noise, _ = correlated_noise(4, 5000)
    w = whitening_matrix(noise_covariance(noise), scale=2.0)
    k = np.ones((4, 3, 5), np.complex64)
    out = prewhiten(k, w)
    assert out.shape == k.shape and out.dtype == np.complex64
    np.testing.assert_allclose(out[:, 1, 2], w @ k[:, 1, 2], rtol=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        prewhiten(np.ones((3, 4), np.complex64), w)


def test_bandwidth_scale():
    assert noise_bandwidth_scale(5.0, 5.0, 0.5) == pytest.approx(1.0)
    assert noise_bandwidth_scale(2.5, 5.0, 0.79) == pytest.approx(np.sqrt(2 * 0.5 * 0.79))
    assert noise_bandwidth_scale(0.0, 5.0) == 1.0


def test_not_positive_definite():
    cov = np.eye(3, dtype=np.complex64)
    cov[2, 2] = 0  # dead channel
    with pytest.raises(DataError, match="not positive definite"):
        whitening_matrix(cov)
    with pytest.raises(DataError, match="Hermitian"):
        whitening_matrix(np.array([[1, 0.5], [0.1, 1]], np.complex64))
    with pytest.raises(DataError, match="square"):
        whitening_matrix(np.ones((2, 3), np.complex64))
    with pytest.raises(DataError, match="at least 2"):
        noise_covariance(np.ones((3, 1), np.complex64))
    with pytest.raises(DataError, match="NaN"):
        noise_covariance(np.full((3, 10), np.nan, np.complex64))


@pytest.mark.ismrmrd_tools
def test_prewhiten_shepp_logan_noise_scan(tmp_path):
    """The noise scan of an ismrmrd-tools file whitens the noise of its imaging data.

    The 2x readout oversampling leaves image columns outside the object that hold only noise;
    after prewhitening with ``W`` from the noise scan their coil covariance is the identity to
    within the sampling error of the 256-sample noise scan (diagonal 1 ± 0.25, off-diagonal
    < 0.2).
    """
    import ismrmrd

    path = tmp_path / "sl.h5"
    subprocess.run(
        ["ismrmrd_generate_cartesian_shepp_logan", "-m", "64", "-c", "4", "-n", "0.05", "-C",
         "-o", str(path)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    noise, lines = [], {}
    try:
        for i in range(ds.number_of_acquisitions()):
            acq = ds.read_acquisition(i)
            if acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
                noise.append(acq.data)
            else:
                lines[acq.idx.kspace_encode_step_1] = acq.data
    finally:
        ds.close()
    assert noise, "file has no noise scan"
    k = np.stack([lines[i] for i in sorted(lines)], axis=1)  # [C, ky, kx_os]
    cov = noise_covariance(np.concatenate(noise, axis=-1))
    w = whitening_matrix(cov)
    img = ifftc(prewhiten(k, w))
    nx = img.shape[-1]
    margin = np.concatenate([img[..., : nx // 8], img[..., -nx // 8 :]], axis=-1)
    cov_w = noise_covariance(margin)
    np.testing.assert_allclose(np.diag(cov_w).real, 1.0, atol=0.25)
    off = cov_w - np.diag(np.diag(cov_w))
    assert np.abs(off).max() < 0.2
    # unwhitened, the same margin has the raw noise level (0.05 per real channel)
    raw = noise_covariance(np.concatenate([ifftc(k)[..., : nx // 8]], axis=-1))
    assert np.diag(raw).real.mean() == pytest.approx(2 * 0.05**2, rel=0.25)
