"""Array backends: ``xp`` (numpy or cupy) for coil maps and preprocessing, torch for the rest.

Arrays cross between the two with DLPack, without copies where both sides share a device.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

try:  # cupy is an optional extra: mrprior[gpu]
    import cupy as _cupy  # type: ignore[import-not-found]

    if _cupy.cuda.runtime.getDeviceCount() < 1:  # pragma: no cover - depends on machine
        _cupy = None
except Exception:  # pragma: no cover - absent or broken CUDA install
    _cupy = None


def cupy_available() -> bool:
    """True when cupy imports and sees at least one CUDA device."""
    return _cupy is not None


def get_xp(*arrays: Any) -> ModuleType:
    """Return the array module (numpy or cupy) of ``arrays``; numpy when none is a cupy array."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def xp_for_device(device: str | torch.device) -> ModuleType:
    """Array module matching a torch device: cupy for CUDA (when installed), numpy otherwise."""
    dev = torch.device(device)
    if dev.type == "cuda" and _cupy is not None:
        return _cupy
    return np


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Resolve ``"auto"``/``None`` to CUDA when available, else CPU; validate explicit names."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {dev} requested but torch sees no CUDA device")
    return dev


def to_torch(array: Any, device: str | torch.device | None = None) -> torch.Tensor:
    """Hand a numpy/cupy array (or tensor) to torch, zero-copy via DLPack where possible."""
    if isinstance(array, torch.Tensor):
        t = array
    elif isinstance(array, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(array))
    elif _cupy is not None and isinstance(array, _cupy.ndarray):
        t = torch.from_dlpack(_cupy.ascontiguousarray(array))
    else:
        t = torch.as_tensor(array)
    return t if device is None else t.to(resolve_device(device))


def from_torch(tensor: torch.Tensor, xp: ModuleType | None = None) -> Any:
    """Hand a tensor back as a numpy array (CPU) or cupy array (CUDA), via DLPack."""
    tensor = tensor.detach()
    if xp is None:
        xp = (cupy_available() and tensor.is_cuda and _cupy) or np
    if xp is np:
        return tensor.cpu().resolve_conj().numpy()
    return xp.from_dlpack(tensor.resolve_conj().contiguous())


def to_numpy(array: Any) -> np.ndarray:
    """Any array (numpy, cupy, torch) as a numpy array on the host."""
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().resolve_conj().numpy()
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return np.asarray(array)
