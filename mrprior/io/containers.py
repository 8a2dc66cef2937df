"""Typed containers that carry their ISMRMRD header: encoding description, k-space, images.

Shapes (see /work/shared/DESIGN.md):

- :class:`KSpace` ``data``: complex64 ``[C, ky, kx]`` for a 2D slice, ``[C, kz, ky, kx]`` for a
  3D volume; readout (kx) last. Unsampled positions are zero.
- ``mask`` / ``calib``: bool with the spatial shape of ``data`` (``[ky, kx]`` or ``[kz, ky, kx]``).
- :class:`ImageSeries` ``image``: complex64 ``[ny, nx]`` at the recon matrix size, or
  ``[nz, ny, nx]`` for a 3D volume (z = partition direction, x = readout last).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import ismrmrd
import numpy as np
import torch

from mrprior.backend import get_xp, to_numpy, to_torch, xp_for_device
from mrprior.errors import HeaderError

#: Encoding counters that split acquisitions into independent groups (one KSpace each).
GROUP_INDICES: tuple[str, ...] = ("slice", "contrast", "phase", "repetition", "set", "average")

#: Encoding-limit names read from the header.
LIMIT_NAMES: tuple[str, ...] = (
    "kspace_encoding_step_1",
    "kspace_encoding_step_2",
    "average",
    "slice",
    "contrast",
    "phase",
    "repetition",
    "set",
    "segment",
)


@dataclass(frozen=True)
class Limit:
    """One ISMRMRD encoding limit (inclusive ``minimum``..``maximum``, k-space ``center``)."""

    minimum: int
    maximum: int
    center: int

    @property
    def size(self) -> int:
        return self.maximum - self.minimum + 1


@dataclass(frozen=True)
class Indices:
    """The encoding counters that identify one group of acquisitions (and its images)."""

    slice: int = 0
    contrast: int = 0
    phase: int = 0
    repetition: int = 0
    set: int = 0
    average: int = 0

    @classmethod
    def from_acquisition(cls, acq: Any) -> Indices:
        """Read the counters from an ``ismrmrd.Acquisition`` or ``AcquisitionHeader``."""
        return cls(**{name: int(getattr(acq.idx, name)) for name in GROUP_INDICES})

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, n) for n in GROUP_INDICES)

    def label(self) -> str:
        """Readable name of the group: its non-zero counters (``"repetition 1, set 2"``), or
        ``"slice 0"``."""
        parts = [f"{n} {getattr(self, n)}" for n in GROUP_INDICES if getattr(self, n)]
        return ", ".join(parts) or "slice 0"


def _get(obj: Any, path: str, what: str) -> Any:
    """Follow a dotted attribute path of an xsd header; HeaderError naming ``what`` if absent."""
    cur = obj
    for part in path.split("."):
        cur = getattr(cur, part, None)
        if cur is None:
            raise HeaderError(f"ISMRMRD header has no {what} ({path})")
    return cur


@dataclass(frozen=True)
class EncodingInfo:
    """What the ISMRMRD header says about one encoding.

    Attributes
    ----------
    encoded_matrix, recon_matrix : ``(x, y, z)`` matrix sizes of encoded and recon space.
    encoded_fov, recon_fov : ``(x, y, z)`` fields of view in mm.
    limits : encoding limits by name (``kspace_encoding_step_1``, ``slice``, ``repetition``, ...);
        absent limits are missing from the mapping.
    trajectory : the header's trajectory name (``cartesian``, ``radial``, ...).
    acceleration : ``(ky, kz)`` parallel-imaging acceleration factors from the header (1 if absent).
    calibration_mode : the header's ``calibrationMode`` (``embedded``, ``interleaved``, ...) or None.
    """

    encoded_matrix: tuple[int, int, int]
    encoded_fov: tuple[float, float, float]
    recon_matrix: tuple[int, int, int]
    recon_fov: tuple[float, float, float]
    limits: dict[str, Limit]
    trajectory: str
    acceleration: tuple[int, int] = (1, 1)
    calibration_mode: str | None = None
    receiver_channels: int | None = None

    @classmethod
    def from_header(cls, header: Any, index: int = 0) -> EncodingInfo:
        """Build from an ``ismrmrd.xsd.ismrmrdHeader``; HeaderError names a missing field."""
        encodings = getattr(header, "encoding", None)
        if not encodings:
            raise HeaderError("ISMRMRD header has no <encoding> section")
        if index >= len(encodings):
            raise HeaderError(f"ISMRMRD header has no encoding number {index}")
        enc = encodings[index]
        mats = {}
        fovs = {}
        for space in ("encodedSpace", "reconSpace"):
            m = _get(enc, f"{space}.matrixSize", f"{space} matrix size")
            f = _get(enc, f"{space}.fieldOfView_mm", f"{space} field of view")
            mats[space] = tuple(
                int(_get(m, ax, f"{space} matrix size {ax}")) if ax != "z" else int(m.z or 1)
                for ax in ("x", "y", "z")
            )
            fovs[space] = tuple(float(_get(f, ax, f"{space} field of view {ax}")) for ax in "xyz")
            if min(mats[space]) < 1:
                raise HeaderError(f"ISMRMRD header: {space} matrix size {mats[space]} not positive")
        traj = getattr(enc, "trajectory", None)
        if traj is None:
            raise HeaderError("ISMRMRD header has no trajectory (encoding.trajectory)")
        traj_name = str(getattr(traj, "value", traj)).lower()
        limits: dict[str, Limit] = {}
        enc_limits = getattr(enc, "encodingLimits", None)
        if enc_limits is not None:
            for name in LIMIT_NAMES:
                lim = getattr(enc_limits, name, None)
                if lim is not None:
                    limits[name] = Limit(
                        int(lim.minimum or 0), int(lim.maximum or 0), int(lim.center or 0)
                    )
        accel = (1, 1)
        calib_mode = None
        pi = getattr(enc, "parallelImaging", None)
        if pi is not None:
            af = getattr(pi, "accelerationFactor", None)
            if af is not None:
                accel = (int(af.kspace_encoding_step_1 or 1), int(af.kspace_encoding_step_2 or 1))
            cm = getattr(pi, "calibrationMode", None)
            if cm is not None:
                calib_mode = str(getattr(cm, "value", cm))
        asi = getattr(header, "acquisitionSystemInformation", None)
        channels = getattr(asi, "receiverChannels", None) if asi is not None else None
        return cls(
            encoded_matrix=mats["encodedSpace"],  # type: ignore[arg-type]
            encoded_fov=fovs["encodedSpace"],  # type: ignore[arg-type]
            recon_matrix=mats["reconSpace"],  # type: ignore[arg-type]
            recon_fov=fovs["reconSpace"],  # type: ignore[arg-type]
            limits=limits,
            trajectory=traj_name,
            acceleration=accel,
            calibration_mode=calib_mode,
            receiver_channels=int(channels) if channels is not None else None,
        )

    @property
    def readout_oversampling(self) -> float:
        """Encoded over recon matrix size along the readout (2.0 for the usual 2× oversampling)."""
        return self.encoded_matrix[0] / self.recon_matrix[0]

    @property
    def is_3d(self) -> bool:
        """3D encoding: encoded matrix z > 1, or ``kspace_encoding_step_2`` limits wider than
        one partition."""
        lim = self.limits.get("kspace_encoding_step_2")
        return self.encoded_matrix[2] > 1 or (lim is not None and lim.size > 1)

    @property
    def partition_thickness(self) -> float:
        """Thickness in mm of one reconstructed partition of a 3D encoding: encoded FOV z /
        encoded matrix z (the recon space has the same spacing; it may hold fewer partitions
        when the sequence oversamples the slab)."""
        return self.encoded_fov[2] / self.encoded_matrix[2]

    def ky_center(self) -> int:
        """Encode-step-1 counter of the k-space centre (header limit, else half the matrix)."""
        lim = self.limits.get("kspace_encoding_step_1")
        return lim.center if lim is not None else self.encoded_matrix[1] // 2

    def kz_center(self) -> int:
        """Encode-step-2 counter of the k-space centre (header limit, else half the matrix)."""
        lim = self.limits.get("kspace_encoding_step_2")
        return lim.center if lim is not None else self.encoded_matrix[2] // 2

    def kz_range(self) -> tuple[int, int]:
        """Encode-step-2 counters ``(first, last)`` the acquisition covers: the encoding limits
        (narrower than the matrix with partial Fourier in kz), else the whole matrix."""
        lim = self.limits.get("kspace_encoding_step_2")
        if lim is not None:
            return lim.minimum, lim.maximum
        nz = self.encoded_matrix[2]
        c = self.kz_center()
        return c - nz // 2, c - nz // 2 + nz - 1

    def image_number(self, indices: Indices) -> int:
        """A 1-based image number unique per ``indices`` (slice fastest, then phase, contrast,
        repetition, set, average), from the encoding limits; stable across processes."""
        number = 0
        stride = 1
        for name in ("slice", "phase", "contrast", "repetition", "set", "average"):
            lim = self.limits.get(name)
            size = lim.maximum + 1 if lim is not None else 1
            value = getattr(indices, name)
            size = max(size, value + 1)
            number += value * stride
            stride *= size
        return number + 1


def _copy_header(head: ismrmrd.AcquisitionHeader) -> ismrmrd.AcquisitionHeader:
    return ismrmrd.AcquisitionHeader.from_buffer_copy(head)


@dataclass(frozen=True)
class EncodedCentre:
    """The k-space centre of a group kept at the encoded (oversampled) readout, for coil maps
    computed over the encoded field of view (:func:`mrprior.mr.espirit.espirit`'s
    ``encoded``): an object that fills the recon field of view along the readout would
    otherwise wrap around in the maps.

    Attributes
    ----------
    data : complex64 ``[C, cy, kx_enc]`` (2D) or ``[C, cz, cy, kx_enc]`` (3D), numpy or cupy:
        the group's lines (imaging and calibration) in the box, zero where none was acquired.
    start : ``(y0,)`` or ``(z0, y0)``: the box's first line / partition in the group's grid.
    """

    data: Any
    start: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.data.ndim not in (3, 4) or len(self.start) != self.data.ndim - 2:
            raise ValueError(
                f"encoded centre must be [C, (cz,) cy, kx] with one start per phase axis: "
                f"{self.data.shape=}, {self.start=}"
            )

    def replace(self, data: Any) -> EncodedCentre:
        """The same box with other data (e.g. prewhitened or on another device)."""
        return EncodedCentre(data, self.start)


@dataclass
class KSpace:
    """The k-space of one group of acquisitions (one slice / contrast / phase / repetition /
    set / average), with the header information needed to reconstruct it.

    Attributes
    ----------
    data : complex64 ``[C, ky, kx]`` (2D) or ``[C, kz, ky, kx]`` (3D); numpy or cupy. Holds every
        acquired line: imaging lines and calibration-only lines (those sit where ``calib`` is
        True and ``mask`` is False). Unacquired positions are zero.
    mask : bool ``[ky, kx]`` (``[kz, ky, kx]``): positions acquired for imaging (R = size / sum).
    calib : bool, same shape as ``mask``: positions acquired as parallel-imaging calibration
        (``PARALLEL_CALIBRATION`` or ``PARALLEL_CALIBRATION_AND_IMAGING``).
    encoding : the header's encoding description.
    reference : the ``ismrmrd.AcquisitionHeader`` of the first imaging acquisition of the group
        (geometry: position, read/phase/slice directions, table position; time stamps).
    indices : the group's encoding counters.
    noise : complex64 ``[C, N]`` noise-scan samples seen before this group was emitted, or None.
    noise_dwell_us : dwell time of the noise samples in µs (None if unknown).
    dwell_us : dwell time of the imaging samples in µs.
    prewhitened, oversampling_removed : processing state (set by the pipeline's preprocessing).
    encoded_centre : the k-space centre at the encoded readout when the readout oversampling
        was removed (:class:`EncodedCentre`, prewhitened with ``data``), or None.
    """

    data: Any
    mask: Any
    calib: Any
    encoding: EncodingInfo
    reference: ismrmrd.AcquisitionHeader
    indices: Indices = field(default_factory=Indices)
    noise: np.ndarray | None = None
    noise_dwell_us: float | None = None
    dwell_us: float = 0.0
    prewhitened: bool = False
    oversampling_removed: bool = False
    encoded_centre: EncodedCentre | None = None

    def __post_init__(self) -> None:
        if self.data.ndim not in (3, 4):
            raise ValueError(f"data must be [C, ky, kx] or [C, kz, ky, kx]: {self.data.shape=}")
        if tuple(self.mask.shape) != tuple(self.data.shape[1:]):
            raise ValueError(f"{self.mask.shape=} does not match {self.data.shape=}")
        if tuple(self.calib.shape) != tuple(self.mask.shape):
            raise ValueError(f"{self.calib.shape=} != {self.mask.shape=}")
        if self.noise is not None and (self.noise.ndim != 2 or self.noise.shape[0] != self.coils):
            raise ValueError(f"noise must be [C, N] with C={self.coils}: {self.noise.shape=}")
        centre = self.encoded_centre
        if centre is not None and (
            centre.data.ndim != self.data.ndim or centre.data.shape[0] != self.coils
        ):
            raise ValueError(
                f"encoded centre {centre.data.shape} does not fit data {self.data.shape}"
            )

    @property
    def coils(self) -> int:
        return int(self.data.shape[0])

    @property
    def is_3d(self) -> bool:
        return self.data.ndim == 4

    @property
    def acceleration(self) -> float:
        """R = number of positions / number acquired for imaging."""
        xp = get_xp(self.mask)
        n = int(xp.count_nonzero(self.mask))
        return float(self.mask.size) / n if n else float("inf")

    @property
    def imaging_data(self) -> Any:
        """``data`` with everything outside ``mask`` set to zero (the imaging measurement)."""
        return self.data * self.mask[None]

    @property
    def xp(self) -> ModuleType:
        return get_xp(self.data)

    def replace(self, **changes: Any) -> KSpace:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to(self, device: str | torch.device) -> KSpace:
        """The same k-space with its arrays on ``device``'s array module (cupy for CUDA when
        installed, else numpy). Geometry and noise samples stay on the host."""
        xp = xp_for_device(device)
        if xp is get_xp(self.data):
            return self
        move = to_numpy if xp is np else xp.asarray
        centre = self.encoded_centre
        return self.replace(
            data=move(self.data),
            mask=move(self.mask),
            calib=move(self.calib),
            encoded_centre=None if centre is None else centre.replace(move(centre.data)),
        )

    def to_torch(
        self, device: str | torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(data, mask, calib)`` as torch tensors on ``device`` (DLPack hand-over)."""
        return (
            to_torch(self.data, device),
            to_torch(self.mask, device),
            to_torch(self.calib, device),
        )

    def copy_reference(self) -> ismrmrd.AcquisitionHeader:
        """A copy of the reference acquisition header (safe to modify)."""
        return _copy_header(self.reference)


