"""Synthetic MR image phase: smooth random phase maps for turning magnitude images complex.

Real MR phase is smooth almost everywhere: a low-order background from coil phase, receiver
offsets and eddy currents, slow variations from the transmit field and tissue, and localized
off-resonance (B0) structure near air/tissue interfaces (sinuses, ear canals) whose field looks
like a smoothed magnetic dipole. :func:`synthetic_phase` draws a random map from such a model,

.. math::

    φ(r) = \\underbrace{\\sum_{i+j \\le p} c_{ij} x^i y^j}_{\\text{polynomial}}
          + \\underbrace{a_f\\, (g * n)(r)}_{\\text{smooth field}}
          + \\underbrace{\\sum_k b_k\\, G_k(r) + \\sum_l d_l\\, Δ_l(r)}_{\\text{B0 off-resonance}},

where ``x, y ∈ [−1, 1]`` are normalized coordinates, ``n`` is white noise low-pass filtered by a
Gaussian ``g`` (in k-space) and scaled to unit standard deviation, ``G_k`` are Gaussian bumps and
``Δ_l`` are regularized 2D projections of a dipole field, ``(3 cos² θ − 1) / r³``, oriented along a
random in-plane B0 direction. All random numbers come from the numpy ``rng`` (so the same seed
gives the same map on numpy and cupy); the arithmetic runs on ``xp``.

References
----------
Luo, Jiang & Zhang (2023), "Bayesian MRI reconstruction with joint uncertainty estimation using
diffusion models", MRM — trains complex priors from magnitude data with generated phase.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np
import torch

from mrprior.backend import get_xp

__all__ = ["apply_phase", "synthetic_phase"]


def _coords(shape: tuple[int, ...], xp: ModuleType) -> list[Any]:
    """Normalized coordinates ``[y, x]`` (2D) or ``[z, y, x]`` (3D), each ``shape`` float32.

    Voxels are cubic: the longest side spans ``[−1, 1]``.
    """
    s = max(shape)
    axes = [(xp.arange(n, dtype=xp.float32) - (n - 1) / 2) / max(s - 1, 1) * 2 for n in shape]
    return list(xp.meshgrid(*axes, indexing="ij"))


def _monomials(degree: int, ndim: int) -> list[tuple[int, ...]]:
    """Exponents ``(e_x, e_y[, e_z])`` of total ``degree``, ``e_x`` ascending first."""
    if ndim == 1:
        return [(degree,)]
    return [(i, *rest) for i in range(degree + 1) for rest in _monomials(degree - i, ndim - 1)]


def _polynomial(
    coords: list[Any], rng: np.random.Generator, order: int, scale: float, xp: ModuleType
) -> Any:
    """Random polynomial ``Σ_{|e|≤order} c_e x^{e_x} y^{e_y} (z^{e_z})``; the constant is uniform
    in [−π, π).

    Coefficients of total degree ``d ≥ 1`` are normal with standard deviation
    ``scale / (d · √n_d)``, ``n_d`` the number of monomials of degree ``d`` (``d + 1`` in 2D), so
    that higher orders add finer but weaker structure and the total excursion over the field of
    view is about ``scale`` radians.
    """
    # coordinates in the order x, y, (z)
    xyz = coords[::-1]
    out = xp.full(coords[0].shape, float(rng.uniform(-math.pi, math.pi)), dtype=xp.float32)
    for d in range(1, order + 1):
        terms = _monomials(d, len(xyz))
        std = scale / (d * math.sqrt(len(terms)))
        for exps in terms:
            c = float(rng.normal(0.0, std))
            term = c
            for axis, e in zip(xyz, exps, strict=True):
                term = term * (axis**e)
            out = out + term
    return out


def _smooth_field(
    shape: tuple[int, ...],
    rng: np.random.Generator,
    scale: float,
    correlation: float,
    xp: ModuleType,
) -> Any:
    """White noise low-pass filtered by a Gaussian of width ``correlation`` (fraction of FOV).

    Scaled to unit standard deviation, then by ``scale`` radians.
    """
    noise = xp.asarray(rng.standard_normal(shape).astype(np.float32))
    # Gaussian smoothing of std ``correlation·max(shape)`` voxels, applied in k-space
    sig = correlation * max(shape)
    k2 = 0
    for a, n in enumerate(shape):
        f = xp.fft.fftfreq(n).astype(xp.float32)
        k2 = k2 + f.reshape([n if b == a else 1 for b in range(len(shape))]) ** 2
    filt = xp.exp(-2.0 * (math.pi**2) * (sig**2) * k2)
    field = xp.fft.ifftn(xp.fft.fftn(noise) * filt).real.astype(xp.float32)
    std = float(field.std())
    if std > 0:
        field = field / std
    return (scale * field).astype(xp.float32)


def _b0_components(
    coords: list[Any],
    rng: np.random.Generator,
    scale: float,
    n_bumps: int,
    n_dipoles: int,
    xp: ModuleType,
) -> Any:
    """Localized off-resonance: Gaussian bumps and smoothed dipole patterns.

    Each bump ``b·exp(−|r−r₀|²/(2w²))`` has a random centre inside the field of view, width
    ``w ∈ [0.05, 0.25]`` (normalized units) and amplitude ``b ~ N(0, scale)``. Each dipole is
    ``d · w³ (3 (u·e)² − |u|²) / (|u|² + w²)^{5/2}`` with ``u = r − r₀``, a random unit B0
    direction ``e`` (in-plane in 2D, any direction in 3D) and ``d ~ N(0, scale)``; the ``w²``
    term regularizes the singularity, so the pattern is smooth with peak magnitude ``≈ |d|``.
    """
    nd = len(coords)
    out = xp.zeros(coords[0].shape, dtype=xp.float32)
    for _ in range(n_bumps):
        centre = rng.uniform(-0.8, 0.8, size=nd)
        wdt = float(rng.uniform(0.05, 0.25))
        amp = float(rng.normal(0.0, scale))
        r2 = sum((x - float(c)) ** 2 for x, c in zip(coords, centre, strict=True))
        out = out + amp * xp.exp(-r2 / (2 * wdt**2))
    for _ in range(n_dipoles):
        centre = rng.uniform(-0.7, 0.7, size=nd)
        wdt = float(rng.uniform(0.05, 0.2))
        amp = float(rng.normal(0.0, scale))
        theta = float(rng.uniform(0.0, math.pi))
        if nd == 2:
            direction = (math.cos(theta), math.sin(theta))
        else:  # polar angle theta from z, azimuth phi
            phi = float(rng.uniform(0.0, 2 * math.pi))
            st = math.sin(theta)
            direction = (math.cos(theta), st * math.sin(phi), st * math.cos(phi))
        u = [x - float(c) for x, c in zip(coords, centre, strict=True)]
        u2 = sum(v**2 for v in u)
        proj = sum(v * e for v, e in zip(u, direction, strict=True))
        pattern = (3 * proj**2 - u2) / (u2 + wdt**2) ** 2.5 * wdt**3
        out = out + amp * pattern
    return out.astype(xp.float32)


def synthetic_phase(
    shape: tuple[int, ...],
    rng: np.random.Generator,
    *,
    poly_order: int = 3,
    poly_scale: float = math.pi,
    field_scale: float = 0.5,
    field_correlation: float = 0.08,
    b0_scale: float = 1.0,
    max_bumps: int = 3,
    max_dipoles: int = 2,
    xp: ModuleType = np,
) -> Any:
    """Draw a smooth random phase map (radians) of a 2D MR image or a 3D volume.

    Parameters
    ----------
    shape
        ``(H, W)`` of an image or ``(D, H, W)`` of a volume (the model's terms in 3D: a 3D
        polynomial, a 3D smooth field, 3D bumps and dipoles with any B0 direction).
    rng
        numpy random generator; the only source of randomness (same seed → same map on any
        ``xp``).
    poly_order
        Highest total degree of the random background polynomial (0 → constant phase only).
    poly_scale
        Approximate excursion (radians) of the non-constant polynomial part across the field of
        view. The constant term is always uniform in ``[−π, π)``.
    field_scale
        Standard deviation (radians) of the smooth random field (0 disables it).
    field_correlation
        Width of the Gaussian low-pass filter of the smooth field, as a fraction of the larger
        image side (larger → smoother).
    b0_scale
        Standard deviation (radians) of the amplitude of each B0-like component (0 disables
        them).
    max_bumps, max_dipoles
        The number of Gaussian bumps and of dipole patterns is drawn uniformly from
        ``0..max_bumps`` and ``0..max_dipoles``.
    xp
        Array module (numpy or cupy) on which the map is built.

    Returns
    -------
    phase
        float32 ``shape``, unwrapped radians (multiply with ``exp(1j·phase)``; values may exceed
        ±π). Smooth: its gradient is of the order of ``(poly_scale + b0_scale)/H`` per pixel.
    """
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"synthetic_phase needs a 2D or 3D shape, got {shape=}")
    if poly_order < 0:
        raise ValueError(f"{poly_order=} must be ≥ 0")
    if min(poly_scale, field_scale, b0_scale) < 0 or field_correlation <= 0:
        raise ValueError(
            f"scales must be ≥ 0 and field_correlation > 0: "
            f"{poly_scale=}, {field_scale=}, {b0_scale=}, {field_correlation=}"
        )
    shape = tuple(int(n) for n in shape)
    coords = _coords(shape, xp)
    phase = _polynomial(coords, rng, poly_order, poly_scale, xp)
    if field_scale > 0:
        phase = phase + _smooth_field(shape, rng, field_scale, field_correlation, xp)
    if b0_scale > 0:
        n_bumps = int(rng.integers(0, max_bumps + 1))
        n_dip = int(rng.integers(0, max_dipoles + 1))
        phase = phase + _b0_components(coords, rng, b0_scale, n_bumps, n_dip, xp)
    return phase.astype(xp.float32)


def apply_phase(magnitude: Any, phase: Any) -> Any:
    """Complex image ``magnitude · exp(i·phase)`` (complex64); ``|result| == magnitude`` to float32.

    ``magnitude`` must be non-negative; shapes broadcast. Works for numpy, cupy and torch inputs.
    """
    if isinstance(magnitude, torch.Tensor) or isinstance(phase, torch.Tensor):
        mag = torch.as_tensor(magnitude, dtype=torch.float32)
        ph = torch.as_tensor(phase, dtype=torch.float32, device=mag.device)
        return torch.polar(mag, ph)
    xp = get_xp(magnitude, phase)
    mag = xp.asarray(magnitude, dtype=xp.float32)
    ph = xp.asarray(phase, dtype=xp.float32)
    return (mag * (xp.cos(ph) + 1j * xp.sin(ph))).astype(xp.complex64)
