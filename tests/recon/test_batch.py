"""Batches of planes: every registered method gives for a batch ``[B, C, ny, nx]`` what it
gives for each plane alone; noise-only planes are skipped; any plane size works."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrprior.mr.sampling import poisson_disc
from mrprior.mr.simulate import simulate_kspace
from mrprior.priors.network import NetworkPrior
from mrprior.priors.unet import EDMDenoiser, UNetConfig
from mrprior.recon.planes import PlaneSenseOperator, signal_planes
from mrprior.recon.problem import ReconProblem, ReconResult, get_method, register_method
from tests.recon.priors_for_tests import GaussianSmoothnessPrior, smooth_phantom

SHAPE = (30, 46)  # not square, not a multiple of the network's size multiple
ODD = (29, 45)  # odd sizes: no fused normal operator, padding on both axes
NOISE = 0.01


def _plane(shape: tuple[int, int], seed: int, noise_only: bool = False) -> tuple[np.ndarray, ...]:
    img = smooth_phantom(64, seed=seed)[17 : 17 + shape[0], 9 : 9 + shape[1]].numpy()
    if noise_only:
        img = np.zeros_like(img)
    sim = simulate_kspace(img, coils=4, noise_std=NOISE, seed=seed)
    m = poisson_disc(shape, 2.5, calib=(10, 10), seed=seed)
    return sim.kspace * m.mask[None], m.mask, m.calib, sim.csm


def make_batch(shape: tuple[int, int]) -> ReconProblem:
    """Three planes with their own maps and masks; the last holds only noise."""
    planes = [_plane(shape, 0), _plane(shape, 1), _plane(shape, 2, noise_only=True)]
    k, m, c, s = (torch.from_numpy(np.stack(p)) for p in zip(*planes, strict=True))
    return ReconProblem(k.to(torch.complex64), m, s.to(torch.complex64), NOISE, c)


@pytest.fixture(scope="module")
def batch() -> ReconProblem:
    return make_batch(SHAPE)


def _random_network_prior() -> NetworkPrior:
    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=2, channels=[8, 16], blocks_per_level=1, emb_dim=16)
    net = EDMDenoiser(cfg)
    with torch.no_grad():
        for p in net.parameters():  # untrained F starts at zero: make the network do something
            p.add_(0.05 * torch.randn_like(p))
    return NetworkPrior(net, 0.003, 1.2)


CASES = {
    "zerofill": {},
    "sense": {"max_iterations": 8},
    "l1": {"lam": 0.005, "max_iterations": 8},
    "prior-pics": {"prior": GaussianSmoothnessPrior(), "iterations": 4},
    "prior-pics-fista": {"prior": GaussianSmoothnessPrior(), "iterations": 4, "solver": "fista"},
    "prior-pics-network": {"prior": _random_network_prior(), "iterations": 3, "precision": "fp32"},
    "prior-sample": {"prior": GaussianSmoothnessPrior(), "num_samples": 2, "steps": 4, "branch": 2},
    "prior-sample-langevin": {
        "prior": GaussianSmoothnessPrior(),
        "sampler": "langevin",
        "num_samples": 2,
        "levels": 4,
    },
    "prior-nlinv": {"prior": GaussianSmoothnessPrior(), "iterations": 4, "prior_steps": 1},
}


@pytest.mark.parametrize(
    ("case", "shape"),
    [(c, SHAPE) for c in sorted(CASES)]
    + [(c, ODD) for c in ("sense", "prior-pics-network", "prior-sample", "prior-nlinv")],
)
def test_batch_equals_separate_calls(case: str, shape: tuple[int, int]) -> None:
    batch = make_batch(shape)
    method = get_method(case.split("-")[0] + "-" + case.split("-")[1] if "-" in case else case)
    settings = CASES[case]
    together = method(batch, dict(settings))
    assert together.image.shape == (3, *shape)
    for i in range(3):
        alone = method(batch.plane(i), dict(settings))
        assert alone.image.shape == shape
        ref = alone.image.abs().max().clamp_min(1e-6)
        err = float((together.image[i] - alone.image).abs().max() / ref)
        assert err < 2e-3, (case, i, err)
        for name, value in alone.extras.items():
            assert together.extras[name].shape == (3, *value.shape)
            scale = value.abs().max().clamp_min(1e-6)
            err = float((together.extras[name][i] - value).abs().max() / scale)
            assert err < 2e-3, (case, name, i, err)


@pytest.mark.parametrize("method", ["prior-pics", "prior-sample", "prior-nlinv"])
def test_noise_only_plane_is_skipped_with_the_zero_filled_image(
    batch: ReconProblem, method: str
) -> None:
    prior = GaussianSmoothnessPrior()
    settings = {"prior": prior, "iterations": 3}
    if method == "prior-sample":
        settings = {"prior": prior, "num_samples": 2, "levels": 3}
    if method == "prior-nlinv":
        settings["prior_steps"] = 1
    res = get_method(method)(batch, settings)
    assert res.info["planes_skipped"] == 1
    zf = get_method("zerofill")(batch, {"combine": "sense" if method != "prior-nlinv" else "rss"})
    torch.testing.assert_close(res.image[2], zf.image[2])
    assert not torch.allclose(res.image[0], zf.image[0])
    if method == "prior-sample":  # the noise std of the zero-filled image, not zero
        assert float(res.extras["uncertainty"][2].max()) > 0


def test_signal_detection_against_pure_noise() -> None:
    g = torch.Generator().manual_seed(1)
    shape = (64, 4, 32, 32)
    noise = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    noise = noise * (0.3 / 2**0.5)  # complex std 0.3
    mask = torch.rand((64, 32, 32), generator=g) < 0.4
    k = noise * mask[:, None]
    assert not bool(signal_planes(k, mask, torch.full((64,), 0.3)).any())
    mask[5, 16, 16] = True
    k[5, :, 16, 16] = 3.0  # one strong k-space sample (all coils) is signal
    found = signal_planes(k, mask, torch.full((64,), 0.3))
    assert found.tolist() == [i == 5 for i in range(64)]


def test_plane_sense_operator_is_adjoint_and_broadcasts(batch: ReconProblem) -> None:
    op = PlaneSenseOperator(batch.csm, batch.mask)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(3, *SHAPE, dtype=torch.complex64, generator=g)
    v = torch.randn(3, 4, *SHAPE, dtype=torch.complex64, generator=g)
    lhs = torch.vdot(op.forward(u).flatten(), v.flatten())
    rhs = torch.vdot(u.flatten(), op.adjoint(v).flatten())
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)
    x = torch.randn(2, 3, *SHAPE, dtype=torch.complex64)  # e.g. two samples of every plane
    assert op.forward(x).shape == (2, 3, 4, *SHAPE)
    single = PlaneSenseOperator(batch.csm[1:2], batch.mask[1:2])
    torch.testing.assert_close(op.forward(x)[:, 1:2], single.forward(x[:, 1:2]))


def test_problem_shapes_are_checked(batch: ReconProblem) -> None:
    with pytest.raises(ValueError, match="mask"):
        ReconProblem(batch.kspace, batch.mask[:2])
    with pytest.raises(ValueError, match="csm"):
        ReconProblem(batch.kspace, batch.mask, batch.csm[:2])
    shared = ReconProblem(batch.kspace, batch.mask[0], batch.csm[0])
    assert shared.as_batch().mask.shape == (3, *SHAPE)
    assert shared.as_batch().csm.shape == batch.csm.shape


def test_a_plane_by_plane_method_gets_batches_too(batch: ReconProblem) -> None:
    seen: list[tuple[int, ...]] = []

    @register_method("test-plane-by-plane", needs_csm=True)
    def _one_plane(problem: ReconProblem, settings: dict) -> ReconResult:
        seen.append(tuple(problem.kspace.shape))
        img = (problem.kspace.sum(dim=0) * problem.csm.sum(dim=0)).to(torch.complex64)
        return ReconResult(img, {"twice": 2 * img.abs()}, {"sum": float(img.abs().sum())})

    res = get_method("test-plane-by-plane")(batch, {})
    assert seen == [(4, *SHAPE)] * 3
    assert res.image.shape == res.extras["twice"].shape == (3, *SHAPE)
    torch.testing.assert_close(res.extras["twice"], 2 * res.image.abs())
    assert len(res.info["sum"]) == 3


def test_uncertainty_scale_scales_the_sampler_map_only(batch):
    """``uncertainty_scale`` multiplies the std of the reconstructed planes (not the image);
    left unset, the hqs sampler applies its calibration and langevin none."""
    from mrprior.recon.posterior import HQS_UNCERTAINTY_SCALE

    method = get_method("prior-sample")
    base = {"prior": GaussianSmoothnessPrior(), "num_samples": 2, "steps": 4, "branch": 2}
    one = method(batch, {**base, "uncertainty_scale": 1.0})
    three = method(batch, {**base, "uncertainty_scale": 3.0})
    default = method(batch, base)
    active = [0, 1]  # plane 2 is noise only: its map is the zero-filled noise std, unscaled
    torch.testing.assert_close(three.image, one.image)
    u1, u3 = one.extras["uncertainty"], three.extras["uncertainty"]
    torch.testing.assert_close(u3[active], 3.0 * u1[active])
    torch.testing.assert_close(u3[2], u1[2])
    torch.testing.assert_close(
        default.extras["uncertainty"][active], HQS_UNCERTAINTY_SCALE * u1[active]
    )
    assert default.info["uncertainty_scale"] == HQS_UNCERTAINTY_SCALE
    assert three.info["uncertainty_scale"] == 3.0
