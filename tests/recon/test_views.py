"""Geometric views of the denoiser (mrprior/recon/views.py) and their use in prior-PICS."""

from __future__ import annotations

import pytest
import torch

from mrprior.priors.base import ScorePrior
from mrprior.recon.planes import plane_operator
from mrprior.recon.pnp import pnp_hqs
from mrprior.recon.views import DIHEDRAL_ORDER, View, denoise_in_view, view_cycle


class _RowSmoother(ScorePrior):
    """A denoiser that is NOT rotation-equivariant: it averages each pixel with its right-hand
    neighbour only, so a view changes its output unless mapped back correctly."""

    size_multiple = 1

    def to(self, device: torch.device | str) -> _RowSmoother:
        return self

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        return 0.5 * (x + torch.roll(x, -1, dims=-1))

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32)
        return (self.denoise(x, sigma) - x) / s**2


def _volume(b: int = 5, h: int = 6, w: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.complex(torch.randn(b, h, w, generator=g), torch.randn(b, h, w, generator=g))


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("code", range(8))
def test_view_inverts(axis: int, code: int) -> None:
    x = _volume()
    v = View(axis, code)
    assert torch.equal(v.invert(v.apply(x)), x)


def test_view_reslices_the_volume() -> None:
    x = _volume()
    assert View(1).apply(x).shape == (6, 5, 7)
    assert View(2).apply(x).shape == (7, 5, 6)
    assert torch.equal(View(1).apply(x)[2], x[:, 2, :])
    assert torch.equal(View(2).apply(x)[3], x[:, :, 3])
    assert torch.equal(View(0, 4).apply(x), x.transpose(-2, -1))


def test_view_cycles() -> None:
    planes = view_cycle()
    assert [v.code for v in planes] == list(DIHEDRAL_ORDER) and len(set(planes)) == 8
    assert not any(v.resliced for v in planes)
    vol = view_cycle(volume=True, levels=20)
    # the first half of the ladder in-plane, then the three orientations in turn
    assert len(vol) == 20 and [v.axis for v in vol] == [0] * 10 + [1, 2, 0] * 3 + [1]
    assert [v.code for v in vol[:8]] == list(DIHEDRAL_ORDER)
    assert [v.axis for v in view_cycle(True, 3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="number of levels"):
        view_cycle(volume=True)
    with pytest.raises(ValueError, match="invalid view"):
        View(3)


def test_denoise_in_view_differs_by_view_and_maps_back() -> None:
    prior = _RowSmoother()
    x = _volume()
    plain = denoise_in_view(prior, x, 0.1, None)
    flipped = denoise_in_view(prior, x, 0.1, View(0, 1))
    # mapped back: the flipped view averages with the LEFT neighbour instead
    assert torch.allclose(flipped, 0.5 * (x + torch.roll(x, 1, dims=-1)))
    assert not torch.allclose(plain, flipped)
    # resliced: the smoothing runs along the other axis of the volume
    resliced = denoise_in_view(prior, x, 0.1, View(2, 4))
    assert torch.allclose(resliced, 0.5 * (x + torch.roll(x, -1, dims=-3)))


def test_denoise_in_view_embeds_a_subset_of_planes() -> None:
    prior = _RowSmoother()
    x = _volume()
    planes = torch.tensor([True, False, True, True, False])
    out = denoise_in_view(prior, x[planes], 0.1, View(2, 4), planes)
    full = x.clone()
    full[~planes] = 0
    expected = 0.5 * (full + torch.roll(full, -1, dims=-3))
    assert torch.allclose(out, expected[planes])


def test_pnp_hqs_with_views_stays_consistent_with_the_data() -> None:
    """With the identity-like views of an equivariant denoiser the ladder still fits the data;
    resliced views of a batch run (shapes) and keep the data fitted."""
    g = torch.Generator().manual_seed(1)
    b, c, n = 3, 4, 16
    csm = torch.complex(torch.randn(b, c, n, n, generator=g), torch.randn(b, c, n, n, generator=g))
    csm = csm / (csm.abs() ** 2).sum(1, keepdim=True).sqrt()
    mask = torch.rand(n, n, generator=g) < 0.6
    op = plane_operator(csm, mask)
    x = _volume(b, n, n)
    y = op.forward(x)
    prior = _RowSmoother()
    for views in (view_cycle(), view_cycle(volume=True, levels=6)):
        out = pnp_hqs(op, y, prior, noise_std=1e-3, max_iterations=6, kappa=0.5, views=views)
        assert out.shape == x.shape and torch.isfinite(out).all()
        rel = torch.linalg.vector_norm(op.forward(out) - y) / torch.linalg.vector_norm(y)
        assert float(rel) < 0.2


def test_pnp_hqs_in_plane_chunks_is_the_same_solve() -> None:
    """Data consistency on chunks of planes (bounded memory) gives the same result."""
    g = torch.Generator().manual_seed(2)
    b, c, n = 5, 3, 12
    csm = torch.complex(torch.randn(b, c, n, n, generator=g), torch.randn(b, c, n, n, generator=g))
    csm = csm / (csm.abs() ** 2).sum(1, keepdim=True).sqrt()
    op = plane_operator(csm, torch.rand(b, n, n, generator=g) < 0.5)
    y = op.forward(_volume(b, n, n))
    kw = dict(noise_std=torch.full((b, 1, 1), 0.01), max_iterations=4, views=view_cycle(True, 4))
    whole = pnp_hqs(op, y, _RowSmoother(), **kw)
    chunked = pnp_hqs(op, y, _RowSmoother(), plane_chunk=2, **kw)
    assert torch.allclose(whole, chunked, rtol=1e-4, atol=1e-5)


def test_problem_select_follows_the_volume() -> None:
    from mrprior.recon.problem import ReconProblem

    b, c, n = 4, 2, 8
    k = torch.zeros(b, c, n, n, dtype=torch.complex64)
    volume = torch.tensor([False, True, True, False, True, True])
    p = ReconProblem(k, torch.ones(n, n, dtype=torch.bool), volume=volume)
    sub = p.select(torch.tensor([True, False, True, True]))
    assert sub.num_planes == 3
    assert sub.volume.tolist() == [False, True, False, False, True, True]
    assert p.select(slice(0, 2)).volume is None
    with pytest.raises(ValueError, match="one True per plane"):
        ReconProblem(k, torch.ones(n, n, dtype=torch.bool), volume=torch.ones(3, dtype=torch.bool))


def test_prior_pics_views_setting() -> None:
    """``views: volume`` reslices only a whole volume (``problem.volume``); on planes that are
    not known to be a volume it is the in-plane cycle; ``none`` differs from both."""
    from mrprior.recon.problem import ReconProblem, get_method

    g = torch.Generator().manual_seed(3)
    b, c, n = 4, 3, 16
    csm = torch.complex(torch.randn(b, c, n, n, generator=g), torch.randn(b, c, n, n, generator=g))
    csm = csm / (csm.abs() ** 2).sum(1, keepdim=True).sqrt()
    mask = torch.rand(n, n, generator=g) < 0.5
    y = plane_operator(csm, mask).forward(_volume(b, n, n))
    run = get_method("prior-pics")
    base = {"prior": _RowSmoother(), "iterations": 4, "noise_std": 0.01, "kappa_search": "never"}

    def recon(views: str, volume: bool) -> torch.Tensor:
        vol = torch.ones(b, dtype=torch.bool) if volume else None
        problem = ReconProblem(y, mask, csm, 0.01, volume=vol)
        return run(problem, {**base, "views": views}).image

    planes = recon("planes", True)
    assert torch.equal(recon("volume", False), planes)
    assert not torch.allclose(recon("volume", True), planes)
    assert not torch.allclose(recon("none", True), planes)
