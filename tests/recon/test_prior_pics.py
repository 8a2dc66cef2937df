"""prior-PICS: the published FISTA with a prior gradient step, and the registered method."""

from __future__ import annotations

import pytest
import torch

from mrprior.errors import ConfigError
from mrprior.metrics import psnr
from mrprior.mr.sense import sense_operator
from mrprior.recon.prior_methods import estimate_noise_std, parse_settings, prior_pics_method
from mrprior.recon.prior_pics import (
    coil_support,
    data_residual,
    prior_denoise,
    prior_fista,
    sigma_schedule,
)
from tests.recon.priors_for_tests import GaussianSmoothnessPrior, simulated_case


class PaddedPrior(GaussianSmoothnessPrior):
    """Test prior that only accepts sizes divisible by 16, like a U-Net."""

    size_multiple = 16

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] % 16 == 0 and x.shape[-2] % 16 == 0, x.shape
        return super().denoise(x, sigma)


# The analytic Gaussian prior is a weak image model, so the tests weight it more than the
# noise-matched defaults a trained prior uses (HQS kappa=100, FISTA lam=1e-3 at sigma=0.05).
HQS = {"solver": "hqs", "kappa": 100.0, "iterations": 20}
FISTA = {"solver": "fista", "lam": 1e-3, "sigma_start": 0.05, "sigma_end": 0.05, "iterations": 20}


@pytest.fixture(scope="module")
def case():
    return simulated_case(n=64, accel=6.0, noise_std=0.01, seed=0)


def zero_filled(case) -> torch.Tensor:
    return sense_operator(case.csm, case.problem.mask).adjoint(case.problem.kspace)


def test_fista_reduces_data_error_and_beats_zero_filling(case):
    op = sense_operator(case.csm, case.problem.mask)
    y = case.problem.kspace
    x0 = torch.zeros_like(case.truth)
    errors = []
    x = prior_fista(
        op,
        y,
        GaussianSmoothnessPrior(),
        lam=1e-3,
        sigma=0.05,
        max_iterations=40,
        x0=x0,
        callback=lambda k, xk: errors.append(data_residual(op, xk, y)) and False,
    )
    assert data_residual(op, x0, y) == pytest.approx(1.0)
    assert len(errors) == 40 and errors[-1] < 0.1  # from 1.0 at x0 = 0
    zf = zero_filled(case)
    assert psnr(x, case.truth) > psnr(zf, case.truth) + 1.0  # measured +1.5 dB


def test_fista_callback_stops():
    c = simulated_case(n=32, accel=2.0, coils=4)
    op = sense_operator(c.csm, c.problem.mask)
    seen = []
    prior_fista(
        op,
        c.problem.kspace,
        GaussianSmoothnessPrior(),
        max_iterations=50,
        callback=lambda k, x: seen.append(k) or k == 2,
    )
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("settings", [HQS, FISTA], ids=["hqs", "fista"])
def test_prior_pics_method_beats_zero_filling(case, settings):
    res = prior_pics_method(case.problem, {"prior": GaussianSmoothnessPrior(), **settings})
    zf = zero_filled(case)
    gain = psnr(res.image, case.truth) - psnr(zf, case.truth)
    assert gain > 1.5, gain  # measured: HQS +3.1 dB, FISTA +2.3 dB
    assert res.info["solver"] == settings["solver"]
    # the image stays inside the coil support
    support = coil_support(case.csm)
    assert res.image.shape == case.truth.shape
    assert torch.all(res.image[~support] == 0)


def test_image_kept_inside_support(case):
    csm = case.csm.clone()
    csm[:, :, :8] = 0  # a strip without coil sensitivity, as ESPIRiT leaves outside the object
    problem = type(case.problem)(kspace=case.problem.kspace, mask=case.problem.mask, csm=csm)
    res = prior_pics_method(problem, {"prior": GaussianSmoothnessPrior(), "iterations": 5})
    assert torch.all(res.image[:, :8] == 0)
    assert torch.any(res.image[:, 8:] != 0)


def test_padding_to_size_multiple():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 60, 50, dtype=torch.complex64, generator=g)
    d = prior_denoise(PaddedPrior(), x, 0.1)
    assert d.shape == x.shape
    d1 = prior_denoise(PaddedPrior(), x[0], 0.1)
    assert d1.shape == (60, 50)


