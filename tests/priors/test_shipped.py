"""The shipped priors (mrprior/priors/weights): load by name, cards complete, data policy kept."""

from __future__ import annotations

import pytest
import torch

from mrprior.priors import load
from mrprior.priors.base import ScorePrior
from mrprior.priors.cards import WEIGHTS_DIR

NAMES = [n for n in ("complex", "magnitude") if (WEIGHTS_DIR / f"{n}.yaml").exists()]
pytestmark = pytest.mark.skipif(not NAMES, reason="no shipped priors exported yet")


@pytest.mark.parametrize("name", NAMES)
def test_shipped_prior_loads_and_card_is_complete(name: str) -> None:
    prior = load(name)
    assert isinstance(prior, ScorePrior)
    assert prior.channels == (2 if name == "complex" else 1)
    card = prior.card
    assert (WEIGHTS_DIR / card["weights"]["file"]).stat().st_size <= 20 * 2**20
    assert card["training"]["command"] and card["code_version"] and card["training"]["steps"] > 0
    data = card["data"]
    assert all(s["licence"] for s in data["sources"])
    assert not any("dipy" in s["path"] for s in data["sources"])
    # ITK's example *brain* slices are BrainWeb simulations of the Colin27 anatomy (its abdomen
    # slice FatMRISlice is a real scan and may be used)
    assert not any(
        "insighttoolkit" in s["path"] and "brain" in s["path"].lower() for s in data["sources"]
    )
    # held-out (role: eval) sources are never trained on
    from mrprior.priors.sources import load_registry

    held_out = {src.subject for src in load_registry().values() if src.role == "eval"}
    assert held_out and not held_out & set(data["train_subjects"])
    # MNI152 is the held-out anatomy of the benchmarks: validation only, never trained on
    assert not any("mni" in s.lower() for s in data["train_subjects"])
    x = torch.polar(torch.rand(1, 37, 45), torch.rand(1, 37, 45))
    d = prior.denoise(x, 0.1)
    assert d.shape == x.shape and torch.isfinite(torch.view_as_real(d)).all()


@pytest.mark.skipif(set(NAMES) != {"complex", "magnitude"}, reason="needs both shipped priors")
def test_shipped_priors_learned_anatomy() -> None:
    """One Tweedie denoising step on a held-out slice (MNI152, never trained on) with synthetic
    phase and complex noise σ = 0.1 per component. The complex prior must gain well over the
    noisy input (magnitude PSNR) and beat the magnitude prior on the complex image (complex
    PSNR: phase errors count), in its phase-corrected and keep-phase uses. Measured with the
    shipped weights: noisy 18.2 dB, complex 34.2 dB (33.4 complex PSNR), magnitude
    phase-corrected 31.7 complex PSNR, keep-phase 19.8 dB; the thresholds leave a margin."""
    from mrprior.evaluation import complex_image, load_image
    from mrprior.metrics import psnr
    from mrprior.priors.network import NetworkPrior

    def complex_psnr(a: torch.Tensor, ref: torch.Tensor) -> float:
        return float(20 * torch.log10(ref.abs().max() / (a - ref).abs().pow(2).mean().sqrt()))

    img = load_image("mni152_coronal_140", 256)
    x = torch.from_numpy(complex_image(img, "synthetic", seed=5))
    g = torch.Generator().manual_seed(5)
    noise = torch.complex(torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g))
    y = (x + 0.1 * noise)[None]
    mag = load("magnitude")
    keep = NetworkPrior(mag.model, mag.sigma_min, mag.sigma_max, magnitude_mode="keep-phase")
    out = {
        "complex": load("complex").denoise(y, 0.1)[0],
        "magnitude": mag.denoise(y, 0.1)[0],
        "keep-phase": keep.denoise(y, 0.1)[0],
    }
    assert psnr(out["complex"], x) > psnr(y[0], x) + 12.0
    assert complex_psnr(out["complex"], x) > complex_psnr(out["magnitude"], x) + 1.0
    assert psnr(out["complex"], x) > psnr(out["keep-phase"], x) + 8.0
