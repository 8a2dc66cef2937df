"""Automatic λ of the ℓ1-wavelet baseline (``l1`` with ``lam: auto``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrprior.acquisition import AcquisitionSpec, reconstruction_problem, simulate_acquisition
from mrprior.errors import ConfigError
from mrprior.evaluation import complex_image, heldout_names, lambda_sweep, load_image
from mrprior.metrics import psnr
from mrprior.mr.sampling import poisson_disc, variable_density_lines
from mrprior.recon.fista import bart_scaling
from mrprior.recon.l1_lambda import auto_lambda, estimate_noise_std, noise_std
from mrprior.recon.problem import ReconProblem, get_method


def test_noise_std_estimate_on_pure_noise():
    rng = np.random.default_rng(0)
    sigma = 0.37
    k = (rng.standard_normal((4, 64, 64)) + 1j * rng.standard_normal((4, 64, 64))) * (
        sigma / math.sqrt(2)
    )
    mask = torch.from_numpy(poisson_disc((64, 64), 3.0, calib=(12, 12), seed=0).mask)
    k = torch.from_numpy(k.astype(np.complex64)) * mask
    assert estimate_noise_std(k, mask) == pytest.approx(sigma, rel=0.06)
    p = ReconProblem(kspace=k, mask=mask, noise_std=None)
    assert noise_std(p) == pytest.approx(sigma, rel=0.06)
    assert noise_std(ReconProblem(kspace=k, mask=mask, noise_std=2.0)) == 2.0


def test_auto_lambda_scales_with_noise_and_acceleration():
    k = torch.zeros((2, 32, 32), dtype=torch.complex64)
    full = torch.ones((32, 32), dtype=torch.bool)
    quarter = torch.zeros((32, 32), dtype=torch.bool)
    quarter[::4] = True
    lam = auto_lambda(ReconProblem(kspace=k, mask=full, noise_std=1.0), scale=2.0)
    assert auto_lambda(ReconProblem(kspace=k, mask=full, noise_std=3.0), scale=2.0) == (
        pytest.approx(3 * lam)
    )
    assert auto_lambda(ReconProblem(kspace=k, mask=full, noise_std=1.0), scale=4.0) == (
        pytest.approx(lam / 2)
    )
    assert auto_lambda(ReconProblem(kspace=k, mask=quarter, noise_std=1.0), scale=2.0) == (
        pytest.approx(lam / 2)
    )
    with pytest.raises(ValueError, match="scale"):
        auto_lambda(ReconProblem(kspace=k, mask=full, noise_std=1.0), scale=0.0)


@pytest.fixture(scope="module")
def cases() -> list[tuple[ReconProblem, np.ndarray]]:
    """Two small simulated acquisitions (template slices, prewhitened, ESPIRiT maps)."""
    out = []
    for name, mask in (
        (heldout_names()[1], poisson_disc((96, 96), 6.0, calib=(16, 16), seed=0)),
        (heldout_names()[3], variable_density_lines((96, 96), 4.0, calib_lines=16, seed=0)),
    ):
        img = complex_image(load_image(name, 96), "synthetic", seed=0)
        acq = simulate_acquisition(img, mask, AcquisitionSpec(coils=8, snr=40.0), seed=0)
        out.append((reconstruction_problem(acq, calib_size=16), acq.reference))
    return out


#: the auto λ lands within this many dB of the best λ of a fine sweep on the test cases
AUTO_TOLERANCE_DB = 1.0


def test_auto_lambda_is_close_to_the_swept_best(cases):
    fn = get_method("l1")
    for problem, ref in cases:

        def score(lam: float, problem: ReconProblem = problem, ref: np.ndarray = ref) -> float:
            return psnr(fn(problem, {"lam": lam}).image, ref)

        grid = [10**e for e in np.arange(-3.5, -0.49, 0.25)]
        _, scores = lambda_sweep(score, grid, refine=False)
        best = max(scores.values())
        res = fn(problem, {"lam": "auto"})
        lam = res.info["lam_used"]
        expect = auto_lambda(problem, bart_scaling(problem.kspace, problem.mask))
        assert lam == pytest.approx(expect)
        assert psnr(res.image, ref) > best - AUTO_TOLERANCE_DB, (lam, scores)


def test_l1_lam_setting_is_validated(cases):
    problem, _ = cases[0]
    with pytest.raises(ConfigError, match="auto"):
        get_method("l1")(problem, {"lam": "magic"})
    with pytest.raises(ConfigError, match=">= 0"):
        get_method("l1")(problem, {"lam": -1.0})
    # a numeric string (e.g. a Gadgetron property) is a number
    res = get_method("l1")(problem, {"lam": "0.01", "max_iterations": 2})
    assert res.info["lam_used"] == pytest.approx(0.01)
