"""Augmentation made for training on a few subjects: geometry, contrast and resolution.

A few real scans give few anatomies, one contrast each and one resolution. This module turns one
slice into a plausible *other* image, on top of the random crop / flips / rot90 / intensity scale
and the synthetic phase of :mod:`mrprior.priors.dataset`:

* **geometry** in one resampling pass: crops at several scales (the field of view shrinks or
  grows by a factor drawn log-uniformly from ``zoom``), a small affine map (rotation, anisotropic
  scale, shear) and a smooth elastic displacement (a coarse random grid, cubic-upsampled);
  bilinear sampling after a Gaussian anti-aliasing filter when the image is shrunk;
* **contrast** (magnitude images only): a gamma curve, a smooth multiplicative bias field (the
  receive-coil shading of real scans), and a contrast inversion inside the object that turns a
  T1-like image into a T2/PD/FLAIR-like one (bright fluid, dark white matter, background kept
  dark);
* **resolution**: a lower acquired resolution, simulated the way a scanner gets it, by keeping
  only the centre of k-space along one or both axes (with the Gibbs ringing that comes with it).

Every draw comes from the ``numpy.random.Generator`` passed in, so a sample is a pure function of
its seed (what the resumable training stream needs). numpy + scipy on the CPU, about a millisecond
per 128² sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mrprior.errors import ConfigError


@dataclass
class FewSubjectsConfig:
    """Switches and ranges of :func:`augment_slice` (``augment.few_subjects`` in a train YAML)."""

    #: off by default: the shipped runs' streams stay exactly as they were
    enabled: bool = False
    #: field-of-view zoom of the crop (log-uniform): 0.75 = a 25 % smaller window (magnified
    #: anatomy), 1.6 = a larger window (more anatomy, shrunk); clipped to what the slice holds
    zoom: list[float] = field(default_factory=lambda: [0.75, 1.6])
    p_affine: float = 0.6
    #: maximal rotation (degrees), relative scale change and shear of the affine map
    rotate_deg: float = 12.0
    scale: float = 0.12
    shear: float = 0.08
    p_elastic: float = 0.4
    #: elastic displacement: std in output pixels and number of control points per side
    elastic_pixels: float = 2.5
    elastic_grid: int = 5
    p_gamma: float = 0.5
    #: gamma drawn log-uniformly from this range
    gamma: list[float] = field(default_factory=lambda: [0.6, 1.7])
    p_bias: float = 0.5
    #: std of the log bias field (0.3 ≈ ±35 % shading)
    bias_strength: float = 0.3
    #: control points per side of the bias field (smoothness)
    bias_grid: int = 4
    p_invert: float = 0.2
    p_resolution: float = 0.25
    #: fraction of k-space kept along an axis (uniform in this range)
    resolution: list[float] = field(default_factory=lambda: [0.35, 0.9])

    def validate(self) -> None:
        for name in ("p_affine", "p_elastic", "p_gamma", "p_bias", "p_invert", "p_resolution"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ConfigError(f"augment.few_subjects.{name}: {v} must be in [0, 1]")
        for name, lo in (("zoom", 1e-3), ("gamma", 1e-3), ("resolution", 1e-3)):
            r = getattr(self, name)
            if len(r) != 2 or not lo <= r[0] <= r[1]:
                raise ConfigError(f"augment.few_subjects.{name}: {r} must be [low, high], low > 0")
        if self.resolution[1] > 1:
            raise ConfigError("augment.few_subjects.resolution: fractions must be ≤ 1")
        if self.elastic_grid < 2 or self.bias_grid < 2:
            raise ConfigError("augment.few_subjects: elastic_grid and bias_grid must be ≥ 2")
        if min(self.rotate_deg, self.scale, self.shear, self.elastic_pixels) < 0:
            raise ConfigError("augment.few_subjects: rotate_deg, scale, shear must be ≥ 0")
        if not 0 <= self.scale < 0.5 or self.bias_strength < 0:
            raise ConfigError("augment.few_subjects: scale must be in [0, 0.5), bias ≥ 0")


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], grid: int) -> np.ndarray:
    """A smooth random field of unit-order amplitude: ``grid×grid`` normals, cubic-upsampled."""
    coarse = rng.standard_normal((grid, grid))
    zoom = (shape[0] / grid, shape[1] / grid)
    f = ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)
    return f[: shape[0], : shape[1]].astype(np.float32)


def sample_geometry(
    img: np.ndarray, out: int, rng: np.random.Generator, cfg: FewSubjectsConfig
) -> np.ndarray:
    """Crop at a random scale, with an optional affine map and elastic warp, to ``out × out``.

    Works on real or complex slices; the window may reach past the slice (zeros there).
    """
    h, w = img.shape
    zoom = _log_uniform(rng, *cfg.zoom)
    step = min(zoom, min(h, w) / out)  # source pixels per output pixel
    half = out * step / 2
    cy = rng.uniform(min(half, h / 2), max(h - half, h / 2))
    cx = rng.uniform(min(half, w / 2), max(w - half, w / 2))
    a = np.eye(2)
    if rng.random() < cfg.p_affine:
        t = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        sc = np.diag(1 + rng.uniform(-cfg.scale, cfg.scale, 2))
        sh = np.array([[1, rng.uniform(-cfg.shear, cfg.shear)], [0, 1]])
        a = rot @ sc @ sh
    r = (np.arange(out, dtype=np.float64) - (out - 1) / 2) * step
    yy, xx = np.meshgrid(r, r, indexing="ij")
    coords = np.einsum("ij,jhw->ihw", a, np.stack([yy, xx]))
    coords[0] += cy - 0.5
    coords[1] += cx - 0.5
    if rng.random() < cfg.p_elastic:
        for k in range(2):
            coords[k] += cfg.elastic_pixels * step * smooth_field(rng, (out, out), cfg.elastic_grid)
    src = img
    sigma = 0.45 * (step * float(np.sqrt(abs(np.linalg.det(a)))) - 1)
    if sigma > 0.05:  # anti-aliasing when the image is shrunk
        if np.iscomplexobj(src):
            src = ndimage.gaussian_filter(src.real, sigma) + 1j * ndimage.gaussian_filter(
                src.imag, sigma
            )
        else:
            src = ndimage.gaussian_filter(src, sigma)

    def warp(x: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(x, coords, order=1, mode="constant", cval=0.0)

    if np.iscomplexobj(src):
        return (warp(src.real) + 1j * warp(src.imag)).astype(np.complex64)
    return np.clip(warp(src), 0, None).astype(np.float32)


def remap_contrast(x: np.ndarray, rng: np.random.Generator, cfg: FewSubjectsConfig) -> np.ndarray:
    """Gamma, bias field and contrast inversion of a magnitude slice; returns max 1 (or zeros)."""
    m = float(x.max())
    if m <= 0:
        return x
    y = x / m
    if rng.random() < cfg.p_invert:
        # object support: the thresholded image, closed and smoothed, so the background stays dark
        support = ndimage.gaussian_filter((y > 0.08).astype(np.float32), 2.0)
        support = np.clip(1.5 * support, 0, 1)
        mix = rng.uniform(0.6, 1.0)
        y = (1 - mix) * y + mix * support * (1 - y) ** _log_uniform(rng, 0.7, 1.5)
    if rng.random() < cfg.p_gamma:
        y = np.power(np.clip(y, 0, None), _log_uniform(rng, *cfg.gamma))
    if rng.random() < cfg.p_bias:
        b = smooth_field(rng, y.shape, cfg.bias_grid)
        y = y * np.exp(cfg.bias_strength * b / max(float(b.std()), 1e-6))
    m = float(y.max())
    return (y / m).astype(np.float32) if m > 0 else y.astype(np.float32)


def lower_resolution(x: np.ndarray, rng: np.random.Generator, cfg: FewSubjectsConfig) -> np.ndarray:
    """Keep a centred fraction of k-space along one or both axes (magnitude in → magnitude out)."""
    axes = [(0,), (1,), (0, 1)][int(rng.integers(0, 3))]
    k = np.fft.fftshift(np.fft.fft2(x))
    mask = np.ones(x.shape, bool)
    for ax in axes:
        n = x.shape[ax]
        keep = max(2, round(n * rng.uniform(*cfg.resolution)))
        lo = (n - keep) // 2
        sel = np.zeros(n, bool)
        sel[lo : lo + keep] = True
        mask &= sel[:, None] if ax == 0 else sel[None, :]
    y = np.fft.ifft2(np.fft.ifftshift(np.where(mask, k, 0)))
    if np.iscomplexobj(x):
        return y.astype(np.complex64)
    return np.abs(y).astype(np.float32)


def augment_slice(
    img: np.ndarray, out: int, rng: np.random.Generator, cfg: FewSubjectsConfig
) -> np.ndarray:
    """Geometry → contrast (magnitude only) → resolution: one ``out × out`` image.

    Parameters
    ----------
    img
        a slice ``[H, W]``, float32 magnitude (max 1) or complex64.
    out
        output side (pixels).
    rng
        the sample's generator (all draws come from it).
    cfg
        ranges and probabilities.

    Returns
    -------
    np.ndarray
        float32 ``[out, out]`` in ``[0, 1]`` with max 1 (unless empty), or complex64.
    """
    if img.ndim != 2:
        raise ValueError(f"augment_slice expects a 2D slice, got {img.shape=}")
    x = sample_geometry(img, out, rng, cfg)
    if not np.iscomplexobj(x):
        x = remap_contrast(x, rng, cfg)
    if rng.random() < cfg.p_resolution:
        x = lower_resolution(x, rng, cfg)
    if np.iscomplexobj(x):
        return x.astype(np.complex64)
    m = float(x.max())
    return (x / m).astype(np.float32) if m > 0 else x.astype(np.float32)
