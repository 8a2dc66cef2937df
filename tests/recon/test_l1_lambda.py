"""Automatic λ of the ℓ1-wavelet baseline (``l1`` with ``lam: auto``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrprior.acquisition import AcquisitionSpec, reconstruction_problem, simulate_acquisition
from mrprior.errors import ConfigError, DataError
from mrprior.evaluation import complex_image, heldout_names, lambda_sweep, load_image
from mrprior.metrics import psnr
from mrprior.mr.sampling import poisson_disc, variable_density_lines
from mrprior.recon.fista import bart_scaling
from mrprior.recon.kspace_cv import holdout_folds, sampling_units
from mrprior.recon.l1_lambda import (
    CV_CORRECTION,
    auto_lambda,
    cv_lambda,
    estimate_noise_std,
    noise_std,
)
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
#: ... and within this factor of that best λ
AUTO_FACTOR = 3.0


def test_auto_lambda_is_close_to_the_swept_best(cases):
    fn = get_method("l1")
    for problem, ref in cases:

        def score(lam: float, problem: ReconProblem = problem, ref: np.ndarray = ref) -> float:
            return psnr(fn(problem, {"lam": lam}).image, ref)

        grid = [10**e for e in np.arange(-3.5, -0.49, 0.25)]
        _, scores = lambda_sweep(score, grid, refine=False)
        best_lam = max(scores, key=scores.get)
        res = fn(problem, {"lam": "auto"})
        lam = res.info["lam_used"]
        s = bart_scaling(problem.kspace, problem.mask)
        assert res.info["lam_rule"] == "cv"
        assert lam == pytest.approx(CV_CORRECTION * res.info["lam_cv"] / s)
        assert 1 / AUTO_FACTOR < lam / best_lam < AUTO_FACTOR, (lam, scores)
        assert psnr(res.image, ref) > scores[best_lam] - AUTO_TOLERANCE_DB, (lam, scores)
        # the noise rule stays available as ``lam: noise``
        noise = fn(problem, {"lam": "noise"})
        assert noise.info["lam_used"] == pytest.approx(auto_lambda(problem, s))
        assert psnr(noise.image, ref) > scores[best_lam] - AUTO_TOLERANCE_DB


def test_cv_lambda_is_deterministic_and_batched(cases):
    problem, _ = cases[1]
    lam, info = cv_lambda(problem, seed=3)
    assert cv_lambda(problem, seed=3)[0] == lam
    assert info["units"] == "rows"
    assert info["reconstructions"] >= 3
    # a batch of two copies of the plane: the same folds on each, the same λ
    two = ReconProblem(
        kspace=torch.stack([problem.kspace] * 2),
        mask=problem.mask,
        csm=torch.stack([problem.csm] * 2),
        noise_std=problem.noise_std,
    )
    lam2, info2 = cv_lambda(two, seed=3, max_planes=1)
    assert info2["planes"] == [0]
    assert lam2 == pytest.approx(lam)


def test_cv_lambda_rejects_bad_input(cases):
    problem, _ = cases[0]
    bad = problem.kspace.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        cv_lambda(ReconProblem(kspace=bad, mask=problem.mask, csm=problem.csm, noise_std=1.0))
    empty = torch.zeros_like(problem.mask)
    with pytest.raises(ValueError, match="samples nothing"):
        cv_lambda(ReconProblem(kspace=problem.kspace * 0, mask=empty, csm=problem.csm))
    with pytest.raises(ValueError, match="coil maps"):
        cv_lambda(ReconProblem(kspace=problem.kspace, mask=problem.mask, noise_std=1.0))
    # fully sampled: nothing to hold out, the noise rule's λ
    full = ReconProblem(
        kspace=problem.kspace, mask=torch.ones_like(problem.mask), csm=problem.csm, noise_std=1.0
    )
    lam, info = cv_lambda(full)
    assert info["rule"] == "noise" and info["reconstructions"] == 0
    assert lam == pytest.approx(auto_lambda(full, 1.0))


def test_holdout_folds_follow_the_sampling():
    lines = variable_density_lines((64, 64), 4.0, calib_lines=12, seed=0)
    mask = torch.from_numpy(lines.mask)
    assert sampling_units(mask) == "rows"
    assert sampling_units(mask.T) == "columns"
    h = holdout_folds(mask, folds=3, fraction=0.2, seed=1)
    assert h.units == "rows"
    assert h.masks.shape == h.held.shape == (3, 64, 64)
    assert not bool((h.held & h.masks).any())
    assert bool(((h.held | h.masks) == mask).all())  # each fold: kept + held out = sampled
    assert not bool((h.held[0] & h.held[1]).any())  # disjoint folds
    rows = h.held.any(dim=2)
    assert bool((h.held.all(dim=2) == rows).all())  # whole lines
    inner = torch.zeros_like(mask)
    inner[28:36] = True  # the 12 calibration lines 26..37 less two on each side (box of 5)
    assert bool(torch.from_numpy(lines.calib)[26:38].all())
    assert not bool((h.held & inner).any())  # the calibration region stays
    assert bool((holdout_folds(mask, 3, 0.2, seed=1).held == h.held).all())
    poisson = torch.from_numpy(poisson_disc((64, 64), 4.0, calib=(12, 12), seed=0).mask)
    hp = holdout_folds(poisson, folds=2, fraction=0.1, seed=0)
    assert hp.units == "points"
    assert int(hp.held[0].sum()) == int(hp.held[1].sum()) > 0
    with pytest.raises(ValueError, match="fraction"):
        holdout_folds(mask, folds=4, fraction=0.3)
    with pytest.raises(ValueError, match="samples nothing"):
        holdout_folds(torch.zeros((8, 8), dtype=torch.bool))


def test_l1_lam_setting_is_validated(cases):
    problem, _ = cases[0]
    with pytest.raises(ConfigError, match="'auto' or 'noise'"):
        get_method("l1")(problem, {"lam": "magic"})
    with pytest.raises(ConfigError, match=">= 0"):
        get_method("l1")(problem, {"lam": -1.0})
    # bad data under lam: auto is a data error, not a settings error
    bad = problem.kspace.clone()
    bad[0, 0, 0] = float("nan")
    nan_problem = ReconProblem(kspace=bad, mask=problem.mask, csm=problem.csm, noise_std=1.0)
    with pytest.raises(DataError, match="NaN"):
        get_method("l1")(nan_problem, {"lam": "auto"})
    # a numeric string (e.g. a Gadgetron property) is a number
    res = get_method("l1")(problem, {"lam": "0.01", "max_iterations": 2})
    assert res.info["lam_used"] == pytest.approx(0.01)
