""":class:`NetworkPrior`: a trained :class:`~mrprior.priors.unet.EDMDenoiser` as a ScorePrior.

Complex images ``[B, H, W]`` (complex64, scaled by the caller to ``max|x| = 1``) cross into the
network as two real channels (real, imag). ``σ`` is the noise standard deviation of each real
component, so complex noise of level σ has ``E|n|² = 2σ²`` and the score is ``(D − x)/σ²``.

A **magnitude** prior (1 channel) applied to complex input has two modes:

* ``phase-corrected`` (default): estimate a smooth phase ``φ`` (:func:`smooth_phase`), denoise
  the real part of ``x e^{−iφ}`` with the network and return ``D_mag(Re(x e^{−iφ}), σ) e^{iφ}``
  (the imaginary residual is treated as noise). Re of a phase-corrected image carries Gaussian
  noise of std σ, which is what the network was trained on;
* ``keep-phase``: ``D_mag(|x|, σ) · x/|x|``. ``|x|`` of a noisy complex image is Rician-biased
  (about 1.25σ in the background), which the network never saw, and the phase stays noisy.

Either way a magnitude model cannot represent the phase (it is only estimated as smooth) — the
reason a complex prior should do better on complex data (measured in
``benchmarks/bench_prior_denoise.py`` and ``mrprior bench``). The phase-corrected mode is
the fairer comparison: on 24 held-out complex images at σ = 0.1 it reaches 34.8 dB (magnitude
PSNR) against 19.6 dB for keep-phase and 35.3 dB for the complex prior (shipped weights).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Any

import torch

from mrprior.cancellation import check_cancelled
from mrprior.priors.unet import EDMDenoiser, UNetConfig, inference_copy

__all__ = ["PRECISIONS", "NetworkPrior", "native_bf16"]

logger = logging.getLogger(__name__)

#: how a 1-channel (magnitude) network denoises a complex image
MAGNITUDE_MODES = ("phase-corrected", "keep-phase")
#: arithmetic of the network's convolutions: ``auto`` is bf16 where the device computes it
#: natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs with bf16), else fp32
PRECISIONS = ("auto", "fp32", "bf16")


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return frozenset(flags)


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 convolutions natively (then autocast is ~2× faster).

    CPU: the ``avx512_bf16`` or ``amx_bf16`` flag (x86) or ``bf16`` (aarch64) in
    ``/proc/cpuinfo``; without them oneDNN emulates bf16, which is not faster. CUDA:
    :func:`torch.cuda.is_bf16_supported`.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def smooth_phase(x: torch.Tensor, width: float = 8.0) -> torch.Tensor:
    """``exp(iφ)`` of a smooth phase estimate of complex ``x [B, H, W]``: the phase of ``x``
    low-pass filtered with a Gaussian of standard deviation ``width`` (cycles per field of
    view) in k-space, as in phase-corrected real reconstructions."""
    h, w = x.shape[-2:]
    ky = torch.fft.fftfreq(h, d=1.0 / h, device=x.device)
    kx = torch.fft.fftfreq(w, d=1.0 / w, device=x.device)
    g = torch.exp(-(ky[:, None] ** 2 + kx[None, :] ** 2) / (2 * width**2))
    return _unit_phasor(torch.fft.ifft2(torch.fft.fft2(x) * g))


def _unit_phasor(z: torch.Tensor) -> torch.Tensor:
    """``z/|z|`` (1 where ``z = 0``)."""
    mag = z.abs()
    return torch.where(mag > 0, z / mag.clamp_min(1e-30), torch.ones_like(z))


class NetworkPrior:
    """A learned score prior over complex images (implements :class:`~mrprior.priors.base.ScorePrior`).

    Parameters
    ----------
    model
        the denoiser network (``in_channels`` 2: complex prior; 1: magnitude prior).
    sigma_min, sigma_max
        the noise range the network was trained on.
    card
        the prior card (metadata) this prior was loaded from, if any.
    magnitude_mode, phase_lowpass
        how a magnitude network denoises complex images (module docstring).
    precision
        one of :data:`PRECISIONS` (default ``fp32``, exact; the reconstruction methods set
        their ``precision`` setting, ``auto`` by default: bf16 autocast where native).
    """

    def __init__(
        self,
        model: EDMDenoiser,
        sigma_min: float,
        sigma_max: float,
        card: dict[str, Any] | None = None,
        magnitude_mode: str = "phase-corrected",
        phase_lowpass: float = 8.0,
        precision: str = "fp32",
    ) -> None:
        if magnitude_mode not in MAGNITUDE_MODES:
            raise ValueError(f"magnitude_mode must be one of {MAGNITUDE_MODES}: {magnitude_mode!r}")
        self.magnitude_mode = magnitude_mode
        self.precision = precision
        self.phase_lowpass = float(phase_lowpass)
        # channels-last: the (real, imag) pair arrives interleaved, and oneDNN / cuDNN convolve
        # NHWC faster (measured ~10 % on CPU)
        self.model = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self._bf16_cache: tuple[tuple[tuple[int, int], ...], EDMDenoiser] | None = None
        self._params = list(self.model.parameters())  # walking the modules per call costs
        self.channels = int(model.cfg.in_channels)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.size_multiple = int(model.size_multiple)
        self.card: dict[str, Any] = dict(card or {})
        self.name = str(self.card.get("name", "unnamed"))

    @property
    def precision(self) -> str:
        """``"auto"``, ``"fp32"`` or ``"bf16"``: the convolutions' arithmetic (see
        :data:`PRECISIONS`); inputs, outputs and the EDM preconditioning stay float32."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}: {value!r}")
        self._precision = value

    def _bf16(self) -> bool:
        dev = self.device
        bf16 = self._precision == "bf16" or (self._precision == "auto" and native_bf16(dev))
        return bf16 and dev.type in ("cpu", "cuda")

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self._bf16():
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _bf16_model(self) -> EDMDenoiser:
        """The network with bf16 weights (:func:`~mrprior.priors.unet.inference_copy`), made
        once and remade only when the weights change (in place, ``load_state_dict``) or move
        (:meth:`to`)."""
        key = tuple((p.data_ptr(), p._version) for p in self._params)
        if self._bf16_cache is None or self._bf16_cache[0] != key:
            self._bf16_cache = (key, inference_copy(self.model, torch.bfloat16))
        return self._bf16_cache[1]

    @classmethod
    def from_config(
        cls, cfg: UNetConfig, sigma_min: float, sigma_max: float, **kw: Any
    ) -> NetworkPrior:
        """An untrained prior of the given architecture (tests, weight loading)."""
        return cls(EDMDenoiser(cfg), sigma_min, sigma_max, **kw)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> NetworkPrior:
        """Move the network to ``device`` and return ``self``."""
        self.model.to(device, memory_format=torch.channels_last)
        return self

    def __repr__(self) -> str:
        kind = "complex" if self.channels == 2 else "magnitude"
        return (
            f"NetworkPrior(name={self.name!r}, {kind}, σ∈[{self.sigma_min:g}, {self.sigma_max:g}], "
            f"size_multiple={self.size_multiple}, device={self.device})"
        )

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            raise ValueError(f"priors take a batch [B, H, W]; got {x.shape=} (add x[None])")
        if x.ndim != 3:
            raise ValueError(f"priors take complex [B, H, W]; got {x.shape=}")
        if not x.is_complex():
            x = x.to(torch.complex64)
        return x.to(self.device, torch.complex64)

    def _sigma(self, sigma: float | torch.Tensor, b: int) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32, device=self.device).reshape(-1)
        if s.numel() == 1:
            s = s.expand(b)
        if s.numel() != b:
            raise ValueError(f"sigma must be a scalar or [B={b}], got {tuple(s.shape)}")
        if bool((s <= 0).any()):
            raise ValueError("sigma must be > 0")
        return s

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """MMSE denoiser ``D(x, σ)``: complex ``[B, H, W]`` → complex ``[B, H, W]``.

        ``σ`` (scalar or ``[B]``) is the noise std of each real component; values outside
        ``[sigma_min, sigma_max]`` are used as given (the network extrapolates poorly there).
        """
        check_cancelled()
        x = self._check(x)
        s = self._sigma(sigma, x.shape[0])
        with torch.no_grad():
            if self.channels == 2:
                # [B, H, W, 2] viewed as [B, 2, H, W] is already channels-last: no copy
                xr = torch.view_as_real(x).permute(0, 3, 1, 2)
                d = self._run(xr.contiguous(memory_format=torch.channels_last), s)
                return torch.complex(d[:, 0], d[:, 1])
            if self.magnitude_mode == "keep-phase":
                d = self._run(x.abs()[:, None], s)[:, 0]
                return d.clamp_min(0).to(torch.complex64) * _unit_phasor(x)
            unit = smooth_phase(x, self.phase_lowpass)
            d = self._run((x * unit.conj()).real[:, None].contiguous(), s)[:, 0]
            return d.to(torch.complex64) * unit

    def _run(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The network on real ``[B, ch, H, W]`` in the chosen precision; float32 out.

        bf16 on a CPU runs a copy of the network with bf16 weights, the arithmetic of autocast
        without its per-op weight casts and autocast dispatch; elsewhere autocast (CUDA: not
        measured this way, no GPU was at hand).
        """
        if self._bf16() and self.device.type == "cpu":
            return self._bf16_model()(x, s).float()
        with self._autocast():
            d = self.model(x, s)
        return d.float()

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Tweedie score ``(D(x, σ) − x) / σ²`` of complex ``x [B, H, W]``."""
        x = self._check(x)
        s = self._sigma(sigma, x.shape[0])
        return (self.denoise(x, s) - x) / (s**2)[:, None, None]
