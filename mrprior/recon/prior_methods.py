"""The prior-regularized methods of the registry: ``prior-pics``, ``prior-sample``,
``prior-nlinv``.

Each takes a :class:`~mrprior.recon.problem.ReconProblem` and a settings mapping whose keys are
checked against the method's settings dataclass (an unknown key or a bad value raises
:class:`~mrprior.errors.ConfigError` naming it). Defaults come from
``mrprior/configs/prior_methods.yaml``. The key ``prior`` is a shipped prior name, a path to a
prior card/weights, or a :class:`~mrprior.priors.base.ScorePrior` object; ``seed`` seeds the
stochastic methods.

Conventions: ``problem.noise_std`` is the std of a complex k-space sample (``E|n|² = σ²``; 1
after prewhitening); the solvers take the std per real component, ``σ/√2``. When it is unknown
it is estimated from the outer k-space (:func:`estimate_noise_std`).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import torch
import yaml

from mrprior.config import from_dict
from mrprior.errors import ConfigError
from mrprior.priors.base import ScorePrior
from mrprior.recon.baselines import zero_filled
from mrprior.recon.cg import conjugate_gradient, normal_operator
from mrprior.recon.langevin import annealed_langevin
from mrprior.recon.nlinv import nlinv
from mrprior.recon.planes import (
    PLANES_PER_CHUNK,
    coil_support,
    map_planes,
    per_plane,
    plane_operator,
    scatter_planes,
    signal_planes,
    zero_filled_noise_std,
)
from mrprior.recon.pnp import pnp_hqs
from mrprior.recon.posterior import HQS_UNCERTAINTY_SCALE, hqs_posterior
from mrprior.recon.prior_kappa import cv_kappa
from mrprior.recon.prior_pics import max_scale, prior_fista
from mrprior.recon.problem import ReconProblem, ReconResult, register_method
from mrprior.recon.views import view_cycle

logger = logging.getLogger(__name__)


# -- settings ----------------------------------------------------------------------------------
def _positive(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if v is not None and not v > 0:
            raise ConfigError(f"{n} must be > 0, got {v!r}")


def _nonnegative(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if v is not None and v < 0:
            raise ConfigError(f"{n} must be >= 0, got {v!r}")


def _check_sigmas(obj: Any) -> None:
    _positive(obj, "sigma_start", "sigma_end")
    if obj.sigma_end > obj.sigma_start:
        raise ConfigError(f"sigma_end ({obj.sigma_end}) must be <= sigma_start ({obj.sigma_start})")


@dataclass
class PriorPicsSettings:
    """Settings of ``prior-pics`` (see ``mrprior/configs/prior_methods.yaml``)."""

    solver: Literal["hqs", "fista"] = "hqs"
    iterations: int = 20
    sigma_start: float = 0.1
    sigma_end: float = 0.005
    kappa: float = 0.35
    kappa_search: Literal["volume", "always", "never"] = "volume"
    kappa_se: float = 1.0
    mu_min: float = 1e-4
    cg_iterations: int = 5
    lam: float = 1e-4
    support: bool = True
    views: Literal["planes", "volume", "none"] = "volume"
    noise_std: float | None = None
    prior: Any = "complex"
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def validate(self) -> None:
        _positive(self, "iterations", "kappa", "cg_iterations", "lam", "noise_std")
        _check_sigmas(self)
        _nonnegative(self, "mu_min", "kappa_se")


@dataclass
class PriorSampleSettings:
    """Settings of ``prior-sample``: ``sampler`` ``hqs`` (stochastic HQS restarts, default:
    ``steps`` network evaluations per sample) or ``langevin`` (annealed Langevin,
    ``levels × (corrector_steps + predictor)``)."""

    sampler: Literal["hqs", "langevin"] = "hqs"
    num_samples: int = 4
    batch_size: int | None = None
    steps: int = 20
    branch: int = 16
    kappa: float = 0.5
    mu_min: float = 1e-4
    cg_iterations: int = 5
    levels: int = 60
    sigma_start: float | None = None
    sigma_end: float = 0.005
    corrector_steps: int = 2
    epsilon: float = 0.3
    predictor: bool = True
    support: bool = True
    noise_std: float | None = None
    uncertainty_scale: float | None = None
    views: Literal["planes", "none"] = "planes"
    prior: Any = "complex"
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def validate(self) -> None:
        _positive(self, "num_samples", "batch_size", "steps", "levels", "epsilon", "noise_std")
        _positive(self, "kappa", "cg_iterations", "uncertainty_scale")
        _nonnegative(self, "mu_min")
        _positive(self, "sigma_start", "sigma_end")
        if self.sigma_end > self.start:
            raise ConfigError(f"sigma_end ({self.sigma_end}) must be <= sigma_start ({self.start})")
        if not 0 <= self.branch < self.steps:
            raise ConfigError(
                f"branch must be in [0, steps), got {self.branch} (steps {self.steps})"
            )
        if self.corrector_steps < 0:
            raise ConfigError(f"corrector_steps must be >= 0, got {self.corrector_steps}")

    @property
    def start(self) -> float:
        """``sigma_start``, or the sampler's default: 0.1 (hqs, as prior-PICS), 1.0 (langevin)."""
        if self.sigma_start is not None:
            return float(self.sigma_start)
        return 0.1 if self.sampler == "hqs" else 1.0

    @property
    def std_scale(self) -> float:
        """``uncertainty_scale``, or the sampler's calibration: :data:`HQS_UNCERTAINTY_SCALE`
        (hqs), 1 (langevin, asymptotically exact)."""
        if self.uncertainty_scale is not None:
            return float(self.uncertainty_scale)
        return HQS_UNCERTAINTY_SCALE if self.sampler == "hqs" else 1.0


