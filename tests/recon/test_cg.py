import itertools

import pytest
import torch

from mrprior.metrics import psnr
from mrprior.mr.linop import FunctionOperator
from mrprior.mr.sense import sense_operator
from mrprior.recon.baselines import cg_sense, zero_filled
from mrprior.recon.cg import conjugate_gradient, normal_operator
from mrprior.recon.problem import ReconProblem


def synthetic_problem(n=64, coils=4, accel_keep=0.3, noise=0.002, seed=0):
    """Piecewise-constant image, smooth normalized coil maps, random mask with full centre."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    img = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1).float()
    img = img - 0.5 * (((xx - 0.2) / 0.3) ** 2 + (yy / 0.5) ** 2 < 1).float()
    img = img + 0.3 * ((xx.abs() < 0.15) & ((yy + 0.5).abs() < 0.1)).float()
    img = img.to(torch.complex64) * torch.exp(1j * 0.5 * xx)
    maps = []
    for c in range(coils):
        ang = 2 * torch.pi * c / coils
        cx, cy = 1.2 * torch.cos(torch.tensor(ang)), 1.2 * torch.sin(torch.tensor(ang))
        mag = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 1.5)
        maps.append(mag * torch.exp(1j * (c + xx * cx + yy * cy)))
    csm = torch.stack(maps).to(torch.complex64)
    csm = csm / torch.sqrt((csm.abs() ** 2).sum(0, keepdim=True))
    mask = torch.rand((n, n), generator=g) < accel_keep
    mask[n // 2 - 6 : n // 2 + 6, n // 2 - 6 : n // 2 + 6] = True
    A = sense_operator(csm, mask)
    y = A.forward(img)
    y = y + noise * torch.randn(y.shape, dtype=torch.complex64, generator=g) * mask
    return ReconProblem(kspace=y.to(torch.complex64), mask=mask, csm=csm), img


def test_cg_solves_hermitian_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn((12, 12), dtype=torch.complex128, generator=g)
    h = m.conj().T @ m + 0.5 * torch.eye(12, dtype=torch.complex128)
    b = torch.randn(12, dtype=torch.complex128, generator=g)
    x = conjugate_gradient(lambda v: h @ v, b, max_iterations=100, tol=1e-12)
    torch.testing.assert_close(x, torch.linalg.solve(h, b))


def test_cg_batched_systems_are_independent():
    d = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]], dtype=torch.complex64)
    op = FunctionOperator(lambda v: d * v, lambda v: d.conj() * v, (3,), (3,))
    b = torch.ones((2, 3), dtype=torch.complex64)
    x = conjugate_gradient(op, b.clone(), max_iterations=10, tol=1e-7, batch_ndim=1)
    torch.testing.assert_close(x, b / d)


def test_cg_callback_stops_and_x0():
    calls = []
    b = torch.ones(5, dtype=torch.complex64)
    diag = torch.arange(1, 6).to(torch.complex64)
    conjugate_gradient(
        lambda v: diag * v, b, max_iterations=50, callback=lambda i, x: calls.append(i) or i >= 1
    )
    assert calls == [0, 1]
    x = conjugate_gradient(lambda v: diag * v, b, x0=b / diag, max_iterations=5)
    torch.testing.assert_close(x, b / diag)


def test_fused_normal_operator_matches_gram():
    prob, _ = synthetic_problem(n=32)
    A = sense_operator(prob.csm, prob.mask)
    x = torch.randn(32, 32, dtype=torch.complex64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(normal_operator(A)(x), A.gram.forward(x), rtol=1e-5, atol=1e-5)
    # an even size that is not a power of two: the folded scaling 1/N is rounded
    even = sense_operator(prob.csm[:, :30, :30], prob.mask[:30, :30])
    xe = x[:30, :30]
    torch.testing.assert_close(normal_operator(even)(xe), even.gram.forward(xe))
    odd = sense_operator(prob.csm[:, :31, :31], prob.mask[:31, :31])
    xo = x[:31, :31]  # odd sizes take the generic path
    torch.testing.assert_close(normal_operator(odd)(xo), odd.gram.forward(xo))


def test_cg_sense_decreases_data_error_and_beats_zero_filling():
    prob, img = synthetic_problem()
    A = sense_operator(prob.csm, prob.mask)
    res = []
    x = cg_sense(
        A,
        prob.kspace,
        max_iterations=15,
        callback=lambda i, x: res.append(float(torch.linalg.vector_norm(A(x) - prob.kspace))),
    )
    assert all(b <= a * (1 + 1e-4) for a, b in itertools.pairwise(res))
    assert res[-1] < 0.2 * float(torch.linalg.vector_norm(prob.kspace))
    zf = zero_filled(prob)
    assert psnr(x, img) > psnr(zf, img) + 3
    rss = zero_filled(prob, "rss")
    assert rss.shape == img.shape and torch.all(rss.imag == 0)
    # Tikhonov shrinks the solution
    x_reg = cg_sense(A, prob.kspace, lam=1.0, max_iterations=15)
    assert torch.linalg.vector_norm(x_reg) < torch.linalg.vector_norm(x)
    with pytest.raises(ValueError):
        cg_sense(A, prob.kspace, lam=-1)


def test_zero_filled_needs_maps():
    prob, _ = synthetic_problem(n=16)
    prob.csm = None
    with pytest.raises(ValueError, match="coil maps"):
        zero_filled(prob)


@pytest.mark.parametrize("kind", ["lines", "column", "full", "2d", "row", "ones_row"])
def test_fast_normal_operator_any_mask(kind: str) -> None:
    """The fast ``AᴴA`` equals the operator's gram for 1D masks (``k_y`` transform only), a
    mask given as one column or one row, no mask and a 2D mask; one plane and a batch."""
    from mrprior.recon.planes import plane_operator

    prob, _ = synthetic_problem(n=32)
    g = torch.Generator().manual_seed(5)
    lines = torch.rand(32, generator=g) < 0.4
    masks = {
        "lines": lines[:, None].expand(32, 32),
        "column": lines[:, None],
        "full": None,
        "2d": prob.mask,
        "row": lines,  # [W]: varies along k_x
        "ones_row": torch.ones(32, dtype=torch.bool),
    }
    A = sense_operator(prob.csm, masks[kind])
    x = torch.randn(3, 32, 32, dtype=torch.complex64, generator=g)  # leading sample dim
    torch.testing.assert_close(normal_operator(A)(x), A.gram.forward(x), rtol=1e-5, atol=1e-5)
    if kind not in ("lines", "2d"):
        return
    # planes: per-plane maps and masks [B, C, H, W] / [B, H, W]
    csm = torch.stack([prob.csm, prob.csm.flip(-1)])
    mask = torch.stack([masks[kind], masks[kind].flip(-2)])
    P = plane_operator(csm, mask)
    xb = x[:2]
    torch.testing.assert_close(normal_operator(P)(xb), P.gram.forward(xb), rtol=1e-5, atol=1e-5)


def test_cg_keeps_inputs_and_iterates() -> None:
    """The solver updates its own residual and direction in place, never ``rhs``, ``x0`` or an
    iterate handed to the callback."""
    prob, _ = synthetic_problem(n=32)
    A = sense_operator(prob.csm, prob.mask)
    rhs = A.adjoint(prob.kspace)
    x0 = torch.zeros_like(rhs) + 0.1
    rhs_c, x0_c = rhs.clone(), x0.clone()
    iterates: list[torch.Tensor] = []
    conjugate_gradient(
        normal_operator(A), rhs, x0=x0, max_iterations=4, callback=lambda i, x: iterates.append(x)
    )
    assert torch.equal(rhs, rhs_c) and torch.equal(x0, x0_c)
    assert len(iterates) == 4
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(iterates))
