"""ℓ1 over a whole 3D volume (``problem.volume``): FISTA on the grid of readout planes with 3D
wavelets, the data term only on the planes with data, the normal operator in chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrprior.metrics import psnr
from mrprior.mr.fft import fftc, ifftc
from mrprior.recon.fista import l1_wavelet
from mrprior.recon.planes import PlaneSenseOperator
from mrprior.recon.problem import ReconProblem, get_method
from tests.io.raw3d import coil_maps_3d, phantom_volume

NZ, NY, NX, COILS = 16, 16, 12, 4  # the readout (NX) is the planes axis
LAM = 0.01


@pytest.fixture(scope="module")
def vol() -> dict[str, torch.Tensor]:
    """Planes ``[NX, C, NZ, NY]`` of a noisy phantom volume, ~35 % of (kz, ky) sampled."""
    truth = phantom_volume(NZ, NY, NX)
    maps = coil_maps_3d(COILS, NZ, NY, NX).astype(np.complex64)
    rng = np.random.default_rng(0)
    k = fftc(maps * truth[None], ndim=3)
    k = k + 0.01 * np.abs(k).max() * (
        rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)
    )
    mask = rng.random((NZ, NY)) < 0.3
    mask[NZ // 2 - 3 : NZ // 2 + 3, NY // 2 - 3 : NY // 2 + 3] = True
    hybrid = ifftc(torch.from_numpy((k * mask[..., None]).astype(np.complex64)), 1)
    planes = hybrid.permute(3, 0, 1, 2).contiguous()  # [x, C, kz, ky]
    csm = torch.from_numpy(maps).permute(3, 0, 1, 2).contiguous()
    ref = torch.from_numpy(truth.astype(np.complex64)).permute(2, 0, 1)  # [x, z, y]
    return {"k": planes, "csm": csm, "mask": torch.from_numpy(mask), "ref": ref}


def _solve(v, rows, **kw):
    A = PlaneSenseOperator(v["csm"][rows], v["mask"])
    return l1_wavelet(A, v["k"][rows], LAM, **{"scale": 1.0, **kw})


def test_background_planes_left_out_change_nothing(vol):
    """Planes without data (zero coil maps, zero k-space) solved on the grid or left out of
    the batch (``volume`` False there): the same volume; the chunking changes nothing."""
    keep = torch.ones(NX, dtype=torch.bool)
    keep[[0, 1, NX - 1]] = False
    full = dict(vol)
    full["csm"] = vol["csm"] * keep[:, None, None, None]
    full["k"] = vol["k"] * keep[:, None, None, None]
    every = _solve(full, slice(None), volume=torch.ones(NX, dtype=torch.bool), plane_chunk=None)
    part = _solve(vol, keep, volume=keep, plane_chunk=3)
    assert part.shape == (int(keep.sum()), NZ, NY)
    peak = float(every.abs().max())
    torch.testing.assert_close(part, every[keep], rtol=0, atol=1e-5 * peak)
    assert float(every[~keep].abs().max()) > 1e-4 * peak  # the 3D prox reaches empty planes


def test_3d_wavelets_couple_the_planes_2d_wavelets_do_not(vol):
    """``volume_wavelet=False``: 2D wavelets per plane on the volume grid, the result of the
    plain batch of planes; 3D wavelets couple the planes along the readout (no worse here)."""
    every = torch.ones(NX, dtype=torch.bool)
    planes2d = _solve(vol, slice(None))
    grid2d = _solve(vol, slice(None), volume=every, volume_wavelet=False, plane_chunk=5)
    peak = float(planes2d.abs().max())
    torch.testing.assert_close(grid2d, planes2d, rtol=0, atol=1e-5 * peak)
    grid3d = _solve(vol, slice(None), volume=every, plane_chunk=5)
    ref = vol["ref"].numpy()
    p2, p3 = psnr(planes2d.numpy(), ref), psnr(grid3d.numpy(), ref)
    assert p3 > p2, (p2, p3)  # the BART phantom test measures the gain on a larger volume
    assert float((grid3d - planes2d).abs().max()) > 0.01 * peak


def test_volume_arguments_are_checked(vol):
    every = torch.ones(NX, dtype=torch.bool)
    with pytest.raises(ValueError, match="one data scale"):
        l1_wavelet(PlaneSenseOperator(vol["csm"], vol["mask"]), vol["k"], LAM, volume=every)
    with pytest.raises(ValueError, match="marks"):
        _solve(vol, slice(None), volume=torch.ones(NX + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="x0"):
        _solve(vol, slice(None), volume=every, x0=torch.zeros(NX - 1, NZ, NY))


def test_l1_method_on_a_volume_fixed_and_auto_lambda(vol):
    """The registered method: whole volume with one data scale, ``volume_wavelet`` switch,
    ``lam: auto`` cross-validated with 3D reconstructions of the volume."""
    keep = torch.ones(NX, dtype=torch.bool)
    keep[0] = False
    problem = ReconProblem(
        vol["k"][keep], vol["mask"], vol["csm"][keep], data_scale=2.0, volume=keep
    )
    l1 = get_method("l1")
    res = l1(problem, {"lam": LAM})
    expect = _solve(vol, keep, volume=keep, plane_chunk=None, scale=2.0, seed=0)
    torch.testing.assert_close(res.image, expect, rtol=0, atol=1e-5 * float(expect.abs().max()))
    assert res.info["scale"] == 2.0 and res.info["volume_wavelet"] is True
    auto = l1(problem, {"lam": "auto"})
    assert auto.image.shape == (NX - 1, NZ, NY)
    assert auto.info["lam_rule"] == "cv" and auto.info["lam_used"] > 0
    assert auto.info["cv_reconstructions"] >= 2
    with pytest.raises(Exception, match="volume_wavelet"):
        l1(problem, {"volume_wavelet": "yes"})