class CountingPrior(GaussianSmoothnessPrior):
    """Records the batch size of every network call."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return super().denoise(x, sigma)


def test_images_per_network_call():
    """On a CPU one 256² image (or its pixel count in smaller images) goes to the network per
    call; an explicit budget is honoured; chunking never changes the result."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 64, dtype=torch.complex64, generator=g)  # 6 images
    sigma = torch.linspace(0.05, 0.1, 6).reshape(2, 3)
    prior = CountingPrior()
    d = prior_denoise(prior, x, sigma)
    assert prior.batches == [6]  # 6 × 64² < 256²: one call
    prior.batches.clear()
    d1 = prior_denoise(prior, x, sigma, pixels_per_call=2 * 64 * 64)
    assert prior.batches == [2, 2, 2]
    torch.testing.assert_close(d1, d)
    big = torch.randn(3, 256, 256, dtype=torch.complex64, generator=g)
    prior.batches.clear()
    prior_denoise(prior, big, 0.1)
    assert prior.batches == [1, 1, 1]


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="lamda"):
        parse_settings("prior-pics", {"lamda": 1.0})
    with pytest.raises(ConfigError, match="hqs"):
        parse_settings("prior-pics", {"solver": "admm"})
    with pytest.raises(ConfigError, match="sigma_end"):
        parse_settings("prior-pics", {"sigma_start": 0.01, "sigma_end": 0.1})
    with pytest.raises(ConfigError, match="iterations"):
        parse_settings("prior-pics", {"iterations": 0})
    s = parse_settings("prior-pics", {"iterations": "7"})
    assert s.iterations == 7 and s.solver == "hqs"


def test_needs_coil_maps(case):
    problem = type(case.problem)(kspace=case.problem.kspace, mask=case.problem.mask)
    with pytest.raises(ConfigError, match="coil maps"):
        prior_pics_method(problem, {"prior": GaussianSmoothnessPrior()})


def test_noise_estimate_from_outer_kspace():
    c = simulated_case(n=64, accel=3.0, noise_std=0.02, seed=3)
    est = estimate_noise_std(c.problem.kspace, c.problem.mask)
    assert est == pytest.approx(0.02, rel=0.15)


def test_sigma_schedule():
    s = sigma_schedule(0.1, 0.001, 3)
    assert s == pytest.approx([0.1, 0.01, 0.001])
    assert sigma_schedule(0.1, 0.1, 4) == [0.1] * 4


@pytest.mark.parametrize("channels", [2, 1], ids=["complex", "magnitude"])
def test_plumbing_with_a_tiny_untrained_network_prior(channels):
    """Any matrix size reaches the U-Net padded to its size multiple, and results are finite."""
    from mrprior.priors.network import NetworkPrior
    from mrprior.priors.unet import UNetConfig

    torch.manual_seed(0)
    cfg = UNetConfig(
        in_channels=channels,
        channels=[8, 16, 16],
        blocks_per_level=1,
        fourier_features=4,
        emb_dim=16,
        groups=4,
    )
    prior = NetworkPrior.from_config(cfg, sigma_min=0.003, sigma_max=1.2)
    assert prior.size_multiple == 4
    c = simulated_case(n=30, accel=2.0, coils=4)  # 30 is no multiple of 4: padded and cropped
    for solver in ("hqs", "fista"):
        res = prior_pics_method(c.problem, {"prior": prior, "solver": solver, "iterations": 3})
        assert res.image.shape == (30, 30) and torch.isfinite(res.image).all()


@pytest.mark.parametrize("method", ["prior-pics", "prior-sample", "prior-nlinv"])
def test_shipped_defaults_cover_every_setting(method):
    """``mrprior/configs/prior_methods.yaml`` lists every tunable setting and validates."""
    import dataclasses

    from mrprior.recon.prior_methods import _SETTINGS, default_settings

    yaml_keys = set(default_settings()[method])
    fields = {f.name for f in dataclasses.fields(_SETTINGS[method])} - {"prior", "seed"}
    assert yaml_keys == fields
    defaults = _SETTINGS[method]()  # the dataclass's own defaults agree with the file
    assert {k: getattr(defaults, k) for k in yaml_keys} == default_settings()[method]
    parse_settings(method, {})
