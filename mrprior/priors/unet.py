"""A fully convolutional, noise-conditioned U-Net denoiser with EDM preconditioning.

The network ``F_θ`` is wrapped as in Karras et al. (2022, "Elucidating the design space of
diffusion-based generative models", EDM):

.. math::

    D_θ(x, σ) = c_\\text{skip}(σ)\\, x + c_\\text{out}(σ)\\, F_θ\\big(c_\\text{in}(σ)\\, x,\\;
    c_\\text{noise}(σ)\\big),

with ``c_skip = σ_d²/(σ²+σ_d²)``, ``c_out = σ σ_d/√(σ²+σ_d²)``, ``c_in = 1/√(σ²+σ_d²)`` and
``c_noise = log(σ)/4``. ``σ`` is the standard deviation of the Gaussian noise on **each real
channel** (for a complex image: on the real and on the imaginary part), so the score is
``(D − x)/σ²``. ``c_noise`` enters every residual block through a Fourier-feature embedding.

Any input size works: the input is zero-padded to a multiple of ``2**(levels-1)`` and the output
cropped back (MR backgrounds are zero, so zero padding adds no edges inside the field of view).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EDMDenoiser",
    "NearestUpConv",
    "UNet",
    "UNetConfig",
    "inference_copy",
    "nearest_upsample_weight",
]


@dataclass
class UNetConfig:
    """Architecture hyper-parameters (stored in every prior card)."""

    #: 2 for complex (real, imag), 1 for magnitude images
    in_channels: int = 2
    #: feature channels per resolution level (one down-sampling between levels)
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
    #: residual blocks per level in the encoder (the decoder has one more per level)
    blocks_per_level: int = 2
    #: number of Fourier frequencies of the noise embedding
    fourier_features: int = 16
    #: width of the noise embedding vector fed to every block
    emb_dim: int = 128
    #: GroupNorm groups (clamped to divide the channel count)
    groups: int = 8
    #: data standard deviation assumed by the EDM preconditioning
    sigma_data: float = 0.5

    def validate(self) -> None:
        from mrprior.errors import ConfigError

        if self.in_channels not in (1, 2):
            raise ConfigError(f"in_channels: {self.in_channels} must be 1 or 2")
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"channels: {self.channels} must be a non-empty list of ≥ 1")
        if self.blocks_per_level < 1 or self.fourier_features < 1 or self.emb_dim < 1:
            raise ConfigError("blocks_per_level, fourier_features and emb_dim must be ≥ 1")
        if self.sigma_data <= 0:
            raise ConfigError(f"sigma_data: {self.sigma_data} must be > 0")

    @property
    def size_multiple(self) -> int:
        """Spatial sizes the bare network accepts are multiples of this number."""
        return 2 ** (len(self.channels) - 1)


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    g = math.gcd(ch, groups) or 1
    return nn.GroupNorm(g, ch, eps=1e-6)


class FourierEmbedding(nn.Module):
    """Sinusoidal features of a scalar at fixed, geometrically spaced frequencies."""

    def __init__(self, n: int) -> None:
        super().__init__()
        # fixed, deterministic frequencies 1 … 2^6 (rad per unit of c_noise); not a parameter,
        # not saved: they follow from ``n`` alone
        freqs = 2 * math.pi * torch.logspace(0, 6, n, base=2.0)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t[:, None] * self.freqs[None, :].to(t.dtype)
        return torch.cat([arg.cos(), arg.sin()], dim=1)


def nearest_upsample_weight(weight: torch.Tensor) -> torch.Tensor:
    """The transposed-convolution kernel of a 3×3 convolution after ×2 nearest upsampling.

    ``conv3×3(up2(x), w)`` (padding 1) equals ``conv_transpose(x, k, stride 2, padding 1)``
    with the 4×4 kernel whose taps along each axis are ``(w₂, w₁ + w₂, w₀ + w₁, w₀)``: each
    output pixel of a phase sees only a 2×2 neighbourhood of the low-resolution input, so this
    costs 16/36 of the multiplications of convolving the upsampled image.

    Parameters
    ----------
    weight : ``[C_out, C_in, 3, 3]`` convolution weight.

    Returns
    -------
    ``[C_in, C_out, 4, 4]`` weight for :func:`torch.nn.functional.conv_transpose2d`.
    """

    def taps(w: torch.Tensor, dim: int) -> torch.Tensor:
        w0, w1, w2 = w.unbind(dim)
        return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)

    return taps(taps(weight, 2), 3).transpose(0, 1)


class NearestUpConv(nn.Conv2d):
    """×2 nearest-neighbour upsampling followed by a 3×3 convolution (padding 1), computed as
    one stride-2 transposed convolution (:func:`nearest_upsample_weight`, 2.25× fewer
    multiplications). Parameters and ``state_dict`` are those of the ``nn.Conv2d``.

    ``kernel``: the transposed kernel computed once (set by :func:`inference_copy`, not saved);
    ``None`` (default): derived from ``weight`` at every call, as training needs.
    """

    kernel: torch.Tensor | None

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1)
        self.register_buffer("kernel", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = nearest_upsample_weight(self.weight) if self.kernel is None else self.kernel
        return F.conv_transpose2d(x, k, self.bias, stride=2, padding=1)


def modulated_norm(
    norm: nn.GroupNorm, h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``norm(h) · (1 + scale) + shift`` with a per-image ``scale``, ``shift`` ``[B, C]``.

    For a single image (``B = 1``, how a CPU runs the network) the modulation is folded into
    the GroupNorm's per-channel affine, ``γ' = γ(1 + scale)``, ``β' = β(1 + scale) + shift``
    (in float32): one pass over ``h`` instead of three, and under bf16 one rounding instead of
    three. Batches take the three-pass form (the affine is shared by the images of a batch).
    """
    if h.shape[0] == 1:
        s = 1 + scale[0].float()
        weight = norm.weight * s
        bias = torch.addcmul(shift[0].float(), norm.bias, s)
        return F.group_norm(h, norm.num_groups, weight, bias, norm.eps)
    return norm(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv → (scale, shift from the embedding) → GroupNorm → SiLU → conv."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # SiLU in place on tensors made here (the normalized copies): no new buffer
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        scale, shift = self.emb(emb).chunk(2, dim=1)
        h = modulated_norm(self.norm2, h, scale, shift)
        h = self.conv2(F.silu(h, inplace=True))
        return self.skip(x) + h


class UNet(nn.Module):
    """The raw network ``F_θ(x, c_noise)``: ``[B, C, H, W]`` → ``[B, C, H, W]``.

    ``H`` and ``W`` must be multiples of :attr:`UNetConfig.size_multiple`.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch, g, e = cfg.channels, cfg.groups, cfg.emb_dim
        self.embed = FourierEmbedding(cfg.fourier_features)
        self.emb_mlp = nn.Sequential(
            nn.Linear(2 * cfg.fourier_features, e), nn.SiLU(), nn.Linear(e, e), nn.SiLU()
        )
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skips = [ch[0]]
        cur = ch[0]
        for i, c in enumerate(ch):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks_per_level):
                blocks.append(ResBlock(cur, c, e, g))
                cur = c
                skips.append(cur)
            self.down_blocks.append(blocks)
            if i < len(ch) - 1:
                self.downsamplers.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
        self.mid = nn.ModuleList([ResBlock(cur, cur, e, g), ResBlock(cur, cur, e, g)])
        self.up_blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i, c in reversed(list(enumerate(ch))):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks_per_level + 1):
                blocks.append(ResBlock(cur + skips.pop(), c, e, g))
                cur = c
            self.up_blocks.append(blocks)
            if i > 0:
                self.upsamplers.append(NearestUpConv(cur, cur))
        self.norm_out = _norm(cur, g)
        self.conv_out = nn.Conv2d(cur, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        # a copy with low-precision weights (:func:`inference_copy`) computes in their dtype;
        # float32 weights (also under autocast): no-op casts
        dtype = self.conv_in.weight.dtype
        emb = self.emb_mlp(self.embed(c_noise).to(dtype))
        h = self.conv_in(x.to(dtype))
        hs = [h]
        for i, blocks in enumerate(self.down_blocks):
            for blk in blocks:
                h = blk(h, emb)
                hs.append(h)
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)
                hs.append(h)
        for blk in self.mid:
            h = blk(h, emb)
        for j, blocks in enumerate(self.up_blocks):
            for blk in blocks:
                h = blk(torch.cat([h, hs.pop()], dim=1), emb)
            if j < len(self.upsamplers):
                h = self.upsamplers[j](h)  # ×2 nearest upsampling + 3×3 conv
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


class EDMDenoiser(nn.Module):
    """``D_θ(x, σ)`` on real channels ``[B, C, H, W]`` of any size (padded, then cropped).

    ``sigma`` is a float or a ``[B]`` tensor: the noise standard deviation per real channel.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.net = UNet(cfg)

    @property
    def size_multiple(self) -> int:
        return self.cfg.size_multiple

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"EDMDenoiser expects [B, {self.cfg.in_channels}, H, W] real input, got {x.shape=}"
            )
        b, _, h, w = x.shape
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(b)
        if sigma.numel() != b:
            raise ValueError(f"sigma must be a scalar or [B={b}], got {sigma.shape=}")
        sd = self.cfg.sigma_data
        s = sigma[:, None, None, None]
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        xin = c_in * x
        if ph or pw:
            xin = F.pad(xin, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        f = self.net(xin, c_noise)
        if ph or pw:
            f = f[:, :, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        return c_skip * x + c_out * f


def inference_copy(model: EDMDenoiser, dtype: torch.dtype) -> EDMDenoiser:
    """A frozen copy of ``model`` that computes in ``dtype`` (bf16) without autocast.

    The convolutions' and linear layers' weights are cast once (autocast casts them at every
    call) and the upsamplers' transposed kernels are computed once in float32 and then cast, as
    autocast computes them; GroupNorm keeps its float32 affine and statistics, the EDM
    preconditioning and the output stay float32. The arithmetic is that of the original under
    ``torch.autocast(dtype=dtype)`` (tested equal), without autocast's per-op dispatch and
    weight casts.
    """
    net = copy.deepcopy(model).eval().requires_grad_(False)
    for mod in net.modules():
        if isinstance(mod, NearestUpConv):
            mod.kernel = nearest_upsample_weight(mod.weight.float()).to(dtype)
        if isinstance(mod, nn.Conv2d | nn.Linear):
            mod.to(dtype)
    return net