@dataclass
class ImageSeries:
    """One reconstructed image (2D slice or 3D volume) with extra maps and the geometry to
    write it as ISMRMRD.

    Attributes
    ----------
    image : complex64 ``[ny, nx]`` at the recon matrix size (numpy, host), or ``[nz, ny, nx]``
        for a 3D volume (recon matrix z along the partition direction).
    extras : extra maps by name: maps shaped like ``image`` (e.g. ``"uncertainty"``) or other
        arrays (e.g. estimated coil maps ``"csm"`` ``[C, ny, nx]``), float32/complex64 numpy.
    indices : the encoding counters of the source k-space group.
    reference : acquisition header the geometry is copied from.
    encoding : encoding description; ``encoding.recon_fov`` is the image field of view.
    method : name of the reconstruction method.
    info : scalars from the method and the pipeline (iterations, timings, R, ...).
    """

    image: np.ndarray
    encoding: EncodingInfo
    reference: ismrmrd.AcquisitionHeader
    indices: Indices = field(default_factory=Indices)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    method: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim not in (2, 3):
            raise ValueError(f"image must be [ny, nx] or [nz, ny, nx]: {self.image.shape=}")

    @property
    def is_volume(self) -> bool:
        """True for a 3D volume ``[nz, ny, nx]``."""
        return self.image.ndim == 3

    @property
    def field_of_view(self) -> tuple[float, float, float]:
        """Image field of view (x, y, z) in mm: the recon space FOV."""
        return self.encoding.recon_fov

    @property
    def magnitude(self) -> np.ndarray:
        return np.abs(self.image).astype(np.float32)

    def __deepcopy__(self, memo: dict[int, Any]) -> ImageSeries:
        return dataclasses.replace(
            self,
            image=self.image.copy(),
            extras={k: v.copy() for k, v in self.extras.items()},
            reference=_copy_header(self.reference),
            info=copy.deepcopy(self.info, memo),
        )
