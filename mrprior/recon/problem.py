"""The problem handed to every reconstruction method (one 2D plane or a batch of planes), and
the registry of methods.

A method is a function ``(problem, settings) -> ReconResult`` registered under a name with
:func:`register_method`. The pipeline (and thus CLI, gadget, server, benchmarks) looks methods up
by name; methods know nothing about ISMRMRD.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mrprior.errors import ConfigError


@dataclass
class ReconProblem:
    """One 2D plane, or a batch of independent 2D planes, to reconstruct, already prewhitened
    and on its torch device.

    A batch is a multi-slice 2D exam or a 3D volume after the inverse FFT along the readout
    (one ``(ky, kz)`` plane per readout position). Every registered method takes either form
    and returns the same form.

    Attributes
    ----------
    kspace : complex64 ``[C, ky, kx]`` (one plane) or ``[B, C, ky, kx]`` (a batch); unsampled
        positions are zero.
    mask : bool ``[ky, kx]`` (shared) or ``[B, ky, kx]``: True where k-space was acquired.
    csm : complex64 coil maps shaped like ``kspace`` (``sum_c |S_c|² = 1`` in the support), one
        ``[C, ky, kx]`` set shared by a batch, or None for calibration-free methods (NLINV).
    noise_std : standard deviation of the (white) noise per complex k-space sample, when known
        (one value for all planes).
    calib : bool calibration region shaped like ``mask``, when known.
    data_scale : the data scale of the whole acquisition the planes come from, when known:
        BART's intensity estimate (:func:`mrprior.recon.fista.bart_scaling`) of the whole 2D
        or 3D k-space, shared by every plane, so that a fixed λ means what ``bart pics -r λ``
        means on that acquisition. None: methods that need one estimate it per plane (right
        for a single 2D plane, not for the planes of a 3D volume).
    volume : for a batch that is one 3D volume: bool ``[N]`` over the volume's ``N`` planes
        (readout positions, in order), True for the ``B`` planes the batch holds (the others
        hold no object). None: the planes are not known to form a volume (a multi-slice exam,
        or a part of a volume). Methods may then treat the planes as a 3D image.
    """

    kspace: torch.Tensor
    mask: torch.Tensor
    csm: torch.Tensor | None = None
    noise_std: float | None = None
    calib: torch.Tensor | None = None
    data_scale: float | None = None
    volume: torch.Tensor | None = None

    def __post_init__(self) -> None:
        k = self.kspace
        if k.ndim not in (3, 4) or not k.is_complex():
            raise ValueError(
                f"kspace must be complex [C, ky, kx] or [B, C, ky, kx]: {tuple(k.shape)=}"
            )
        plane = tuple(k.shape[-2:])
        masks = (plane, (k.shape[0], *plane)) if k.ndim == 4 else (plane,)
        for name in ("mask", "calib"):
            m = getattr(self, name)
            if m is not None and tuple(m.shape) not in masks:
                raise ValueError(f"{name} must be one of {masks}: {tuple(m.shape)=}")
        if self.csm is not None and tuple(self.csm.shape) not in (
            tuple(k.shape),
            tuple(k.shape[-3:]),
        ):
            raise ValueError(f"{tuple(self.csm.shape)=} does not fit {tuple(self.kspace.shape)=}")
        if self.noise_std is not None and not float(self.noise_std) >= 0:
            raise ValueError(f"noise_std must be a number >= 0: {self.noise_std!r}")
        if self.data_scale is not None and not float(self.data_scale) > 0:
            raise ValueError(f"data_scale must be a number > 0: {self.data_scale!r}")
        if self.volume is not None:
            v = self.volume
            if v.ndim != 1 or v.dtype != torch.bool or int(v.sum()) != self.num_planes:
                raise ValueError(
                    f"volume must be bool [N] with one True per plane ({self.num_planes}): "
                    f"{tuple(v.shape)}, {v.dtype}, {int(v.sum()) if v.dtype == torch.bool else '-'}"
                )

    @property
    def device(self) -> torch.device:
        return self.kspace.device

    @property
    def batched(self) -> bool:
        """True when ``kspace`` has a leading plane axis."""
        return self.kspace.ndim == 4

    @property
    def num_planes(self) -> int:
        return int(self.kspace.shape[0]) if self.batched else 1

    def as_batch(self) -> ReconProblem:
        """The same problem with an explicit plane axis on every field: kspace and csm
        ``[B, C, ky, kx]``, mask and calib ``[B, ky, kx]`` (expanded views, no copies)."""
        k = self.kspace if self.batched else self.kspace[None]
        b = k.shape[0]
        plane = tuple(k.shape[-2:])

        def masks(m: torch.Tensor | None) -> torch.Tensor | None:
            return None if m is None else (m if m.ndim == 3 else m[None]).expand(b, *plane)

        csm = None
        if self.csm is not None:
            csm = (self.csm if self.csm.ndim == 4 else self.csm[None]).expand(b, *k.shape[1:])
        return ReconProblem(
            k,
            masks(self.mask),
            csm,
            self.noise_std,
            masks(self.calib),
            self.data_scale,
            self.volume,
        )

    def select(self, planes: slice | torch.Tensor) -> ReconProblem:
        """The planes ``planes`` (a slice: views; a bool ``[B]`` mask: copies) of a batch.
        ``volume`` follows a mask (the planes left out join the empty ones); a slice of a
        volume is no longer the whole volume (``volume`` None)."""
        volume = None
        if isinstance(planes, torch.Tensor) and self.volume is not None:
            volume = self.volume.clone()
            volume[self.volume] = planes.to(volume.device)
        return self._index(planes, volume)

    def plane(self, i: int) -> ReconProblem:
        """Plane ``i`` of a batch as an unbatched problem."""
        return self._index(i, None)

    def _index(
        self, index: int | slice | torch.Tensor, volume: torch.Tensor | None
    ) -> ReconProblem:
        p = self.as_batch()
        return ReconProblem(
            p.kspace[index],
            p.mask[index],
            None if p.csm is None else p.csm[index],
            p.noise_std,
            None if p.calib is None else p.calib[index],
            p.data_scale,
            volume,
        )


@dataclass
class ReconResult:
    """A reconstructed complex image ``[ky, kx]`` (or ``[B, ky, kx]`` for a batch of planes)
    plus optional extra maps with the same leading shape.

    ``extras`` may hold e.g. ``"uncertainty"`` (per-pixel posterior std ``[(B,) ky, kx]``) or
    ``"csm"`` (estimated coil maps ``[(B,) C, ky, kx]``); ``info`` holds scalars (iterations,
    λ, timings) and per-plane lists.
    """

    image: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def unbatch(self) -> ReconResult:
        """The single plane of a one-plane batch result (drops the plane axis)."""
        if self.image.ndim != 3 or self.image.shape[0] != 1:
            raise ValueError(f"not a one-plane batch: {tuple(self.image.shape)=}")
        info = {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in self.info.items()}
        return ReconResult(self.image[0], {k: v[0] for k, v in self.extras.items()}, info)


MethodFn = Callable[[ReconProblem, dict[str, Any]], ReconResult]
_METHODS: dict[str, MethodFn] = {}
_NEEDS_CSM: dict[str, bool] = {}
_WHOLE_VOLUME: dict[str, bool] = {}


def register_method(
    name: str, needs_csm: bool = True, batched: bool = False, whole_volume: bool = False
) -> Callable[[MethodFn], MethodFn]:
    """Decorator: register a reconstruction method under ``name``.

    The registered function accepts one plane or a batch of planes and returns the caller's
    form. With ``batched=True`` the method itself always receives a batch
    (:meth:`ReconProblem.as_batch`) and returns batched results (the built-in methods, which
    push all planes through their solver and network together); with ``batched=False`` it sees
    one plane at a time and a batch is reconstructed plane by plane (results stacked, ``info``
    values gathered into per-plane lists). ``whole_volume=True`` (batched methods only): the
    pipeline hands the method every plane of a 3D volume in one batch (with
    ``problem.volume``) rather than ``planes_per_batch`` at a time; the method bounds its own
    memory.
    """
    if whole_volume and not batched:
        raise ValueError(f"method {name!r}: whole_volume needs batched=True")

    def deco(fn: MethodFn) -> MethodFn:
        if name in _METHODS and getattr(_METHODS[name], "__wrapped__", None) is not fn:
            raise ValueError(f"method {name!r} registered twice")

        @functools.wraps(fn)
        def run(problem: ReconProblem, settings: dict[str, Any]) -> ReconResult:
            if batched:
                result = fn(problem.as_batch(), settings)
                return result if problem.batched else result.unbatch()
            if not problem.batched:
                return fn(problem, settings)
            return _stack([fn(problem.plane(i), settings) for i in range(problem.num_planes)])

        _METHODS[name] = run
        _NEEDS_CSM[name] = needs_csm
        _WHOLE_VOLUME[name] = whole_volume
        return run

    return deco


def _stack(results: list[ReconResult]) -> ReconResult:
    """One batched result from per-plane results."""
    extras = {k: torch.stack([r.extras[k] for r in results]) for k in results[0].extras}
    info = {k: [r.info.get(k) for r in results] for k in results[0].info}
    return ReconResult(torch.stack([r.image for r in results]), extras, info)


def get_method(name: str) -> MethodFn:
    """Look up a registered method; the error lists the valid names."""
    import mrprior.recon.methods  # noqa: F401  (registers the built-in methods)

    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; valid: {sorted(_METHODS)}") from None


def method_needs_csm(name: str) -> bool:
    get_method(name)
    return _NEEDS_CSM[name]


def method_takes_whole_volume(name: str) -> bool:
    """True when ``name`` wants every plane of a 3D volume in one call."""
    get_method(name)
    return _WHOLE_VOLUME[name]


def method_names() -> list[str]:
    import mrprior.recon.methods  # noqa: F401

    return sorted(_METHODS)
