"""NetworkPrior: the ScorePrior protocol, padding to any size, complex ↔ channels, magnitude mode."""

from __future__ import annotations

import pytest
import torch

from mrprior.priors.base import ScorePrior
from mrprior.priors.network import NetworkPrior, smooth_phase
from mrprior.priors.unet import EDMDenoiser, UNetConfig


def small(channels: int, seed: int = 0) -> NetworkPrior:
    torch.manual_seed(seed)
    cfg = UNetConfig(
        in_channels=channels,
        channels=[8, 16, 16],
        blocks_per_level=1,
        emb_dim=16,
        fourier_features=4,
    )
    model = EDMDenoiser(cfg)
    with torch.no_grad():  # zero-initialized output layers: randomize to exercise the network
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return NetworkPrior(model, 0.003, 1.2)


@pytest.mark.parametrize("shape", [(2, 37, 45), (1, 8, 8), (3, 20, 33)])
def test_any_size_and_protocol(shape: tuple[int, int, int]) -> None:
    prior = small(2)
    assert isinstance(prior, ScorePrior) and prior.size_multiple == 4
    x = torch.randn(shape, dtype=torch.complex64)
    d = prior.denoise(x, 0.2)
    assert d.shape == x.shape and d.dtype == torch.complex64
    # odd sizes: the network runs on the zero-padded image (centred) and is cropped back
    m = prior.size_multiple
    b, h, w = shape
    ph, pw = (-h) % m, (-w) % m
    xr = torch.stack([x.real, x.imag], dim=1)
    xp = torch.nn.functional.pad(xr, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    sd, s = prior.model.cfg.sigma_data, torch.tensor(0.2)
    c_in, c_skip = 1 / (s**2 + sd**2).sqrt(), sd**2 / (s**2 + sd**2)
    c_out = s * sd / (s**2 + sd**2).sqrt()
    f = prior.model.net(c_in * xp, torch.full((b,), s.log() / 4))
    ref = c_skip * xr + c_out * f[:, :, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
    torch.testing.assert_close(torch.view_as_real(d).permute(0, 3, 1, 2), ref)


def test_score_is_tweedie_and_sigma_per_batch() -> None:
    prior = small(2)
    x = torch.randn(2, 16, 16, dtype=torch.complex64)
    s = torch.tensor([0.1, 0.5])
    d = prior.denoise(x, s)
    torch.testing.assert_close(prior.score(x, s), (d - x) / (s**2)[:, None, None])
    # per-item σ is honoured: item 1 alone at 0.5 equals item 1 of the batch
    torch.testing.assert_close(prior.denoise(x[1:], 0.5), d[1:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        prior.denoise(x, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError):
        prior.denoise(x[0], 0.1)


def test_complex_prior_is_channel_pair() -> None:
    prior = small(2)
    x = torch.randn(1, 12, 12, dtype=torch.complex64)
    d = prior.denoise(x, 0.3)
    xr = torch.stack([x.real, x.imag], dim=1)
    ref = prior.model(xr, torch.tensor([0.3]))
    torch.testing.assert_close(torch.view_as_real(d).permute(0, 3, 1, 2), ref)


def test_magnitude_prior_keeps_phase() -> None:
    prior = small(1)
    prior.magnitude_mode = "keep-phase"
    mag = torch.rand(2, 16, 16) + 0.1
    phase = torch.rand(2, 16, 16) * 6 - 3
    x = torch.polar(mag, phase)
    d = prior.denoise(x, 0.2)
    ref = prior.model(mag[:, None], torch.tensor([0.2, 0.2]))[:, 0].clamp_min(0)
    torch.testing.assert_close(d.abs(), ref, atol=1e-5, rtol=1e-5)
    keep = ref > 1e-3
    torch.testing.assert_close(torch.angle(d)[keep], phase[keep], atol=1e-4, rtol=1e-4)


def test_magnitude_prior_phase_corrected() -> None:
    """Default mode: a smooth phase is estimated and removed, the network denoises the real
    part, the phase is put back; for a positive image times a slowly varying phase the
    estimate matches that phase."""
    prior = small(1)
    assert prior.magnitude_mode == "phase-corrected"
    n = 32
    mag = torch.rand(1, n, n) + 0.5
    yy = torch.arange(n)[:, None].expand(n, n)
    # a constant phase is recovered exactly (the Gaussian low-pass of a positive image is
    # positive), a slowly varying periodic one closely
    x0 = torch.polar(mag, torch.full_like(mag, 2.5))
    torch.testing.assert_close(torch.angle(smooth_phase(x0)), torch.full_like(mag, 2.5))
    phase = 0.3 + 0.5 * torch.cos(2 * torch.pi * yy / n)  # 1 cycle per field of view
    x = torch.polar(mag, phase[None].float())
    unit = smooth_phase(x)
    err = torch.angle(unit * x.conj()).abs()
    assert float(err.max()) < 0.15, float(err.max())
    d = prior.denoise(x, 0.2)
    ref = prior.model((x * unit.conj()).real[:, None], torch.tensor([0.2]))[:, 0]
    torch.testing.assert_close(d, ref.to(torch.complex64) * unit, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="magnitude_mode"):
        NetworkPrior(prior.model, 0.003, 1.2, magnitude_mode="rician")


def test_untrained_denoiser_shrinks_at_large_sigma() -> None:
    # F_θ starts at zero, so D = c_skip·x: already better than the identity on pure noise
    cfg = UNetConfig(in_channels=2, channels=[8, 16], blocks_per_level=1, emb_dim=16)
    prior = NetworkPrior(EDMDenoiser(cfg), 0.003, 1.2)
    clean = torch.zeros(1, 16, 16, dtype=torch.complex64)
    noisy = clean + torch.randn(1, 16, 16, dtype=torch.complex64)
    err_d = (prior.denoise(noisy, 1.0) - clean).abs().square().mean()
    assert err_d < 0.5 * (noisy - clean).abs().square().mean()


@pytest.mark.parametrize("channels", [2, 1])
def test_bf16_copy_equals_autocast(channels: int) -> None:
    """bf16 on a CPU runs a copy with bf16 weights: the same numbers as the network under
    autocast, one image at a time and as a batch; remade when the weights change."""
    prior = small(channels)
    prior.precision = "bf16"  # forced: the same on CPUs without native bf16
    x = torch.randn(3, 20, 24, dtype=torch.complex64, generator=torch.Generator().manual_seed(2))
    xr = torch.randn(3, channels, 20, 24).contiguous(memory_format=torch.channels_last)
    sig = torch.tensor([0.05, 0.2, 0.8])

    def autocast(inp: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return prior.model(inp, s).float()

    for sl in (slice(0, 1), slice(None)):
        torch.testing.assert_close(prior._run(xr[sl], sig[sl]), autocast(xr[sl], sig[sl]))
    d = prior.denoise(x[:1], 0.1)
    with torch.no_grad():  # the copy differs from float32 by bf16 rounding only
        prior.precision = "fp32"
        ref = prior.denoise(x[:1], 0.1)
        prior.precision = "bf16"
    assert 0 < float((d - ref).abs().max()) < 0.05 * float(ref.abs().max())
    with torch.no_grad():  # weights changed in place (training, loading): a new copy
        for p in prior.model.parameters():
            p.mul_(0.5)
    torch.testing.assert_close(prior._run(xr[:1], sig[:1]), autocast(xr[:1], sig[:1]))
    assert prior.model.net.conv_in.weight.dtype == torch.float32  # the original is untouched
