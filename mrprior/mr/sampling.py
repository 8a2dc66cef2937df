"""Seeded Cartesian sampling masks that report their acceleration ``R = total / sampled``.

Four kinds, all boolean 2D with a fully sampled calibration region marked separately. For a 2D
slice a mask is ``[ky, kx]``; for a 3D Cartesian scan it is the phase-encoding plane ``[kz, ky]``
(``kspace_encode_step_2``, ``kspace_encode_step_1``), applied to every readout sample:
k-space ``[C, kz, ky, kx]`` is sampled where ``mask[:, :, None]``.

* ``"poisson"`` — variable-density Poisson-disc (the published method's ky–kz pattern): dart
  throwing in a seeded random order, the minimum distance growing with the distance from the
  k-space centre, its scale tuned by bisection until ``R`` is within ``tolerance`` of the target;
  optionally elliptical (corners never acquired, like ``bart poisson -e``).
* ``"lines"`` — 1D random phase-encode lines (ky) with a variable density, full readout.
* ``"uniform"`` — regular undersampling in both dimensions plus a calibration box.
* ``"caipi"`` — 2D CAIPIRINHA: the regular grid with the sampled positions of each acquired row
  shifted by ``shift`` (e.g. 3 × 2 with shift 1), plus a calibration box.

Masks are generated on the host (numpy); ``xp.asarray(mask.mask)`` moves one to a GPU.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

logger = logging.getLogger(__name__)

MaskKind = Literal["poisson", "lines", "uniform", "caipi"]

__all__ = [
    "MaskKind",
    "SamplingMask",
    "make_mask",
    "poisson_disc",
    "uniform_2d",
    "variable_density_lines",
]


@dataclass(frozen=True)
class SamplingMask:
    """A Cartesian sampling pattern.

    Attributes
    ----------
    mask : bool ``[ky, kx]`` (2D) or ``[kz, ky]`` (3D), True where k-space is acquired (includes
        the calibration region).
    calib : bool, same shape, True inside the fully sampled calibration region.
    kind : generator name (``"poisson"``, ``"lines"``, ``"uniform"``, ``"caipi"``).
    seed : the seed that reproduces the mask (``None`` for deterministic patterns).
    """

    mask: np.ndarray
    calib: np.ndarray
    kind: str
    seed: int | None

    def __post_init__(self) -> None:
        if self.mask.dtype != bool or self.calib.dtype != bool or self.mask.ndim != 2:
            raise ValueError(f"mask and calib must be bool [ky, kx]: {self.mask.shape=}")
        if self.mask.shape != self.calib.shape:
            raise ValueError(f"{self.mask.shape=} != {self.calib.shape=}")
        if np.any(self.calib & ~self.mask):
            raise ValueError("the calibration region must be part of the mask")

    @property
    def shape(self) -> tuple[int, int]:
        """``(ky, kx)``."""
        return (int(self.mask.shape[0]), int(self.mask.shape[1]))

    @property
    def acceleration(self) -> float:
        """``R = total / sampled`` (``inf`` for an empty mask)."""
        n = int(self.mask.sum())
        return math.inf if n == 0 else self.mask.size / n

    def __repr__(self) -> str:
        return (
            f"SamplingMask(kind={self.kind!r}, shape={self.shape}, "
            f"R={self.acceleration:.2f}, calib={int(self.calib.sum())} pts, seed={self.seed})"
        )


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    s = tuple(int(v) for v in shape)
    if len(s) != 2 or min(s) < 1:
        raise ValueError(f"shape must be (ky, kx) with positive sizes: {shape!r}")
    return s[0], s[1]


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(v, int | np.integer):
        return int(v), int(v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair: {v!r}")
    return t[0], t[1]


def _calib_box(shape: tuple[int, int], calib: tuple[int, int]) -> np.ndarray:
    """Centred box (centre at index ``N // 2``, as for centred FFTs)."""
    ny, nx = shape
    cy, cx = min(calib[0], ny), min(calib[1], nx)
    box = np.zeros(shape, dtype=bool)
    if cy > 0 and cx > 0:
        box[
            ny // 2 - cy // 2 : ny // 2 - cy // 2 + cy, nx // 2 - cx // 2 : nx // 2 - cx // 2 + cx
        ] = True
    return box


def _check_accel(accel: float) -> float:
    if not accel >= 1.0 or not math.isfinite(accel):
        raise ValueError(f"acceleration must be a finite number >= 1: {accel!r}")
    return float(accel)


def _disc(radius: float) -> np.ndarray:
    """Boolean stencil of the points strictly closer than ``radius`` to the centre."""
    r = math.ceil(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx) < radius * radius


def _dart_throw(
    order: np.ndarray, radius: np.ndarray, shape: tuple[int, int], forced: np.ndarray
) -> np.ndarray:
    """Accept points in ``order`` unless blocked by a closer-than-``radius`` accepted point."""
    ny, nx = shape
    rq = np.round(radius * 4) / 4  # quantized radii share stencils
    pad = math.ceil(float(rq.max())) + 1
    blocked = np.zeros((ny + 2 * pad, nx + 2 * pad), dtype=bool)
    out = forced.copy()
    stencils: dict[float, tuple[int, np.ndarray]] = {}
    rflat = rq.ravel()
    for idx in order.tolist():
        y, x = divmod(idx, nx)
        if blocked[y + pad, x + pad] or out[y, x]:
            continue
        out[y, x] = True
        r = float(rflat[idx])
        st = stencils.get(r)
        if st is None:
            d = _disc(r)
            st = stencils[r] = (d.shape[0] // 2, d)
        h, d = st
        blocked[y + pad - h : y + pad + h + 1, x + pad - h : x + pad + h + 1] |= d
    return out


def poisson_disc(
    shape: tuple[int, int],
    accel: float,
    calib: int | tuple[int, int] = (24, 24),
    seed: int = 0,
    vd_factor: float = 2.0,
    tolerance: float = 0.02,
    max_iter: int = 40,
    elliptical: bool = False,
) -> SamplingMask:
    """Variable-density Poisson-disc mask with acceleration ``accel`` (within ``tolerance``).

    Samples are accepted in a seeded random order when no accepted sample lies closer than
    ``r(k) = s · (1 + vd_factor · ρ(k))``, ``ρ`` the elliptical distance from the centre
    normalized to 1 at the k-space edge (density falls roughly as ``(1 + vd_factor ρ)⁻²``).
    The scale ``s`` is found by bisection on ``log s`` so that ``R`` (calibration box included)
    is within ``tolerance`` of ``accel``.

    Parameters
    ----------
    shape : ``(ky, kx)`` of a 2D slice, or ``(kz, ky)`` of the phase-encoding plane of a 3D scan.
    accel : target acceleration ``R = total / sampled`` (over the whole grid, also when
        ``elliptical``).
    calib : fully sampled centre box ``(ny, nx)`` (or an int for a square).
    seed : seed of the random order.
    vd_factor : variable-density strength (0 = uniform density).
    tolerance : relative tolerance on ``R`` (at most 0.05).
    max_iter : bisection steps.
    elliptical : acquire nothing outside the ellipse inscribed in the grid (``ρ > 1``; elliptical
        scanning of 3D scans, ``bart poisson -e``); the calibration box is always acquired.

    Raises
    ------
    ValueError
        When the calibration box alone exceeds the sample budget, or ``R`` cannot be met.
    """
    ny, nx = _check_shape(shape)
    accel = _check_accel(accel)
    box = _calib_box((ny, nx), _pair(calib, "calib"))
    target = ny * nx / accel
    if box.sum() > target:
        raise ValueError(
            f"calibration box {calib} has {int(box.sum())} points, more than the "
            f"{target:.0f} that R={accel} allows on {shape}"
        )
    yy = (np.arange(ny) - ny // 2) / max(ny / 2, 1)
    xx = (np.arange(nx) - nx // 2) / max(nx / 2, 1)
    rho = np.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)
    rng = np.random.default_rng(seed)
    order = rng.permutation(ny * nx)
    if elliptical:
        inside = (rho <= 1.0) | box
        if inside.sum() < target:
            raise ValueError(
                f"R={accel} needs {target:.0f} samples, more than the {int(inside.sum())} inside "
                f"the ellipse of {shape}: use a higher acceleration or elliptical=False"
            )
        order = order[inside.ravel()[order]]
    profile = 1.0 + vd_factor * rho
    # initial guess: dart throwing at distance r accepts roughly one point per r² pixels
    lo, hi = 0.05, float(max(ny, nx))
    s = math.sqrt(ny * nx / (target * 1.2 * float(np.mean(profile**2))))
    s = min(max(s, lo * 1.01), hi * 0.99)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(max_iter):
        m = _dart_throw(order, s * profile, (ny, nx), box)
        r = ny * nx / m.sum()
        err = r / accel - 1.0
        if best is None or abs(err) < abs(best[0]):
            best = (err, m)
        if abs(err) <= tolerance:
            break
        if err > 0:  # too few samples: shrink the distance
            hi = s
        else:
            lo = s
        s = math.sqrt(lo * hi)
    assert best is not None
    err, m = best
    if abs(err) > 0.05:
        raise ValueError(
            f"Poisson-disc could not reach R={accel} on {shape} (best R="
            f"{ny * nx / m.sum():.2f}); change the calibration size or acceleration"
        )
    return SamplingMask(m, box, "poisson", seed)


def variable_density_lines(
    shape: tuple[int, int],
    accel: float,
    calib_lines: int = 30,
    seed: int = 0,
    vd_power: float = 2.0,
) -> SamplingMask:
    """Random phase-encode (ky) lines with variable density; every readout (kx) is full.

    ``round(ky / accel)`` lines are acquired: ``calib_lines`` in the centre, the rest drawn
    without replacement with probability ``∝ (1 - |ky|/ky_max)^vd_power + 0.05`` (the floor keeps
    the k-space edge reachable).

    Raises
    ------
    ValueError
        When no whole number of lines gives ``R`` within 5 % (small ``ky``), or the calibration
        lines exceed that number.
    """
    ny, nx = _check_shape(shape)
    accel = _check_accel(accel)
    n_lines = max(1, round(ny / accel))
    if abs(ny / n_lines / accel - 1) > 0.05:
        raise ValueError(
            f"{ny} phase-encode lines cannot give R={accel} within 5% (nearest: "
            f"{n_lines} lines, R={ny / n_lines:.2f})"
        )
    cl = min(int(calib_lines), ny)
    if cl > n_lines:
        raise ValueError(
            f"{cl} calibration lines exceed the {n_lines} lines that R={accel} allows on {ny} ky"
        )
    line = np.zeros(ny, dtype=bool)
    c0 = ny // 2 - cl // 2
    line[c0 : c0 + cl] = True
    calib_line = line.copy()
    ky = np.abs(np.arange(ny) - ny // 2) / max(ny / 2, 1)
    p = (1.0 - np.clip(ky, 0, 1)) ** vd_power + 0.05
    p[line] = 0.0
    rng = np.random.default_rng(seed)
    extra = n_lines - cl
    if extra > 0:
        picks = rng.choice(ny, size=extra, replace=False, p=p / p.sum())
        line[picks] = True
    mask = np.broadcast_to(line[:, None], (ny, nx)).copy()
    cal = np.broadcast_to(calib_line[:, None], (ny, nx)).copy()
    return SamplingMask(mask, cal, "lines", seed)


def _uniform(
    shape: tuple[int, int], step: tuple[int, int], box: np.ndarray, shift: int = 0
) -> np.ndarray:
    """Regular grid through the k-space centre; acquired row ``j`` (counted from the centre row)
    is shifted by ``j · shift`` along the second axis (CAIPIRINHA), plus ``box``."""
    ny, nx = shape
    m = np.zeros(shape, dtype=bool)
    rows = np.arange((ny // 2) % step[0], ny, step[0])
    for row in rows:
        j = (row - ny // 2) // step[0]
        m[row, (nx // 2 + j * shift) % step[1] :: step[1]] = True
    return m | box


def uniform_2d(
    shape: tuple[int, int],
    accel: tuple[int, int] | float = (3, 2),
    calib: int | tuple[int, int] = (30, 30),
    shift: int = 0,
) -> SamplingMask:
    """Regular undersampling by ``(r0, r1)`` along the mask's two axes plus a calibration box.

    For a 2D slice the axes are (ky, kx); for a 3D scan (kz, ky): ``accel=(2, 3)`` on a
    ``(kz, ky)`` plane skips every other partition and two of three phase-encoding lines (the
    "3 × 2" pattern). ``shift`` (CAIPIRINHA, 0 ≤ shift < r1) moves the sampled positions of each
    acquired row by ``shift`` relative to the previous one, so that aliased voxels are spread
    along both axes; the mask's kind is then ``"caipi"``.

    With ``accel=(r0, r1)`` the grid steps are used as given and ``R`` (reported by the mask) is
    a little below ``r0 · r1`` because of the calibration box. With a number, the integer steps
    ``1 ≤ r0, r1 ≤ 8`` whose ``R`` (box included) is closest to it are chosen, preferring equal
    steps; a ``ValueError`` is raised when none is within 5 %.
    """
    ny, nx = _check_shape(shape)
    box = _calib_box((ny, nx), _pair(calib, "calib"))
    kind = "caipi" if shift else "uniform"
    if isinstance(accel, tuple | list):
        step = _pair(tuple(accel), "accel")
        if min(step) < 1:
            raise ValueError(f"uniform steps must be >= 1: {accel!r}")
        if shift and not 0 < shift < step[1]:
            raise ValueError(f"CAIPI shift must be in [0, {step[1]}): {shift=}")
        return SamplingMask(_uniform((ny, nx), step, box, shift), box, kind, None)
    if shift:
        raise ValueError("a CAIPI shift needs explicit grid steps accel=(r0, r1)")
    target = _check_accel(float(accel))
    cands = []
    for ry in range(1, 9):
        for rx in range(1, 9):
            m = _uniform((ny, nx), (ry, rx), box)
            r = m.size / m.sum()
            cands.append((abs(r / target - 1), abs(ry - rx), ry, rx, m))
    err, _, ry, rx, m = min(cands, key=lambda c: (round(c[0], 3), c[1]))
    if err > 0.05:
        raise ValueError(
            f"no regular (ry, rx) grid with calibration {calib} gives R={target} within 5% on "
            f"{shape}"
        )
    logger.debug("uniform_2d: steps (%d, %d) for R=%.2f", ry, rx, target)
    return SamplingMask(m, box, "uniform", None)


def make_mask(
    kind: MaskKind,
    shape: tuple[int, int],
    accel: float | tuple[int, int],
    calib: int | tuple[int, int] = 24,
    seed: int = 0,
    shift: int = 1,
    elliptical: bool = False,
) -> SamplingMask:
    """Build a mask by name: ``"poisson"``, ``"lines"``, ``"uniform"`` or ``"caipi"``.

    ``shape`` is ``(ky, kx)`` of a 2D slice or ``(kz, ky)`` of a 3D scan's phase-encoding plane.
    ``calib`` is the calibration box for ``"poisson"``/``"uniform"``/``"caipi"`` and the number
    of centre lines for ``"lines"`` (the first entry when a pair is given). ``accel`` is the
    target ``R``; ``"uniform"`` also takes the grid steps ``(r0, r1)``, which ``"caipi"`` needs
    (with the row-to-row ``shift``). ``elliptical`` applies to ``"poisson"``.
    """
    kinds = get_args(MaskKind)
    if kind == "uniform":
        steps = accel if isinstance(accel, tuple | list) else float(accel)
        return uniform_2d(shape, accel=steps, calib=calib)
    if kind == "caipi":
        if not isinstance(accel, tuple | list):
            raise ValueError(f"mask kind 'caipi' needs grid steps (r0, r1), not {accel!r}")
        return uniform_2d(shape, accel=tuple(accel), calib=calib, shift=shift)
    if isinstance(accel, tuple | list):
        raise ValueError(f"mask kind {kind!r} takes one acceleration number, not {accel!r}")
    if kind == "poisson":
        return poisson_disc(shape, accel, calib=calib, seed=seed, elliptical=elliptical)
    if kind == "lines":
        lines = calib if isinstance(calib, int | np.integer) else _pair(calib, "calib")[0]
        return variable_density_lines(shape, accel, calib_lines=int(lines), seed=seed)
    raise ValueError(f"unknown mask kind {kind!r}; valid kinds: {', '.join(kinds)}")