@dataclass
class PriorNlinvSettings:
    """Settings of ``prior-nlinv``."""

    iterations: int = 10
    prior_steps: int = 3
    inner_iterations: int = 6
    alpha0: float = 1.0
    q: float = 0.5
    cg_iterations: int = 30
    sobolev_a: float = 220.0
    sobolev_b: float = 32.0
    sigma_start: float = 0.1
    sigma_end: float = 0.005
    kappa: float = 0.5
    mu_min: float = 1e-4
    hqs_cg_iterations: int = 5
    noise_std: float | None = None
    prior: Any = "complex"
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def validate(self) -> None:
        _positive(
            self,
            "iterations",
            "inner_iterations",
            "alpha0",
            "cg_iterations",
            "hqs_cg_iterations",
            "kappa",
            "noise_std",
        )
        _nonnegative(self, "mu_min")
        _check_sigmas(self)
        if not 0 <= self.prior_steps <= self.iterations:
            raise ConfigError(f"prior_steps must be in [0, iterations], got {self.prior_steps}")
        if not 0 < self.q <= 1:
            raise ConfigError(f"q must be in (0, 1], got {self.q}")


_SETTINGS: dict[str, type] = {
    "prior-pics": PriorPicsSettings,
    "prior-sample": PriorSampleSettings,
    "prior-nlinv": PriorNlinvSettings,
}


@functools.cache
def default_settings() -> dict[str, dict[str, Any]]:
    """The shipped defaults per method, from ``mrprior/configs/prior_methods.yaml``."""
    text = (resources.files("mrprior") / "configs" / "prior_methods.yaml").read_text()
    data = yaml.safe_load(text) or {}
    return {k: dict(v or {}) for k, v in data.items()}


def parse_settings(method: str, settings: dict[str, Any] | None) -> Any:
    """Validate ``settings`` for ``method`` on top of the shipped defaults."""
    cls = _SETTINGS[method]
    merged = {**default_settings().get(method, {}), **dict(settings or {})}
    try:
        return from_dict(cls, merged)
    except ConfigError as exc:
        raise ConfigError(f"{method} settings: {exc}") from None


# -- shared pieces -----------------------------------------------------------------------------
_PRIORS: dict[tuple[str, str], ScorePrior] = {}


def resolve_prior(ref: Any, device: torch.device, precision: str | None = None) -> ScorePrior:
    """A :class:`ScorePrior` from an object (moved to ``device``) or a shipped name / path
    (loaded once per process and device with :func:`mrprior.priors.load`, so start-up and
    weight loading are paid once). ``precision`` (``auto`` / ``fp32`` / ``bf16``) is applied
    to priors that have that attribute (:class:`~mrprior.priors.network.NetworkPrior`)."""
    if isinstance(ref, ScorePrior):
        prior = ref.to(device)
    elif isinstance(ref, str):
        key = (ref, str(device))
        if key not in _PRIORS:
            from mrprior.priors import load

            t0 = time.perf_counter()
            _PRIORS[key] = load(ref, device)
            logger.info("prior %r loaded in %.2f s", ref, time.perf_counter() - t0)
        prior = _PRIORS[key]
    else:
        raise ConfigError(f"prior must be a name, a path or a ScorePrior, got {type(ref).__name__}")
    if precision is not None and hasattr(prior, "precision"):
        prior.precision = precision  # type: ignore[attr-defined]
    return prior


