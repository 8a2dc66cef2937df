"""ℓ1 on the (ky, kz) planes of a 3D volume vs ``bart pics -l1 -r λ`` on the 3D k-space.

BART divides the whole 3D k-space by one data scale (``estimate_scaling``: a calibration block
of at most 32³, grown from the centre and slid along the readout, after ``pics``' ``fftmod``);
:func:`~mrprior.recon.fista.bart_scaling` on ``[C, kz, ky, kx]`` must give the number ``bart
pics -d5`` prints, and the ``l1`` method with that scale as ``ReconProblem.data_scale`` must
reach BART's PSNR at the same λ on every plane of the volume (2D wavelets per plane, without
``problem.volume``: a small margin); with ``problem.volume`` it solves BART's 3D problem (3D
wavelets over the whole grid) and reaches BART's level.

Setup: ``bart phantom -3 -x 32 -s 8 -k`` plus complex Gaussian noise (σ = 0.002 · max|k|); the
phantom's own sensitivities (``bart phantom -3 -x 32 -S 8``), normalized to ``Σ_c|S_c|² = 1``,
as coil maps for both (no ``ecalib``: seconds, and the same maps on both sides); ky–kz mask
``bart poisson -Y 32 -Z 32 -y 2 -z 2 -C 10 -e -s 1`` (R ≈ 3.8); reference: the noise-free
fully sampled coil-combined volume ``Σ_c conj(S_c) F⁻¹ k_c``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from mrprior.io.cfl import (
    image_from_bart,
    kspace_from_bart,
    kspace_to_bart,
    run_bart,
    run_bart_detailed,
)
from mrprior.metrics import psnr
from mrprior.mr.fft import ifftc
from mrprior.recon.fista import bart_scaling
from mrprior.recon.problem import ReconProblem, get_method

pytestmark = pytest.mark.bart

N = 32
LAM = 0.01


def _bart_pics(k: np.ndarray, csm: np.ndarray, iterations: int) -> tuple[np.ndarray, float]:
    """``bart pics -d5 -l1 -r LAM -i iterations`` on ``k [C, z, y, x]``: (volume, scale)."""
    run = run_bart_detailed(
        ["pics", "-d", "5", "-l1", "-r", str(LAM), "-i", str(iterations), "k", "s", "x"],
        inputs={"k": kspace_to_bart(k), "s": kspace_to_bart(csm)},
        outputs=["x"],
        threads=1,
    )
    m = re.search(r"Scaling: ([0-9.eE+-]+)", run.stdout + run.stderr)
    assert m, "bart pics -d5 printed no 'Scaling:' line"
    return image_from_bart(run.outputs["x"], ndim=3), float(m.group(1))


@pytest.fixture(scope="module")
def volume() -> dict[str, np.ndarray]:
    kfull = kspace_from_bart(
        run_bart(["phantom", "-3", "-x", str(N), "-s", "8", "-k", "k"], outputs=["k"], threads=1)[
            "k"
        ],
        ndim=3,
    )
    sens = kspace_from_bart(
        run_bart(["phantom", "-3", "-x", str(N), "-S", "8", "s"], outputs=["s"], threads=1)["s"],
        ndim=3,
    )
    csm = (sens / np.sqrt((np.abs(sens) ** 2).sum(axis=0, keepdims=True))).astype(np.complex64)
    m = run_bart(
        [
            "poisson",
            "-Y",
            str(N),
            "-Z",
            str(N),
            "-y",
            "2",
            "-z",
            "2",
            "-C",
            "10",
            "-e",
            "-s",
            "1",
            "m",
        ],
        outputs=["m"],
        threads=1,
    )["m"]
    mask = np.ascontiguousarray((np.abs(m.reshape(m.shape[:3], order="F")[0]) > 0).T)  # [kz, ky]
    rng = np.random.default_rng(0)
    sigma = 0.002 * float(np.abs(kfull).max())
    noise = (rng.standard_normal(kfull.shape) + 1j * rng.standard_normal(kfull.shape)) * (
        sigma / np.sqrt(2)
    )
    noisy = (kfull + noise).astype(np.complex64)
    k = noisy * mask[None, :, :, None]
    ref = (ifftc(torch.from_numpy(kfull), 3) * torch.from_numpy(csm).conj()).sum(0).numpy()
    return {"noisy": noisy, "k": k, "mask": mask, "csm": csm, "ref": ref}


@pytest.mark.parametrize(
    ("crop", "box"),
    [
        ((slice(None),) * 3, (10, 14)),  # the whole 32³ k-space: readout block = readout
        ((slice(2, 29), slice(1, 31), slice(None)), (7, 9)),  # odd block sizes
        ((slice(None), slice(None), slice(0, 28)), (32, 5)),  # kz fully sampled in the box
    ],
)
def test_bart_scaling_of_a_3d_kspace_is_bart_pics_scaling(volume, crop, box):
    """One scale of the whole 3D k-space, as ``bart pics`` computes it (odd-sized and
    asymmetric calibration blocks included)."""
    pad = (4, 5)  # an odd readout with unsampled ends (BART's block stops there)
    k = np.pad(volume["noisy"], [(0, 0), (0, 0), (0, 0), pad])[(..., *crop)]
    read = np.pad(np.ones(N, bool), pad)[crop[-1]]
    nz, ny, _ = k.shape[1:]
    rng = np.random.default_rng(1)
    plane = rng.random((nz, ny)) < 0.3
    cz, cy = min(box[0], nz), min(box[1], ny)
    plane[(nz - cz) // 2 : (nz - cz) // 2 + cz, (ny - cy) // 2 : (ny - cy) // 2 + cy] = True
    mask = plane[:, :, None] & read
    k = (k * mask).astype(np.complex64)
    csm = np.ones_like(k) / np.sqrt(k.shape[0])
    _, expect = _bart_pics(k, csm, iterations=1)
    ours = bart_scaling(torch.from_numpy(k), torch.from_numpy(mask))
    assert ours == pytest.approx(expect, rel=1e-4)
    assert bart_scaling(torch.from_numpy(k)) == pytest.approx(expect, rel=1e-4)  # pattern from k


def test_l1_planes_with_the_volume_scale_match_bart_pics_3d(volume):
    k, mask, csm, ref = volume["k"], volume["mask"], volume["csm"], volume["ref"]
    x_bart, bart_scale = _bart_pics(k, csm, iterations=30)
    mask3 = np.ascontiguousarray(np.broadcast_to(mask[:, :, None], k.shape[1:]))
    scale = bart_scaling(torch.from_numpy(k), torch.from_numpy(mask3))
    assert scale == pytest.approx(bart_scale, rel=1e-4)
    # the planes: inverse FFT along the readout, one (kz, ky) problem per readout position
    planes = ifftc(torch.from_numpy(k), 1).permute(3, 0, 1, 2).contiguous()
    maps = torch.from_numpy(csm).permute(3, 0, 1, 2).contiguous()
    settings = {"lam": LAM, "max_iterations": 30}

    def l1(data_scale: float | None) -> float:
        problem = ReconProblem(planes, torch.from_numpy(mask), maps, data_scale=data_scale)
        res = get_method("l1")(problem, settings)
        return psnr(res.image.permute(1, 2, 0).numpy(), ref)

    p_bart, p_volume, p_planes = psnr(x_bart, ref), l1(scale), l1(None)
    zero = (ifftc(torch.from_numpy(k), 3) * torch.from_numpy(csm).conj()).sum(0).numpy()
    p_zf = psnr(zero, ref)
    print(f"PSNR zero-filled {p_zf:.2f}, bart {p_bart:.2f}, ours {p_volume:.2f} dB (per-plane "
          f"scales {p_planes:.2f})")  # fmt: skip
    assert p_bart > p_zf + 5  # BART works on this case: the comparison means something
    assert p_volume >= p_bart - 0.5  # 2D wavelets per plane vs BART's 3D wavelets
    # each plane scaled by its own data norm regularizes the planes unevenly
    assert p_volume > p_planes + 0.2


def test_l1_whole_volume_with_3d_wavelets_reaches_bart_pics_3d(volume):
    """With ``problem.volume`` the ``l1`` method solves BART's 3D problem (3D wavelets over
    (readout, kz, ky), FISTA on the whole grid): BART's PSNR, and above our 2D wavelets per
    plane on the same data.

    The random shifts of the cycle spinning move the PSNR after 30 iterations by ±0.2 dB, so
    means over the seeds 0–11 are compared (0.24 s a run): 3D 31.83 ± 0.17 dB, 2D per plane
    31.67 ± 0.12 dB (mean ± sd of one run), BART (its own fixed shifts) 31.91. Tolerances: our
    3D mean within 0.15 dB of BART's one run (measured −0.08: at BART's level, not above it on
    this phantom; the 2D mean, −0.24, fails it: the test sees 3D switched off), and 3D above 2D
    by 0.08 dB (measured +0.16; the std of that difference of 12-run means is 0.06).
    """
    k, mask, csm, ref = volume["k"], volume["mask"], volume["csm"], volume["ref"]
    x_bart, bart_scale = _bart_pics(k, csm, iterations=30)
    planes = ifftc(torch.from_numpy(k), 1).permute(3, 0, 1, 2).contiguous()
    maps = torch.from_numpy(csm).permute(3, 0, 1, 2).contiguous()
    problem = ReconProblem(
        planes, torch.from_numpy(mask), maps, data_scale=bart_scale,
        volume=torch.ones(N, dtype=torch.bool),
    )  # fmt: skip

    def l1(**settings: object) -> float:
        vals = []
        for seed in range(12):
            res = get_method("l1")(problem, {"lam": LAM, "seed": seed, **settings})
            vals.append(psnr(res.image.permute(1, 2, 0).numpy(), ref))
        return float(np.mean(vals))

    p_bart, p_3d, p_2d = psnr(x_bart, ref), l1(), l1(volume_wavelet=False)
    print(f"PSNR bart {p_bart:.2f}, ours 3D wavelets {p_3d:.2f}, 2D per plane {p_2d:.2f} dB")
    assert p_3d >= p_bart - 0.15
    assert p_3d > p_2d + 0.08
