"""The problem handed to every reconstruction method, and the registry of methods.

A method is a function ``(problem, settings) -> ReconResult`` registered under a name with
:func:`register_method`. The pipeline (and thus CLI, gadget, server, benchmarks) looks methods up
by name; methods know nothing about ISMRMRD.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mrprior.errors import ConfigError


@dataclass
class ReconProblem:
    """One 2D slice to reconstruct, already prewhitened and on its torch device.

    Attributes
    ----------
    kspace : complex64 ``[C, ky, kx]``; unsampled positions are zero.
    mask : bool ``[ky, kx]``: True where k-space was acquired.
    csm : complex64 ``[C, ky, kx]`` coil maps (``sum_c |S_c|² = 1`` in the support) or None for
        calibration-free methods (NLINV).
    noise_std : standard deviation of the (white) noise per k-space sample, when known.
    calib : bool ``[ky, kx]`` calibration region, when known.
    """

    kspace: torch.Tensor
    mask: torch.Tensor
    csm: torch.Tensor | None = None
    noise_std: float | None = None
    calib: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kspace.ndim != 3 or not self.kspace.is_complex():
            raise ValueError(f"kspace must be complex [C, ky, kx]: {tuple(self.kspace.shape)=}")
        if tuple(self.mask.shape) != tuple(self.kspace.shape[1:]):
            raise ValueError(f"{tuple(self.mask.shape)=} != {tuple(self.kspace.shape[1:])=}")
        if self.csm is not None and tuple(self.csm.shape) != tuple(self.kspace.shape):
            raise ValueError(f"{tuple(self.csm.shape)=} != {tuple(self.kspace.shape)=}")

    @property
    def device(self) -> torch.device:
        return self.kspace.device


@dataclass
class ReconResult:
    """A reconstructed complex image ``[ky, kx]`` plus optional extra maps (same shape).

    ``extras`` may hold e.g. ``"uncertainty"`` (per-pixel posterior std) or ``"csm"``
    (estimated coil maps ``[C, ky, kx]``); ``info`` holds scalars (iterations, λ, timings).
    """

    image: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


MethodFn = Callable[[ReconProblem, dict[str, Any]], ReconResult]
_METHODS: dict[str, MethodFn] = {}
_NEEDS_CSM: dict[str, bool] = {}


def register_method(name: str, needs_csm: bool = True) -> Callable[[MethodFn], MethodFn]:
    """Decorator: register a reconstruction method under ``name``."""

    def deco(fn: MethodFn) -> MethodFn:
        if name in _METHODS and _METHODS[name] is not fn:
            raise ValueError(f"method {name!r} registered twice")
        _METHODS[name] = fn
        _NEEDS_CSM[name] = needs_csm
        return fn

    return deco


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


def method_names() -> list[str]:
    import mrprior.recon.methods  # noqa: F401

    return sorted(_METHODS)