def estimate_noise_std(kspace: torch.Tensor, mask: torch.Tensor, border: float = 0.2) -> float:
    """Noise std of a complex k-space sample estimated from the outer k-space.

    Uses the acquired samples in the outer ``border`` fraction of k-space along both axes
    (where the signal of an image is small) and a median absolute deviation of their real and
    imaginary parts: ``σ = √2 · 1.4826 · median(|Re|, |Im|)``.
    """
    ny, nx = mask.shape
    ky = (torch.arange(ny, device=mask.device) - ny // 2).abs() / (ny / 2)
    kx = (torch.arange(nx, device=mask.device) - nx // 2).abs() / (nx / 2)
    outer = (ky[:, None] > 1 - border) | (kx[None, :] > 1 - border)
    sel = mask & outer
    if int(sel.sum()) < 8:
        sel = mask
    v = kspace[:, sel]
    parts = torch.cat([v.real.flatten(), v.imag.flatten()]).abs()
    return float(math.sqrt(2.0) * 1.4826 * parts.median())


def _noise_std(problem: ReconProblem, override: float | None) -> torch.Tensor:
    """Noise std per complex sample, per plane ``[B]``: the setting, else the problem's, else
    estimated from each plane's outer k-space."""
    b = problem.num_planes
    if override is not None:
        return per_plane(float(override), b, problem.device)
    if problem.noise_std is not None:
        return per_plane(float(problem.noise_std), b, problem.device)
    est = [estimate_noise_std(k, m) for k, m in zip(problem.kspace, problem.mask, strict=True)]
    logger.info("noise std estimated from the outer k-space: %s", [f"{e:.3g}" for e in est])
    return per_plane(torch.tensor(est), b, problem.device)


@dataclass
class _Planes:
    """The planes of a batched problem that hold signal, and the cheap result for the rest."""

    active: torch.Tensor  # bool [B]
    problem: ReconProblem  # the active planes only
    noise_all: torch.Tensor  # [B] per complex sample
    fill: torch.Tensor  # [B, H, W] zero-filled images (kept for noise-only planes)

    @property
    def noise_std(self) -> torch.Tensor:
        """``[A]`` noise std of the active planes."""
        return self.noise_all[self.active]

    @property
    def skipped(self) -> int:
        return int((~self.active).sum())

    def scatter(self, computed: torch.Tensor) -> torch.Tensor:
        return scatter_planes(self.active, computed, self.fill)


def _signal_planes(
    problem: ReconProblem, noise_std: torch.Tensor, combine: str = "sense"
) -> _Planes:
    """Split off the planes whose k-space is at noise level (:func:`signal_planes`): they are
    not reconstructed and keep their zero-filled image (``Aᴴy``, or the root-sum-of-squares
    image for calibration-free methods). Walks a large batch in chunks of planes."""
    active = signal_planes(problem.kspace, problem.mask, noise_std)
    fill = map_planes(lambda sl: zero_filled(problem.select(sl), combine), problem.num_planes)
    if bool(active.all()):
        return _Planes(active, problem, noise_std, fill)
    logger.info("%d of %d planes hold only noise: zero-filled", int((~active).sum()), len(active))
    return _Planes(active, problem.select(active), noise_std, fill)


def _require_csm(problem: ReconProblem, method: str) -> torch.Tensor:
    if problem.csm is None:
        raise ConfigError(f"{method} needs coil maps (problem.csm is None)")
    return problem.csm


# -- methods -----------------------------------------------------------------------------------
def _per_image(t: torch.Tensor) -> torch.Tensor:
    """``[B]`` -> ``[B, 1, 1]`` (broadcasts over images ``[B, H, W]``)."""
    return t.reshape(-1, 1, 1)


@register_method("prior-pics", batched=True, whole_volume=True)
def prior_pics_method(problem: ReconProblem, settings: dict[str, Any]) -> ReconResult:
    """Linear prior-regularized SENSE reconstruction: plug-and-play HQS (default) or the
    published FISTA with a prior gradient step (``solver: fista``). All planes of a batch go
    through the network together; each plane is scaled to ``max|x| = 1`` on its own. With
    ``views`` (HQS) the denoiser sees the planes flipped/transposed in turn (``planes``), and
    with ``views: volume`` (default) a whole 3D volume (``problem.volume``) also resliced along
    its other two axes over the second half of the ladder (:mod:`mrprior.recon.views`); the data
    consistency runs :data:`~mrprior.recon.planes.PLANES_PER_CHUNK` planes at a time. The data
    weight ``kappa`` is cross-validated on the measured k-space of a whole volume
    (``kappa_search: volume``, :mod:`mrprior.recon.prior_kappa`)."""
    s = parse_settings("prior-pics", settings)
    t0 = time.perf_counter()
    _require_csm(problem, "prior-pics")
    planes = _signal_planes(problem, _noise_std(problem, s.noise_std))
    x = planes.fill
    kappa_used: float | None = s.kappa if s.solver == "hqs" else None  # HQS only
    kappa_info: dict[str, Any] = {"kappa_rule": "fixed"} if s.solver == "hqs" else {}
    if planes.problem.num_planes:
        p = planes.problem
        prior = resolve_prior(s.prior, problem.device, s.precision)
        support = coil_support(p.csm) if s.support else None
        if s.solver == "hqs":
            noise = _per_image(planes.noise_std) / math.sqrt(2.0)
            volume_views = s.views == "volume" and p.volume is not None

            def hqs(rows: list[int] | None, mask: torch.Tensor, kappa: float) -> torch.Tensor:
                """The HQS ladder on the planes ``rows`` (None: all) from ``mask``'s data."""
                sel = slice(None) if rows is None else rows
                return pnp_hqs(
                    plane_operator(p.csm[sel], mask),
                    p.kspace[sel],
                    prior,
                    noise_std=noise if noise.shape[0] == 1 else noise[sel],
                    sigma=(s.sigma_start, s.sigma_end),
                    max_iterations=s.iterations,
                    kappa=kappa,
                    mu_min=s.mu_min,
                    cg_iterations=s.cg_iterations,
                    support=None if support is None else support[sel],
                    views=()
                    if s.views == "none"
                    else view_cycle(volume_views and rows is None, s.iterations),
                    volume_planes=p.volume if rows is None else None,
                    plane_chunk=PLANES_PER_CHUNK,
                )

            kappa = s.kappa
            if s.kappa_search == "always" or (s.kappa_search == "volume" and p.volume is not None):
                t_cv = time.perf_counter()
                kappa, cv = cv_kappa(
                    p.kspace, p.mask, p.csm, hqs, s.kappa, seed=s.seed, standard_errors=s.kappa_se
                )
                kappa_info = {
                    "kappa_rule": cv["rule"],
                    "kappa_tried": len(cv["scores"]),
                    "kappa_min": cv.get("kappa_min"),
                    "kappa_cv_seconds": time.perf_counter() - t_cv,
                }
            xa = hqs(None, p.mask, kappa)
            kappa_used = kappa
        else:
            xa = prior_fista(
                plane_operator(p.csm, p.mask),
                p.kspace,
                prior,
                lam=s.lam,
                sigma=(s.sigma_start, s.sigma_end),
                max_iterations=s.iterations,
                support=support,
            )
        x = planes.scatter(xa)
    return ReconResult(
        image=x,
        info={
            "solver": s.solver,
            "iterations": s.iterations,
            "kappa_used": kappa_used,
            **kappa_info,
            "noise_std": _noise_list(planes),
            "planes_skipped": planes.skipped,
            "seconds": time.perf_counter() - t0,
        },
    )


def _noise_list(planes: _Planes) -> list[float]:
    """The per-plane noise std (all planes) as a list for ``info``."""
    return [float(v) for v in planes.noise_all.cpu()]


@register_method("prior-sample", batched=True)
def prior_sample_method(problem: ReconProblem, settings: dict[str, Any]) -> ReconResult:
    """Posterior sampling: the posterior mean as the image and the per-pixel std of its error
    as ``extras["uncertainty"]``. Default sampler: stochastic HQS restarts
    (:func:`~mrprior.recon.posterior.hqs_posterior`, ``steps`` network evaluations per
    sample, samples and planes batched); ``sampler: langevin``: annealed Langevin
    (:func:`~mrprior.recon.langevin.annealed_langevin`). Noise-only planes keep their
    zero-filled image, with the std of its noise as the uncertainty."""
    s = parse_settings("prior-sample", settings)
    t0 = time.perf_counter()
    csm = _require_csm(problem, "prior-sample")
    planes = _signal_planes(problem, _noise_std(problem, s.noise_std))
    mean = planes.fill
    std = zero_filled_noise_std(csm, problem.mask, planes.noise_all)
    scale: list[float] = []
    nfe = 0
    if planes.problem.num_planes:
        p = planes.problem
        prior = resolve_prior(s.prior, problem.device, s.precision)
        op = plane_operator(p.csm, p.mask)
        support = coil_support(p.csm) if s.support else None
        # image scale per plane: max of a short CG-SENSE solution
        x_cg = conjugate_gradient(
            normal_operator(op), op.adjoint(p.kspace), max_iterations=10, batch_ndim=1
        )
        if support is not None:
            x_cg = x_cg * support
        c = max_scale(x_cg)
        scale = [float(v) for v in c.flatten()]
        sn = _per_image(planes.noise_std) / math.sqrt(2.0)
        if s.sampler == "hqs":
            res = hqs_posterior(
                op,
                p.kspace,
                prior,
                noise_std=sn,
                num_samples=s.num_samples,
                batch_size=s.batch_size,
                steps=s.steps,
                branch=s.branch,
                sigma=(s.start, s.sigma_end),
                kappa=s.kappa,
                mu_min=s.mu_min,
                cg_iterations=s.cg_iterations,
                scale=c,
                support=support,
                seed=s.seed,
                views=view_cycle() if s.views == "planes" else (),
            )
            nfe = s.steps
        else:
            res = annealed_langevin(
                op,
                p.kspace,
                prior,
                noise_std=sn,
                scale=c,
                num_samples=s.num_samples,
                batch_size=s.batch_size,
                sigma=(s.start, s.sigma_end),
                levels=s.levels,
                corrector_steps=s.corrector_steps,
                epsilon=s.epsilon,
                predictor=s.predictor,
                support=support,
                seed=s.seed,
            )
            nfe = s.levels * (s.corrector_steps + int(s.predictor)) + 1
        mean = planes.scatter(res.mean)
        std = scatter_planes(planes.active, res.std * s.std_scale, std)
    return ReconResult(
        image=mean,
        extras={"uncertainty": std},
        info={
            "sampler": s.sampler,
            "num_samples": s.num_samples,
            "network_evaluations_per_sample": nfe,
            "uncertainty_scale": s.std_scale,
            "noise_std": _noise_list(planes),
            "scale": scale,
            "planes_skipped": planes.skipped,
            "seconds": time.perf_counter() - t0,
        },
    )


@register_method("prior-nlinv", needs_csm=False, batched=True)
def prior_nlinv_method(problem: ReconProblem, settings: dict[str, Any]) -> ReconResult:
    """Calibration-free NLINV with the prior on the image in the final Gauss–Newton steps;
    the estimated coil maps are returned as ``extras["csm"]`` (zero for noise-only planes)."""
    s = parse_settings("prior-nlinv", settings)
    t0 = time.perf_counter()
    planes = _signal_planes(problem, _noise_std(problem, s.noise_std), combine="rss")
    image = planes.fill
    csm = torch.zeros_like(problem.kspace)
    if planes.problem.num_planes:
        p = planes.problem
        prior = resolve_prior(s.prior, problem.device, s.precision) if s.prior_steps > 0 else None
        res = nlinv(
            p.kspace,
            p.mask,
            prior,
            max_iterations=s.iterations,
            prior_steps=s.prior_steps,
            inner_iterations=s.inner_iterations,
            alpha0=s.alpha0,
            q=s.q,
            cg_iterations=s.cg_iterations,
            a=s.sobolev_a,
            b=s.sobolev_b,
            noise_std=_per_image(planes.noise_std) / math.sqrt(2.0),
            sigma=(s.sigma_start, s.sigma_end),
            kappa=s.kappa,
            mu_min=s.mu_min,
            hqs_cg_iterations=s.hqs_cg_iterations,
        )
        image = planes.scatter(res.image)
        csm = scatter_planes(planes.active, res.csm, csm)
    return ReconResult(
        image=image,
        extras={"csm": csm},
        info={
            "iterations": s.iterations,
            "prior_steps": s.prior_steps,
            "noise_std": _noise_list(planes),
            "planes_skipped": planes.skipped,
            "seconds": time.perf_counter() - t0,
        },
    )
