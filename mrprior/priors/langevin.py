"""Phase from a complex prior: magnitude-consistent annealed Langevin sampling.

The published way to train complex priors from magnitude-only databases (Luo, Jiang & Zhang,
MRM 2023, "Bayesian MRI reconstruction with joint uncertainty estimation using diffusion
models") samples, for each magnitude image ``y``, complex images ``x`` with ``|x| ≈ y`` from an
existing complex prior. Over decreasing noise levels ``σ_1 > … > σ_L`` and ``K`` steps each,

.. math::

    x ← x − η\\,(|x| − y)\\,\\frac{x}{|x|} + α\\, s_θ(x, σ) + \\sqrt{2α}\\, z,
    \\qquad α = τ σ², \\quad z \\sim \\mathcal{CN}(0, 2I)\\ (\\text{std 1 per real part}),

where ``(|x| − y) x/|x| = ½∇‖|x| − y‖²`` (so ``η = 1`` projects onto ``|x| = y`` in one step) and
``α s_θ = τ (D(x, σ) − x)``. The result is finally projected onto ``|x| = y`` exactly, so only the
phase comes from the prior. Each seed gives an independent phase draw.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from mrprior.priors.base import ScorePrior

logger = logging.getLogger(__name__)

__all__ = ["add_langevin_phase", "langevin_phase"]


def langevin_phase(
    magnitude: torch.Tensor,
    prior: ScorePrior,
    sigmas: Any = None,
    steps_per_sigma: int = 3,
    eta: float = 0.5,
    tau: float = 0.3,
    seed: int = 0,
) -> torch.Tensor:
    """Sample complex images whose magnitude equals ``magnitude``, phase from ``prior``.

    Parameters
    ----------
    magnitude
        ``[B, H, W]`` non-negative real images (any scale: each is scaled to max 1 for the prior
        and back).
    prior
        a complex (2-channel) :class:`~mrprior.priors.base.ScorePrior`.
    sigmas
        decreasing noise levels; default 20 levels geometric from ``prior.sigma_max`` (at most 1)
        to ``max(prior.sigma_min, 0.01)``.
    steps_per_sigma
        Langevin steps per level.
    eta
        magnitude-consistency step (0 < η ≤ 1).
    tau
        score step relative to σ² (α = τσ²; 0 < τ ≤ 0.5 keeps the update a contraction toward D).
    seed
        seed of the initial phase and of the Langevin noise.

    Returns
    -------
    complex64 ``[B, H, W]`` with ``|x| == magnitude`` (to float32 rounding).
    """
    if magnitude.ndim != 3 or magnitude.is_complex():
        raise ValueError(
            f"magnitude must be real [B, H, W], got {magnitude.shape=} {magnitude.dtype}"
        )
    if getattr(prior, "channels", 2) != 2:
        raise ValueError("langevin_phase needs a complex (2-channel) prior")
    if not (0 < eta <= 1 and 0 < tau <= 0.5 and steps_per_sigma >= 1):
        raise ValueError(
            f"need 0 < eta ≤ 1, 0 < tau ≤ 0.5, steps ≥ 1: {eta=}, {tau=}, {steps_per_sigma=}"
        )
    device = getattr(prior, "device", magnitude.device)
    y = magnitude.to(device, torch.float32).clamp_min(0)
    scale = y.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    y = y / scale
    if sigmas is None:
        hi = min(float(prior.sigma_max), 1.0)
        lo = max(float(prior.sigma_min), 0.01)
        sigmas = np.geomspace(hi, lo, 20)
    sigmas = [float(s) for s in sigmas]
    if any(b >= a for a, b in itertools.pairwise(sigmas)) or min(sigmas) <= 0:
        raise ValueError(f"sigmas must be positive and strictly decreasing: {sigmas}")
    gen = torch.Generator().manual_seed(int(seed))

    def cnoise(shape: torch.Size) -> torch.Tensor:
        re = torch.randn(shape, generator=gen)
        im = torch.randn(shape, generator=gen)
        return torch.complex(re, im).to(device)

    b = y.shape[0]
    phi0 = (torch.rand(b, 1, 1, generator=gen) * 2 - 1).to(device) * torch.pi
    x = torch.polar(y, phi0.expand_as(y)) + sigmas[0] * cnoise(y.shape)
    for s in sigmas:
        alpha = tau * s * s
        for _ in range(steps_per_sigma):
            mag = x.abs()
            unit = x / mag.clamp_min(1e-12)
            x = x - eta * (mag - y) * unit
            x = x + alpha * prior.score(x, s) + (2 * alpha) ** 0.5 * cnoise(y.shape)
    mag = x.abs()
    unit = torch.where(mag > 1e-12, x / mag.clamp_min(1e-12), torch.ones_like(x))
    return (y * unit * scale).to(torch.complex64)


def add_langevin_phase(
    dataset: Path,
    prior: ScorePrior,
    *,
    draws: int = 1,
    steps_per_sigma: int = 3,
    batch_size: int = 4,
    seed: int = 0,
    progress: bool = True,
    **kwargs: Any,
) -> int:
    """Replace the magnitude slices of a dataset by ``draws`` complex Langevin samples each.

    Rewrites ``dataset/slices.h5`` with ``images_complex`` ``[N·draws, S, S]`` and the index
    arrays (volume, axis, slice, split) repeated, so the subject split is unchanged; updates the
    manifest. Returns the number of complex images.
    """
    from tqdm import tqdm

    from mrprior.priors.prepare import read_manifest, write_manifest

    path = Path(dataset) / "slices.h5"
    with h5py.File(path, "r") as f:
        if "images" not in f:
            raise ValueError(f"{path} holds no magnitude images")
        mags = f["images"][:].astype(np.float32) * float(f["images"].attrs.get("scale", 1.0))
        cols = {k: f[k][:] for k in ("volume", "axis", "slice", "split")}
        attrs = dict(f.attrs)
    n, s = mags.shape[0], mags.shape[1]
    tmp = path.with_name("slices.h5.tmp")
    with h5py.File(tmp, "w") as f:
        out = f.create_dataset(
            "images_complex", (n * draws, s, s), dtype=np.complex64, chunks=(1, s, s)
        )
        bar = tqdm(total=n * draws, desc="langevin phase", unit="img", disable=not progress)
        for d in range(draws):
            for i0 in range(0, n, batch_size):
                mb = torch.from_numpy(mags[i0 : i0 + batch_size])
                z = langevin_phase(
                    mb,
                    prior,
                    steps_per_sigma=steps_per_sigma,
                    seed=seed * 1000003 + d * 7919 + i0,
                    **kwargs,
                )
                out[d * n + i0 : d * n + i0 + mb.shape[0]] = z.cpu().numpy()
                bar.update(mb.shape[0])
        bar.close()
        for k, v in cols.items():
            f.create_dataset(k, data=np.tile(v, draws))
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["phase"] = json.dumps(
            {"method": "langevin", "draws": draws, "prior": getattr(prior, "name", "?")}
        )
    tmp.replace(path)
    manifest = read_manifest(dataset)
    manifest["kind"] = "complex"
    manifest["phase"] = {
        "method": "langevin",
        "draws": draws,
        "steps_per_sigma": steps_per_sigma,
        "prior": getattr(prior, "name", None),
        "prior_card_sha256": (getattr(prior, "card", {}) or {}).get("weights", {}).get("sha256"),
        "seed": seed,
    }
    c = manifest.get("counts", {})
    manifest["counts"] = {k: int(v) * draws for k, v in c.items()}
    write_manifest(Path(dataset) / "manifest.yaml", manifest)
    return n * draws
