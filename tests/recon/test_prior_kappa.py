"""prior-PICS's data weight κ by k-space cross-validation (mrprior/recon/prior_kappa.py)."""

from __future__ import annotations

import math

import pytest
import torch

from mrprior.priors.base import ScorePrior
from mrprior.recon.kspace_cv import is_regular_lattice
from mrprior.recon.planes import plane_operator
from mrprior.recon.prior_kappa import cv_kappa, within_standard_errors
from mrprior.recon.prior_methods import PriorPicsSettings
from mrprior.recon.problem import ReconProblem, get_method


class _Smoother(ScorePrior):
    """A denoiser for smooth images: a 3×3 box filter whose weight on the neighbours grows
    with σ (a crude MMSE denoiser of a smooth-image prior)."""

    size_multiple = 1

    def to(self, device: torch.device | str) -> _Smoother:
        return self

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        s = float(torch.as_tensor(sigma).max())
        avg = sum(torch.roll(x, (i, j), dims=(-2, -1)) for i in (-1, 0, 1) for j in (-1, 0, 1))
        a = min(1.0, 20 * s)
        return (1 - a) * x + a * avg / 9

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32)
        return (self.denoise(x, sigma) - x) / s**2


def _planes(b: int = 6, c: int = 4, n: int = 24, seed: int = 0) -> dict[str, torch.Tensor]:
    """Smooth complex planes, random unit-norm coil maps, a random 35 % mask with a 6×6
    fully sampled centre."""
    g = torch.Generator().manual_seed(seed)
    x = torch.complex(torch.randn(b, n, n, generator=g), torch.randn(b, n, n, generator=g))
    k = torch.fft.fft2(x)
    f = torch.fft.fftfreq(n)
    k = k * (torch.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / 0.01))  # smooth
    x = torch.fft.ifft2(k)
    x = x / x.abs().amax()
    csm = torch.complex(torch.randn(b, c, n, n, generator=g), torch.randn(b, c, n, n, generator=g))
    csm = csm / (csm.abs() ** 2).sum(1, keepdim=True).sqrt()
    mask = torch.rand(n, n, generator=g) < 0.35
    centre = torch.zeros(n, n, dtype=torch.bool)
    centre[n // 2 - 3 : n // 2 + 3, n // 2 - 3 : n // 2 + 3] = True
    mask = torch.fft.ifftshift(mask | centre)
    return {"x": x, "csm": csm, "mask": mask}


@pytest.mark.parametrize("shared", [True, False])
def test_cv_kappa_finds_the_minimum_of_the_held_out_error(shared: bool) -> None:
    """A ``solve`` whose error grows with ``|log κ − log 1.3|`` along a fixed direction: the
    held-out error is a parabola in log κ, so the search (grid from 0.5 by √2, then a parabola)
    lands on 1.3; ``solve`` only ever sees the fold's positions, never the held-out ones."""
    d = _planes()
    b = d["x"].shape[0]
    mask = d["mask"] if shared else d["mask"].expand(b, -1, -1).clone()
    k = plane_operator(d["csm"], mask).forward(d["x"])
    g = torch.Generator().manual_seed(1)
    e = torch.complex(
        torch.randn(d["x"].shape, generator=g), torch.randn(d["x"].shape, generator=g)
    )
    seen = []

    def solve(rows: list[int], keep: torch.Tensor, kappa: float) -> torch.Tensor:
        m = mask if shared else mask[rows]
        assert bool((keep <= m).all()) and int(keep.sum()) < int(m.sum())
        seen.append(kappa)
        return d["x"][rows] + (math.log(kappa) - math.log(1.3)) * e[rows]

    kappa, info = cv_kappa(k, mask, d["csm"], solve, 0.5, planes=4)
    assert info["rule"] == "cv" and len(info["planes"]) == 4
    assert abs(math.log(kappa / 1.3)) < 0.02, kappa
    assert 0.5 in info["scores"] and min(info["scores"], key=info["scores"].get) == pytest.approx(
        math.sqrt(2)
    )
    assert len(seen) == 2 * len(info["scores"])  # two folds per κ tried


def test_within_standard_errors_takes_the_largest_kappa_under_the_threshold() -> None:
    """Parts ``[2, 4]`` per κ on the grid 0.5·√2^k: the lowest total is at κ 1; its parts have
    std 2.138 (total's standard error 2.138·√8 = 6.05); the totals rise by 2, 4, 8 per step
    above it, so one standard error is crossed between κ 2 (total +6) and 2√2 (+14),
    interpolated in log κ; half a standard error between √2 (+2) and 2 (+6); with a wall at
    ``upper`` the walk stops there."""
    step = math.sqrt(2.0)
    base = torch.tensor([[8.0, 12.0, 8.0, 12.0], [8.0, 12.0, 8.0, 12.0]])  # std 2.138
    rise = {0.5: 4.0, 0.5 * step: 1.0, 1.0: 0.0, step: 2.0, 2.0: 6.0, 2.0 * step: 14.0, 4.0: 30.0}
    parts = {k: base + r / base.numel() for k, r in rise.items() if k <= 1.0}
    calls = []

    def score(kappa: float) -> float:
        key = min(rise, key=lambda v: abs(math.log(v / kappa)))
        calls.append(key)
        parts.setdefault(key, base + rise[key] / base.numel())
        return float(parts[key].sum())

    se = math.sqrt(8) * float(base.flatten().std())
    one = within_standard_errors(score, parts, step, 100.0, 1.0)
    t = (se - 6.0) / (14.0 - 6.0)
    assert one == pytest.approx(2.0 * step**t)
    half = within_standard_errors(score, parts, step, 100.0, 0.5)
    assert half == pytest.approx(step * step ** ((0.5 * se - 2.0) / 4.0))
    assert within_standard_errors(score, parts, step, 1.5, 1.0) == pytest.approx(step)
    assert 4.0 not in calls  # the walk stops at the first score over the threshold


def test_cv_kappa_with_standard_errors_moves_up_from_the_minimum() -> None:
    """The same parabola as above on a regular lattice (every second position both ways, a
    fully sampled centre): with ``standard_errors`` the κ returned is above the score's
    minimum (reported as ``kappa_min``); random sampling keeps the minimum."""
    d = _planes(n=32)
    lattice = torch.zeros(32, 32, dtype=torch.bool)
    lattice[::2, ::2] = True
    lattice[12:20, 12:20] = True
    assert is_regular_lattice(lattice) and not is_regular_lattice(d["mask"])
    k = plane_operator(d["csm"], lattice).forward(d["x"])
    g = torch.Generator().manual_seed(1)
    e = torch.complex(
        torch.randn(d["x"].shape, generator=g), torch.randn(d["x"].shape, generator=g)
    )

    def solve(rows: list[int], keep: torch.Tensor, kappa: float) -> torch.Tensor:
        return d["x"][rows] + (math.log(kappa) - math.log(1.3)) * e[rows]

    k0, info0 = cv_kappa(k, lattice, d["csm"], solve, 0.5, planes=4)
    k1, info1 = cv_kappa(k, lattice, d["csm"], solve, 0.5, planes=4, standard_errors=1.0)
    assert info1["kappa_min"] == pytest.approx(k0) and info0["kappa_min"] == pytest.approx(k0)
    assert info1["lattice"] and k1 > 1.05 * k0
    kr = plane_operator(d["csm"], d["mask"]).forward(d["x"])
    k2, info2 = cv_kappa(kr, d["mask"], d["csm"], solve, 0.5, planes=4, standard_errors=1.0)
    assert not info2["lattice"] and k2 == info2["kappa_min"]


def test_cv_kappa_without_anything_to_hold_out_keeps_the_start() -> None:
    d = _planes(b=2)
    full = torch.ones_like(d["mask"])
    k = plane_operator(d["csm"], full).forward(d["x"])

    def solve(rows: list[int], keep: torch.Tensor, kappa: float) -> torch.Tensor:
        raise AssertionError("nothing to cross-validate")

    kappa, info = cv_kappa(k, full, d["csm"], solve, 0.7)
    assert kappa == 0.7 and info["rule"] == "fixed"


def _problem(noise: float, volume: bool, seed: int = 0) -> ReconProblem:
    d = _planes(seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    k = plane_operator(d["csm"], d["mask"]).forward(d["x"])
    k = k + noise / math.sqrt(2) * torch.complex(
        torch.randn(k.shape, generator=g), torch.randn(k.shape, generator=g)
    )
    k = k * d["mask"]
    vol = torch.ones(k.shape[0], dtype=torch.bool) if volume else None
    return ReconProblem(k, d["mask"], d["csm"], noise, volume=vol)


def test_prior_pics_searches_kappa_on_volumes_and_uses_it() -> None:
    """Default ``kappa_search: volume``: a whole volume is cross-validated, planes that are not
    a volume keep ``kappa``; ``never`` / ``always`` override; the image is the one of the
    chosen κ; noisier data get a larger κ (more weight on the prior)."""
    run = get_method("prior-pics")
    base = {"prior": _Smoother(), "iterations": 6, "views": "none"}
    vol = run(_problem(0.05, volume=True), base)
    assert vol.info["kappa_rule"] == "cv" and vol.info["kappa_tried"] >= 3
    same = run(
        _problem(0.05, True), {**base, "kappa_search": "never", "kappa": vol.info["kappa_used"]}
    )
    assert torch.equal(same.image, vol.image)
    assert same.info["kappa_rule"] == "fixed"
    planes = run(_problem(0.05, volume=False), base)
    assert (
        planes.info["kappa_rule"] == "fixed"
        and planes.info["kappa_used"] == PriorPicsSettings().kappa
    )
    always = run(_problem(0.05, volume=False), {**base, "kappa_search": "always"})
    assert always.info["kappa_rule"] == "cv"
    assert always.info["kappa_used"] == pytest.approx(vol.info["kappa_used"])
    noisy = run(_problem(0.2, volume=True), base)
    assert noisy.info["kappa_used"] > 1.5 * vol.info["kappa_used"], (
        noisy.info["kappa_used"],
        vol.info["kappa_used"],
    )


def test_kappa_search_setting_is_validated() -> None:
    from mrprior.errors import ConfigError

    with pytest.raises(ConfigError, match="kappa_search"):
        get_method("prior-pics")(
            _problem(0.05, True), {"prior": _Smoother(), "kappa_search": "sometimes"}
        )


def test_is_regular_lattice_tells_lattices_from_random_sampling() -> None:
    """Uniform and CAIPI undersampling (with a calibration region) are lattices; Poisson-disc,
    variable-density lines and full sampling are not."""
    from mrprior.mr.sampling import make_mask

    def lat(kind: str, accel: float | tuple[int, int]) -> bool:
        return is_regular_lattice(torch.from_numpy(make_mask(kind, (96, 128), accel, 16).mask))

    assert lat("caipi", (3, 2)) and lat("uniform", (2, 2)) and lat("uniform", 3)
    assert not lat("poisson", 5) and not lat("lines", 4)
    assert not is_regular_lattice(torch.ones(32, 32, dtype=torch.bool))
