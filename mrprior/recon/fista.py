"""FISTA and ℓ1-wavelet reconstruction (what ``bart pics -l1 -r λ`` computes).

``l1_wavelet`` solves, in BART's units,

    argmin_x  ½ ||A x - y/s||²₂ + λ ||W x||₁ ,      returned as  s · x,

with ``W`` an orthogonal Daubechies wavelet transform (:mod:`mrprior.recon.wavelet`), a new
random cyclic shift of the image before ``W`` at every iteration ("cycle spinning", as BART does
unless ``-n``), FISTA iterations (Beck & Teboulle, SIAM J. Imaging Sci. 2:183, 2009), and BART's
data scaling ``s`` (:func:`bart_scaling`): BART divides k-space by an intensity estimate of the
low-resolution image from the central fully-sampled calibration block, so that a given λ means
the same for any data scale. With the same ``s`` and λ, the ℓ1 weight relative to the data
matches ``bart pics -l1 -r λ`` (whose default is 30 FISTA iterations with step 0.95).

A 3D volume, given as its (ky, kz) planes after the inverse FFT along the readout, is solved as
BART solves the 3D k-space (``volume`` of :func:`l1_wavelet`): ``x`` is the whole grid
``[N, H, W]`` of readout planes, ``W`` a 3D wavelet transform over (readout, ky, kz) with
BART's levels per axis, the data term that of the planes with data (the others, e.g. the
background planes the pipeline leaves out, only feel the ℓ1 term), one data scale ``s`` for the
volume; the normal operator runs on a few planes at a time, so the memory is a few images of the
volume plus per-chunk temporaries.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch

from mrprior.cancellation import check_cancelled
from mrprior.mr.linop import LinearOperator, power_iteration
from mrprior.recon.cg import Callback, normal_operator
from mrprior.recon.wavelet import WaveletTransform, axis_levels, wavelet_soft_threshold

logger = logging.getLogger(__name__)


def fista(
    grad_f: Callable[[torch.Tensor], torch.Tensor],
    prox_g: Callable[[torch.Tensor, float], torch.Tensor],
    x0: torch.Tensor,
    step: float,
    max_iterations: int = 100,
    callback: Callback | None = None,
    restart: bool = False,
) -> torch.Tensor:
    """FISTA for ``min_x f(x) + g(x)`` with ``f`` smooth (gradient ``grad_f``) and ``g`` proximable.

    Iterates ``x_k = prox_g(z_k - step ∇f(z_k), step)``,
    ``t_{k+1} = (1 + sqrt(1 + 4 t_k²)) / 2``, ``z_{k+1} = x_k + (t_k - 1)/t_{k+1} (x_k - x_{k-1})``.

    Parameters
    ----------
    grad_f : ``x -> ∇f(x)``.
    prox_g : ``(v, step) -> argmin_x g(x) + ||x - v||² / (2 step)``.
    x0 : starting point (not modified).
    step : step size, at most ``1 / L`` with ``L`` the Lipschitz constant of ``∇f``.
    max_iterations : number of iterations.
    callback : ``callback(iteration, x_k)``; returning True stops.
    restart : adaptive gradient restart (O'Donoghue & Candès, FoCM 15:715, 2015): reset the
        momentum when ``<z_k - x_k, x_k - x_{k-1}> > 0``.

    Returns
    -------
    torch.Tensor
        the last ``x_k``.
    """
    if step <= 0:
        raise ValueError(f"step must be > 0: {step}")
    x_prev = x0
    z = x0
    t = 1.0
    x = x0
    for it in range(max_iterations):
        check_cancelled()
        x = prox_g(z - step * grad_f(z), step)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        if restart and float(torch.sum(((z - x).conj() * (x - x_prev)).real)) > 0:
            t, t_next = 1.0, 1.0
            z = x
        else:
            z = x + ((t - 1.0) / t_next) * (x - x_prev)
        x_prev, t = x, t_next
        if callback is not None and callback(it, x):
            break
    return x


#: edge of BART's calibration block for the data scaling (``cal_size`` of ``estimate_scaling``)
CALIB_SIZE = 32


def _calib_block(pattern: np.ndarray, size: int = CALIB_SIZE) -> list[tuple[int, int]]:
    """BART's ``calib_geom``: the centred fully-sampled block, grown one sample per axis in turn.

    ``pattern`` is bool ``[*phase, readout]`` (``[ky, kx]`` or ``[kz, ky, kx]``, the readout
    last); BART's dimensions are ours reversed (its dim 0 is the readout), and it grows them in
    its order (readout, ky, kz), each up to ``min(size, n)``, an axis stopping when the grown
    block is no longer fully sampled. Returns ``(start, size)`` per axis of ``pattern``; the
    readout start is the centred one (:func:`bart_scaling` then slides it along the readout).
    """
    dims = pattern.shape[::-1]  # BART order: readout first
    cal = [1] * len(dims)
    pos = [(d - 1) // 2 for d in dims]
    stop = [False] * len(dims)

    def block() -> np.ndarray:
        return pattern[tuple(slice(p, p + c) for p, c in zip(pos[::-1], cal[::-1], strict=True))]

    while not all(stop):
        for i, d in enumerate(dims):
            if cal[i] == d or cal[i] >= size:
                stop[i] = True
            if stop[i]:
                continue
            cal[i] += 1
            pos[i] = (d - cal[i]) // 2
            if not bool(block().all()):
                cal[i] -= 1
                pos[i] = (d - cal[i]) // 2
                stop[i] = True
    return list(zip(pos[::-1], cal[::-1], strict=True))


def bart_scaling(kspace: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """The data scale ``s`` of ``bart pics`` (``estimate_scaling``; k-space is divided by it),
    of a 2D or a whole 3D k-space.

    1. Take the central ``min(32, n)`` samples of every phase-encoding axis (the whole
       readout) and find in it the central fully-sampled calibration block (at most 32 per
       axis, :func:`_calib_block`; the pattern is ``mask`` or, as in BART, where any coil is
       non-zero). Slide the block along the readout to the position of maximal energy (the
       first maximum, as BART's strict ``>`` scan).
    2. Root-sum-of-squares over coils of the orthonormal inverse FFT (2D or 3D) of that block.
    3. Sort the magnitudes; ``median``, ``p90`` (index ``⌊0.9 n⌋``), ``max``, each divided by
       ``∏_axes sqrt(n_axis / c_axis)``; ``s = p90`` if ``max - p90 < 2 (p90 - median)`` else
       ``max``.

    On a 3D volume this is one scale for the whole k-space, what ``bart pics`` on the 3D data
    uses for every readout position; only the central block is read (no copy of the volume).

    Parameters
    ----------
    kspace : complex ``[C, ky, kx]`` or ``[C, kz, ky, kx]`` (readout last; unsampled positions
        zero).
    mask : optional bool ``[ky, kx]`` / ``[kz, ky, kx]`` sampling pattern (positions outside
        it are treated as unsampled).
    """
    k = kspace.detach()
    if k.ndim not in (3, 4) or not k.is_complex():
        raise ValueError(
            f"kspace must be complex [C, ky, kx] or [C, kz, ky, kx]: {tuple(k.shape)=}"
        )
    spatial = tuple(int(n) for n in k.shape[1:])
    if mask is not None and tuple(mask.shape) != spatial:
        raise ValueError(f"mask {tuple(mask.shape)} does not fit k-space {spatial}")
    # BART's extract_calib2: the central min(32, n) of each phase axis, the whole readout
    widths = [min(CALIB_SIZE, n) for n in spatial[:-1]]
    crop = tuple(
        slice((n - t) // 2, (n - t) // 2 + t) for n, t in zip(spatial, widths, strict=False)
    )
    sub = k[(slice(None), *crop)]
    if mask is None:
        pat = (sub.abs() > 0).any(dim=0)
    else:
        pat = mask[crop].to(device=k.device, dtype=torch.bool)
    blocks = _calib_block(pat.cpu().numpy())
    phase = tuple(slice(p, p + c) for p, c in blocks[:-1])
    rows = sub[(slice(None), *phase)] * pat[phase]  # [C, *calib phase, readout]
    sizes = [c for _, c in blocks]
    cx = sizes[-1]
    energy = (rows.abs() ** 2).flatten(0, -2).sum(dim=0).double().cpu().numpy()
    win = np.convolve(energy, np.ones(cx), mode="valid")  # sums over [r, r + cx)
    r = int(np.argmax(win))  # first maximum
    blk = rows[..., r : r + cx]
    # BART's pics multiplies the whole k-space by its ``fftmod`` phase (a checkerboard for even
    # sizes) before the estimate; on a block of odd size this changes the magnitudes
    starts = [c.start + p for c, (p, _) in zip(crop, blocks, strict=False)] + [r]
    for axis, (n, j0, size) in enumerate(zip(spatial, starts, sizes, strict=True), start=1):
        if n > 1:
            j = torch.arange(j0, j0 + size, dtype=torch.float64)
            ramp = torch.polar(torch.ones_like(j), 2 * math.pi * j * (n // 2) / n)
            shape = [1] * blk.ndim
            shape[axis] = size
            blk = blk * ramp.to(blk.device, blk.dtype).reshape(shape)
    img = torch.fft.ifftn(blk, dim=tuple(range(1, blk.ndim)), norm="ortho")
    rss = torch.sqrt((img.abs() ** 2).sum(dim=0)).flatten()
    vals = torch.sort(rss.double().cpu()).values.numpy()
    n = vals.size
    rescale = math.prod(math.sqrt(d / c) for d, c in zip(spatial, sizes, strict=True))
    median = vals[n // 2] / rescale
    p90 = vals[math.trunc(n * 0.9)] / rescale
    vmax = vals[-1] / rescale
    scale = p90 if (vmax - p90) < 2 * (p90 - median) else vmax
    logger.debug(
        "BART scaling %.6g (calib %s, max %.6g, p90 %.6g, median %.6g)",
        scale, "x".join(map(str, sizes)), vmax, p90, median,
    )  # fmt: skip
    return float(scale) if scale > 0 else 1.0


def _plane_mask(mask: torch.Tensor, i: int) -> torch.Tensor:
    """Plane ``i``'s ``[H, W]`` sampling mask from an operator mask ``[H, W]`` or ``[B, 1, H, W]``."""
    m = mask.reshape(-1, *mask.shape[-2:])
    return m[i if m.shape[0] > 1 else 0]


def lipschitz_bound(
    A: LinearOperator, iterations: int = 20, device: torch.device | str = "cpu"
) -> float:
    """An upper bound of ``||AᴴA||`` (the Lipschitz constant of ``∇½||Ax - y||²``).

    For a :class:`~mrprior.mr.sense.SenseOperator` with a mask in ``[0, 1]`` this is
    ``max_pixel Σ_c |S_c|²`` (since ``||M F S x||² <= ||S x||²``), free to compute and equal to 1
    for normalized coil maps, which makes the default step ``0.95`` exactly BART's. Any other
    operator gets a power iteration on ``A.gram`` (``iterations`` steps on ``device``), which
    estimates ``||AᴴA||`` from below; the 0.95 factor of the default step leaves the margin.
    """
    from mrprior.mr.sense import SenseOperator

    if isinstance(A, SenseOperator) and (
        A.mask is None or bool(((A.mask >= 0) & (A.mask <= 1)).all())
    ):
        return float((A.csm.abs() ** 2).sum(dim=-A.ndim - 1).max())  # sum over the coil axis
    return power_iteration(A.gram, iterations=iterations, device=device)


def _volume_gradient(
    A: LinearOperator, y: torch.Tensor, s: float, rows: torch.Tensor, chunk: int | None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], float]:
    """The gradient ``x -> AᴴA x_r - Aᴴ y_r / s`` of the data term on the planes ``rows`` of a
    volume grid ``[N, H, W]`` (zero on the other planes), the normal operator applied to
    ``chunk`` planes at a time (``[chunk, C, H, W]`` temporaries; ``y`` is never copied
    whole), and an upper bound of its Lipschitz constant (the maximum over the chunks)."""
    from mrprior.recon.planes import PlaneSenseOperator, map_planes

    count = int(rows.numel())

    def part(sl: slice) -> LinearOperator:
        return A.select(sl) if isinstance(A, PlaneSenseOperator) else A

    if not isinstance(A, PlaneSenseOperator):
        chunk = None
    aty = map_planes(lambda sl: part(sl).adjoint(y[sl]) / s, count, chunk)
    lip = float(
        map_planes(
            lambda sl: torch.tensor([lipschitz_bound(part(sl), device=y.device)]), count, chunk
        ).max()
    )

    def grad(x: torch.Tensor) -> torch.Tensor:
        def one(sl: slice) -> torch.Tensor:
            return normal_operator(part(sl))(x.index_select(0, rows[sl])) - aty[sl]

        g = torch.zeros_like(x)
        return g.index_copy_(0, rows, map_planes(one, count, chunk))

    return grad, lip


def l1_wavelet(
    A: LinearOperator,
    y: torch.Tensor,
    lam: float,
    max_iterations: int = 30,
    random_shift: bool = True,
    seed: int | None = 0,
    step: float | None = None,
    wavelet: str = "db2",
    levels: int | tuple[int, ...] | None = None,
    scale: str | float | None = "bart",
    threshold_coarse: bool = True,
    restart: bool = False,
    x0: torch.Tensor | None = None,
    callback: Callback | None = None,
    volume: torch.Tensor | None = None,
    volume_wavelet: bool = True,
    plane_chunk: int | None = None,
) -> torch.Tensor:
    """ℓ1-wavelet regularized SENSE reconstruction by FISTA (module docstring for the objective).

    Parameters
    ----------
    A : forward operator image ``[H, W]`` -> k-space (a SENSE operator gets a fused normal op).
    y : measured k-space ``A.oshape`` (``[C, ky, kx]``), or ``[B, C, ky, kx]`` for a batch of
        planes (a :class:`~mrprior.recon.planes.PlaneSenseOperator`); zeros where not sampled.
    lam : λ in BART's units (``bart pics -l1 -r λ``) when ``scale="bart"``.
    max_iterations : FISTA iterations (default 30 = BART's ``-i`` default; on the BART phantom at
        λ = 0.01, 30 iterations give a higher PSNR than 100, for BART and for us alike).
    random_shift : new random cyclic shift in ``[0, 2**levels)`` per axis at each iteration.
    seed : seed of the shift generator (same seed -> same result); None = nondeterministic.
    step : gradient step; default ``0.95 / L`` with ``L`` from :func:`lipschitz_bound`
        (``L = 1`` for normalized maps, so this equals BART's fixed 0.95).
    wavelet, levels : see :class:`~mrprior.recon.wavelet.WaveletTransform` (default levels:
        the same on both axes of a plane, :func:`~mrprior.recon.wavelet.num_levels`; BART's
        per-axis rule :func:`~mrprior.recon.wavelet.axis_levels` for a 3D volume).
    scale : ``"bart"`` (:func:`bart_scaling`, per plane), a number or one per plane ``[B]``, or
        None (= 1); one number for a ``volume``.
    threshold_coarse : also threshold the coarse approximation band (BART does).
    restart : adaptive momentum restart (see :func:`fista`); off in BART.
    x0 : initial image in the units of ``y`` (default zeros); ``[N, H, W]`` for a ``volume``.
    callback : ``callback(iteration, x)`` with ``x`` in the units of ``y`` (the whole grid
        ``[N, H, W]`` for a ``volume``); True stops.
    volume : bool ``[N]``: the ``B`` planes of ``y`` are the planes where True of one 3D volume
        (readout positions in order; the others hold no data). FISTA then solves on the whole
        grid ``[N, H, W]`` what ``bart pics -l1`` solves on the 3D k-space: the data term of the
        ``B`` planes (zero gradient on the others), the ℓ1 term of a 3D wavelet transform over
        (readout, ky, kz) of the whole grid (BART's levels per axis, one random shift per axis),
        and returns the ``B`` planes ``[B, H, W]``. The normal operator runs on
        ``plane_chunk`` planes at a time.
    volume_wavelet : with ``volume``: 3D wavelets (default); False: 2D wavelets per plane (the
        planes then decouple: the result is that of the batch of planes without ``volume``).
    plane_chunk : planes per application of the normal operator with ``volume`` (None: all).

    Returns
    -------
    torch.Tensor
        complex image ``[(B,) H, W]`` in the units of ``y``.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0: {lam}")
    if tuple(y.shape[-len(A.oshape) :]) != tuple(A.oshape) or y.ndim > len(A.oshape) + 1:
        raise ValueError(f"y must have shape [(B,) *{A.oshape}]: {tuple(y.shape)=}")
    if len(A.ishape) != 2:
        raise ValueError(f"l1_wavelet needs a 2D image operator: {A.ishape=}")
    batch = tuple(y.shape[: y.ndim - len(A.oshape)])
    if volume is not None:
        if volume.ndim != 1 or volume.dtype != torch.bool or len(batch) != 1:
            raise ValueError(f"volume must be bool [N] with y [B, C, ky, kx]: {volume.shape=}")
        if int(volume.sum()) != batch[0]:
            raise ValueError(f"volume marks {int(volume.sum())} planes, y holds {batch[0]}")
        if isinstance(scale, str) or (scale is not None and torch.as_tensor(scale).numel() != 1):
            raise ValueError(f"a whole volume needs one data scale (a number): {scale!r}")
    if scale == "bart":
        mask = getattr(A, "mask", None)
        planes = y.reshape(-1, *A.oshape)
        s = torch.tensor(
            [
                bart_scaling(p, None if mask is None else _plane_mask(mask, i))
                for i, p in enumerate(planes)
            ]
        )
    elif scale is None:
        s = torch.ones(1)
    elif isinstance(scale, str):
        raise ValueError(f"scale must be 'bart', a number or None: {scale!r}")
    else:
        s = torch.as_tensor(scale, dtype=torch.float32).reshape(-1).cpu()
    if not bool((s > 0).all()):
        raise ValueError(f"scale must be > 0: {s.tolist()}")
    if s.numel() == 1:
        s = s.reshape(())
    elif s.numel() != math.prod(batch):
        raise ValueError(f"one scale per plane needed: {s.numel()} for {batch=}")
    else:
        s = s.reshape(*batch, 1, 1)
    s = s.to(device=y.device, dtype=torch.float32)
    device = y.device
    if volume is None:
        ys = y / s.unsqueeze(-3) if s.ndim else y / s
        gram = normal_operator(A)
        aty = A.adjoint(ys)

        def grad_f(x: torch.Tensor) -> torch.Tensor:
            return gram(x) - aty

        shape = (*batch, *A.ishape)
        wt_shape: tuple[int, ...] = tuple(A.ishape)
        lip = lipschitz_bound(A, device=device) if step is None else 1.0
    else:
        rows = torch.nonzero(volume.to(device)).flatten()
        grad_f, lip = _volume_gradient(A, y, float(s), rows, plane_chunk)
        shape = (int(volume.numel()), *A.ishape)
        wt_shape = shape if volume_wavelet else tuple(A.ishape)
        if volume_wavelet and levels is None:
            levels = axis_levels(wt_shape)
    if step is None:
        step = 0.95 / lip if lip > 0 else 0.95
    wt = WaveletTransform(wt_shape, wavelet=wavelet, levels=levels, device=device)
    nd = len(wt_shape)
    period = 2**wt.levels
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))

    def prox_g(v: torch.Tensor, tau: float) -> torch.Tensor:
        if random_shift:
            sh = torch.randint(0, period, (nd,), generator=gen).tolist()
            # each axis's own period 2**levels (a divisor of ``period``: still uniform)
            shift = tuple(
                (r % 2**lv) % n for r, lv, n in zip(sh, wt.axis_levels, v.shape[-nd:], strict=True)
            )
        else:
            shift = (0,) * nd
        return wavelet_soft_threshold(v, wt, lam * tau, shift, threshold_coarse)

    cb = None
    if callback is not None:

        def cb(it: int, x: torch.Tensor) -> bool | None:
            return callback(it, x * s)

    if x0 is not None and tuple(x0.shape) != shape:
        raise ValueError(f"x0 must have shape {shape}: {tuple(x0.shape)}")
    start = torch.zeros(shape, dtype=torch.complex64, device=device) if x0 is None else x0 / s
    logger.debug(
        "l1_wavelet: lam=%g scale=%s step=%.4g %r iterations=%d%s",
        lam, s.flatten().tolist(), step, wt, max_iterations,
        "" if volume is None else f" volume of {shape[0]} planes, {int(volume.sum())} with data",
    )  # fmt: skip
    x = fista(grad_f, prox_g, start, step, max_iterations, cb, restart)
    if volume is not None:
        x = x.index_select(0, rows)
    return x * s
