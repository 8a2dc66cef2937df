"""Built-in reconstruction methods, registered with :func:`mrprior.recon.problem.register_method`.

Each method is ``(problem, settings) -> ReconResult`` and sees the problem as a batch of planes
(``[B, C, ky, kx]``; the registry adds and removes the plane axis for single planes); unknown settings keys raise
:class:`~mrprior.errors.ConfigError` naming the key. Prior-based methods register from their own
modules, imported at the end of this file.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from mrprior.errors import ConfigError, DataError
from mrprior.recon.baselines import cg_sense, zero_filled
from mrprior.recon.fista import bart_scaling, l1_wavelet
from mrprior.recon.planes import PLANES_PER_CHUNK, plane_operator
from mrprior.recon.problem import ReconProblem, ReconResult, register_method


def _settings(name: str, settings: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ConfigError(
            f"method {name!r}: unknown setting(s) {unknown}; valid: {sorted(defaults)}"
        )
    return {**defaults, **settings}


def _needs_csm(name: str, problem: ReconProblem) -> None:
    if problem.csm is None:
        raise ConfigError(f"method {name!r} needs coil maps (problem.csm is None)")


@register_method("zerofill", needs_csm=True, batched=True)
def zerofill_method(problem: ReconProblem, settings: dict[str, Any]) -> ReconResult:
    """Coil-combined adjoint ``Aᴴy``; settings: ``combine`` ("sense" | "rss")."""
    s = _settings("zerofill", settings, {"combine": "sense"})
    if s["combine"] not in ("sense", "rss"):
        raise ConfigError(f"zerofill: combine must be 'sense' or 'rss': {s['combine']!r}")
    if s["combine"] == "sense":
        _needs_csm("zerofill", problem)
    t0 = time.perf_counter()
    img = zero_filled(problem, s["combine"])
    return ReconResult(img, info={"method": "zerofill", "seconds": time.perf_counter() - t0, **s})


@register_method("sense", needs_csm=True, batched=True)
def sense_method(problem: ReconProblem, settings: dict[str, Any]) -> ReconResult:
    """CG-SENSE with Tikhonov ``lam``; settings: ``lam`` (0.0), ``max_iterations`` (30), ``tol``."""
    s = _settings("sense", settings, {"lam": 0.0, "max_iterations": 30, "tol": 1e-6})
    _needs_csm("sense", problem)
    if float(s["lam"]) < 0:
        raise ConfigError(f"sense: lam must be >= 0: {s['lam']}")
    if int(s["max_iterations"]) < 1:
        raise ConfigError(f"sense: max_iterations must be >= 1: {s['max_iterations']}")
    A = plane_operator(problem.csm, problem.mask)
    t0 = time.perf_counter()
    img = cg_sense(
        A,
        problem.kspace,
        lam=float(s["lam"]),
        max_iterations=int(s["max_iterations"]),
        tol=float(s["tol"]),
    )
    return ReconResult(img, info={"method": "sense", "seconds": time.perf_counter() - t0, **s})


@register_method("l1", needs_csm=True, batched=True, whole_volume=True)
def l1_method(problem: ReconProblem, settings: dict[str, Any]) -> ReconResult:
    """ℓ1-wavelet FISTA (``bart pics -l1 -r lam``); settings: ``lam`` (0.01; ``"auto"``: by
    k-space cross-validation, :func:`mrprior.recon.l1_lambda.cv_lambda`, about 6–10 times the
    cost of one reconstruction; ``"noise"``: from the noise level alone, free,
    :func:`mrprior.recon.l1_lambda.auto_lambda`), ``max_iterations`` (30, BART's default),
    ``seed`` (0; also seeds the cross-validation's folds), ``wavelet`` ("db2"),
    ``volume_wavelet`` (True).

    A whole 3D volume (``problem.volume``, the pipeline hands ``l1`` every plane at once) is
    solved as BART solves the 3D k-space: FISTA on the whole grid of readout planes with 3D
    wavelets over (readout, ky, kz) (:func:`~mrprior.recon.fista.l1_wavelet` with ``volume``),
    the SENSE normal operator on :data:`~mrprior.recon.planes.PLANES_PER_CHUNK` planes at a
    time; ``volume_wavelet: false`` keeps 2D wavelets per plane. Other batches (a multi-slice
    exam, a part of a volume) are independent planes with 2D wavelets.

    A fixed ``lam`` is in BART's units: the data are divided by ``problem.data_scale`` (the
    whole acquisition's BART scaling, e.g. of a 3D volume's k-space, the same for every plane)
    or, without it, by each plane's own :func:`~mrprior.recon.fista.bart_scaling`.
    """
    s = _settings(
        "l1",
        settings,
        {"lam": 0.01, "max_iterations": 30, "seed": 0, "wavelet": "db2", "volume_wavelet": True},
    )
    _needs_csm("l1", problem)
    rule = s["lam"].strip().lower() if isinstance(s["lam"], str) else None
    if rule in ("auto", "noise"):
        lam = None
    else:
        try:
            lam = float(s["lam"])
        except (TypeError, ValueError):
            raise ConfigError(
                f"l1: lam must be a number >= 0, 'auto' or 'noise': {s['lam']!r}"
            ) from None
        if lam < 0:
            raise ConfigError(f"l1: lam must be >= 0: {s['lam']}")
    if int(s["max_iterations"]) < 1:
        raise ConfigError(f"l1: max_iterations must be >= 1: {s['max_iterations']}")
    if not isinstance(s["volume_wavelet"], bool):
        raise ConfigError(f"l1: volume_wavelet must be true or false: {s['volume_wavelet']!r}")
    A = plane_operator(problem.csm, problem.mask)
    if problem.data_scale is not None:
        scale: float | list[float] = float(problem.data_scale)
    else:
        scale = [bart_scaling(k, m) for k, m in zip(problem.kspace, problem.mask, strict=True)]
        if problem.volume is not None:  # one scale for a volume: the planes' median
            scale = float(statistics.median(scale))
    lam_used: float | list[float]
    extra: dict[str, Any] = {}
    t0 = time.perf_counter()
    if lam is None:
        from mrprior.recon.l1_lambda import auto_lambda, cv_lambda

        # λ·s is the threshold on the unscaled data (FISTA is scale-equivariant), so one
        # absolute λ serves every plane with the data left unscaled
        if rule == "noise":
            lam = auto_lambda(problem, 1.0)
        else:
            seed = 0 if s["seed"] is None else int(s["seed"])
            try:
                lam, cv = cv_lambda(
                    problem,
                    max_iterations=int(s["max_iterations"]),
                    wavelet=str(s["wavelet"]),
                    seed=seed,
                    volume_wavelet=bool(s["volume_wavelet"]),
                )
            except DataError as exc:  # the data (NaN, nothing sampled), not the settings
                raise DataError(f"l1: lam 'auto': {exc}") from exc
            except ValueError as exc:
                raise ConfigError(f"l1: lam 'auto': {exc}") from exc
            extra = {
                "lam_rule": cv["rule"],
                "lam_cv": cv["lam_cv"],
                "lam_noise": cv["lam_noise"],
                "cv_reconstructions": cv["reconstructions"],
                "cv_seconds": time.perf_counter() - t0,
            }
        lam_used = lam / scale if isinstance(scale, float) else [lam / sc for sc in scale]
        solver_scale: float | list[float] = 1.0  # in BART's units above
    else:
        lam_used, solver_scale = lam, scale
    try:
        img = l1_wavelet(
            A,
            problem.kspace,
            lam=lam,
            max_iterations=int(s["max_iterations"]),
            seed=None if s["seed"] is None else int(s["seed"]),
            wavelet=str(s["wavelet"]),
            scale=torch.tensor(solver_scale, device=problem.device),
            volume=problem.volume,
            volume_wavelet=bool(s["volume_wavelet"]),
            plane_chunk=PLANES_PER_CHUNK,
        )
    except ValueError as exc:  # e.g. a non-orthogonal wavelet name
        raise ConfigError(f"l1: {exc}") from exc

    def one(v: float | list[float]) -> float | list[float]:
        return v[0] if isinstance(v, list) and len(v) == 1 else v

    info = {"method": "l1", "seconds": time.perf_counter() - t0, **s}
    info.update(scale=one(scale), lam_used=one(lam_used), **extra)
    return ReconResult(img, info=info)


import mrprior.recon.prior_methods  # noqa: E402, F401  (registers prior-pics, prior-sample, prior-nlinv)
