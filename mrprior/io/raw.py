"""ISMRMRD raw data → :class:`~mrprior.io.containers.KSpace` groups, for files and streams alike.

:class:`AcquisitionBuffer` is the one place acquisitions become k-space: the file reader
(:func:`read_raw`, :func:`iter_kspace`), the Gadgetron node and the MRD server all feed it
acquisitions one at a time and reconstruct what it emits.

Grouping: acquisitions are grouped by ``(slice, contrast, phase, repetition, set, average)``; a
group is emitted when an acquisition carrying ``LAST_IN_SLICE`` arrives, and whatever is left is
emitted by :meth:`AcquisitionBuffer.flush` at the end of the stream (as python-ismrmrd-server does).
Noise scans (``NOISE_MEASUREMENT``) are kept and attached to every group emitted after them.
Lines flagged ``PARALLEL_CALIBRATION`` go to the calibration region only; lines flagged
``PARALLEL_CALIBRATION_AND_IMAGING`` to both the calibration region and the imaging mask.

Placement: line ``ky`` goes to row ``ky - center_ky + ny // 2`` (``center_ky`` from the encoding
limits); readout samples are placed so that ``center_sample`` lands at ``nx_enc // 2`` (so
asymmetric echoes are zero-filled). Data stay at the *encoded* matrix size and unwhitened:
readout-oversampling removal and noise prewhitening happen in one place,
:func:`mrprior.pipeline.preprocess`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import ismrmrd
import ismrmrd.xsd
import numpy as np

from mrprior.errors import DataError, HeaderError
from mrprior.io.containers import EncodingInfo, Indices, KSpace
from mrprior.io.twix import is_twix, iter_twix_acquisitions, read_twix_header, twix_recon_header

logger = logging.getLogger(__name__)

#: Acquisitions with any of these flags carry no imaging data for a Cartesian recon; skipped.
SKIPPED_FLAGS: tuple[str, ...] = (
    "ACQ_IS_NAVIGATION_DATA",
    "ACQ_IS_PHASECORR_DATA",
    "ACQ_IS_HPFEEDBACK_DATA",
    "ACQ_IS_DUMMYSCAN_DATA",
    "ACQ_IS_RTFEEDBACK_DATA",
    "ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA",
    "ACQ_IS_PHASE_STABILIZATION_REFERENCE",
    "ACQ_IS_PHASE_STABILIZATION",
)
_SKIP = tuple(getattr(ismrmrd, f) for f in SKIPPED_FLAGS if hasattr(ismrmrd, f))

#: Trajectories the Cartesian pipeline accepts.
CARTESIAN_TRAJECTORIES = ("cartesian",)


def parse_header(xml: str | bytes | Any) -> Any:
    """Parse an ISMRMRD XML header into ``ismrmrd.xsd.ismrmrdHeader``.

    Trailing NUL bytes (sent by some clients) and surrounding whitespace are stripped. A header
    object is returned unchanged.

    Raises
    ------
    HeaderError
        If the text is not a valid ISMRMRD header or has no ``<encoding>`` section.
    """
    if isinstance(xml, ismrmrd.xsd.ismrmrdHeader):
        header = xml
    else:
        if isinstance(xml, np.ndarray | np.generic):
            xml = xml.item() if xml.size == 1 else bytes(xml)
        if isinstance(xml, bytes | bytearray):
            xml = bytes(xml).rstrip(b"\0").strip()
        elif isinstance(xml, str):
            xml = xml.rstrip("\0").strip()
        else:
            raise HeaderError(f"ISMRMRD header must be XML text, got {type(xml).__name__}")
        if not xml:
            raise HeaderError("ISMRMRD header is empty")
        try:
            header = ismrmrd.xsd.CreateFromDocument(xml)
        except Exception as exc:  # xsdata raises parser errors and TypeErrors for missing fields
            raise HeaderError(f"not a valid ISMRMRD header: {exc}") from None
    if not getattr(header, "encoding", None):
        raise HeaderError("ISMRMRD header has no <encoding> section")
    return header


@dataclass
class _Group:
    """Accumulates the lines of one group (2D groups use kz = 1 internally)."""

    indices: Indices
    shape: tuple[int, int, int, int]  # C, kz, ky, kx
    img: np.ndarray = field(init=False)
    cal: np.ndarray = field(init=False)
    img_count: np.ndarray = field(init=False)
    cal_count: np.ndarray = field(init=False)
    img_mask: np.ndarray = field(init=False)
    cal_mask: np.ndarray = field(init=False)
    reference: ismrmrd.AcquisitionHeader | None = None
    first: ismrmrd.AcquisitionHeader | None = None
    dwell_us: float = 0.0
    n_acq: int = 0

    def __post_init__(self) -> None:
        _, nz, ny, nx = self.shape
        self.img = np.zeros(self.shape, np.complex64)
        self.cal = np.zeros(self.shape, np.complex64)
        self.img_count = np.zeros((nz, ny), np.int32)
        self.cal_count = np.zeros((nz, ny), np.int32)
        self.img_mask = np.zeros((nz, ny, nx), bool)
        self.cal_mask = np.zeros((nz, ny, nx), bool)


class AcquisitionBuffer:
    """Collect ISMRMRD acquisitions into :class:`KSpace` groups (see the module docstring).

    Parameters
    ----------
    header : parsed header, or its XML text.
    encoding_index : which ``<encoding>`` of the header the data belong to.

    Raises
    ------
    HeaderError
        Header without encoding information.
    DataError
        Non-Cartesian trajectory (at construction); while adding: inconsistent coil counts,
        readouts longer than the encoded matrix, NaN/Inf samples, encode steps outside the
        encoding limits.
    """

    def __init__(self, header: Any, encoding_index: int = 0) -> None:
        self.header = parse_header(header)
        self.encoding = EncodingInfo.from_header(self.header, encoding_index)
        if self.encoding.trajectory not in CARTESIAN_TRAJECTORIES:
            raise DataError(
                f"trajectory {self.encoding.trajectory!r} is not supported: only Cartesian data "
                "can be reconstructed"
            )
        self._groups: dict[tuple[int, ...], _Group] = {}
        self._noise: list[np.ndarray] = []
        self._noise_dwell_us: float | None = None
        self._coils: int | None = None
        self.n_added = 0

    # -- public -------------------------------------------------------------------------------
    @property
    def noise(self) -> np.ndarray | None:
        """All noise-scan samples so far, complex64 ``[C, N]``, or None."""
        if not self._noise:
            return None
        if len(self._noise) > 1:
            self._noise = [np.concatenate(self._noise, axis=1)]
        return self._noise[0]

    @property
    def pending(self) -> int:
        """Number of groups still being filled."""
        return len(self._groups)

    def add(self, acq: ismrmrd.Acquisition) -> list[KSpace]:
        """Add one acquisition; return the groups it completes (empty list or one KSpace)."""
        self.n_added += 1
        number = self.n_added - 1
        if any(acq.is_flag_set(f) for f in _SKIP):
            return []
        data = np.asarray(acq.data)
        self._check_coils(acq, number)
        if not np.isfinite(data).all():
            bad = int(np.count_nonzero(~np.isfinite(data)))
            raise DataError(
                f"acquisition {number} (scan counter {acq.scan_counter}, line "
                f"{acq.idx.kspace_encode_step_1}) contains {bad} NaN/Inf samples"
            )
        if acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            self._noise.append(data.astype(np.complex64, copy=True))
            if acq.sample_time_us > 0:
                self._noise_dwell_us = float(acq.sample_time_us)
            return []
        group = self._place(acq, data, number)
        if acq.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE):
            key = group.indices.as_tuple()
            return [self._emit(self._groups.pop(key))]
        return []

    def flush(self) -> list[KSpace]:
        """Emit every group not yet closed by ``LAST_IN_SLICE`` (end of stream)."""
        out = []
        for key in list(self._groups):
            group = self._groups.pop(key)
            if group.reference is None and group.first is None:
                continue
            logger.info("flushing group %s without LAST_IN_SLICE", group.indices)
            out.append(self._emit(group))
        return out

    # -- internals ----------------------------------------------------------------------------
    def _check_coils(self, acq: ismrmrd.Acquisition, number: int) -> None:
        c = int(acq.active_channels)
        if c < 1:
            raise DataError(f"acquisition {number} has no active channels")
        if self._coils is None:
            self._coils = c
            expected = self.encoding.receiver_channels
            if expected is not None and expected != c:
                logger.warning("header says %d receiver channels, data have %d", expected, c)
        elif c != self._coils:
            raise DataError(
                f"inconsistent coil count: acquisition {number} has {c} channels, earlier "
                f"acquisitions have {self._coils}"
            )

    def _place(self, acq: ismrmrd.Acquisition, data: np.ndarray, number: int) -> _Group:
        enc = self.encoding
        nx, ny, nz = enc.encoded_matrix
        ky = int(acq.idx.kspace_encode_step_1)
        kz = int(acq.idx.kspace_encode_step_2)
        for name, value in (("kspace_encoding_step_1", ky), ("kspace_encoding_step_2", kz)):
            lim = enc.limits.get(name)
            if lim is not None and not lim.minimum <= value <= lim.maximum:
                raise DataError(
                    f"acquisition {number}: {name} = {value} outside the encoding limits "
                    f"[{lim.minimum}, {lim.maximum}]"
                )
        row = ky - enc.ky_center() + ny // 2
        plane = kz - enc.kz_center() + nz // 2 if nz > 1 else 0
        if not 0 <= row < ny:
            raise DataError(
                f"acquisition {number}: line {ky} does not fit the encoded matrix (y = {ny})"
            )
        if not 0 <= plane < nz:
            raise DataError(
                f"acquisition {number}: partition {kz} does not fit the encoded matrix (z = {nz})"
            )
        ns = int(acq.number_of_samples)
        pre, post = int(acq.discard_pre), int(acq.discard_post)
        if pre + post >= ns:
            raise DataError(f"acquisition {number}: discards {pre}+{post} leave no samples")
        samples = data[:, pre : ns - post]
        center = int(acq.center_sample) - pre if acq.center_sample else (ns - pre - post) // 2
        if acq.is_flag_set(ismrmrd.ACQ_IS_REVERSE):
            samples = samples[:, ::-1]
            center = samples.shape[1] - 1 - center
        start = nx // 2 - center
        if samples.shape[1] > nx or start < 0 or start + samples.shape[1] > nx:
            raise DataError(
                f"acquisition {number}: {samples.shape[1]} readout samples (centre sample "
                f"{acq.center_sample}) do not fit the encoded matrix x = {nx} from the header"
            )
        indices = Indices.from_acquisition(acq)
        key = indices.as_tuple()
        group = self._groups.get(key)
        if group is None:
            group = _Group(indices=indices, shape=(self._coils or data.shape[0], nz, ny, nx))
            self._groups[key] = group
        stop = start + samples.shape[1]
        calib_only = acq.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
        both = acq.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
        if calib_only or both:
            group.cal[:, plane, row, start:stop] += samples
            group.cal_count[plane, row] += 1
            group.cal_mask[plane, row, start:stop] = True
        if not calib_only:
            group.img[:, plane, row, start:stop] += samples
            group.img_count[plane, row] += 1
            group.img_mask[plane, row, start:stop] = True
            if group.reference is None:
                group.reference = ismrmrd.AcquisitionHeader.from_buffer_copy(acq.getHead())
                group.dwell_us = float(acq.sample_time_us)
        if group.first is None:
            group.first = ismrmrd.AcquisitionHeader.from_buffer_copy(acq.getHead())
            group.dwell_us = group.dwell_us or float(acq.sample_time_us)
        group.n_acq += 1
        return group

    def _emit(self, group: _Group) -> KSpace:
        img_n = np.maximum(group.img_count, 1)[None, :, :, None]
        cal_n = np.maximum(group.cal_count, 1)[None, :, :, None]
        has_img = (group.img_count > 0)[None, :, :, None]
        data = np.where(has_img, group.img / img_n, group.cal / cal_n).astype(np.complex64)
        mask, calib = group.img_mask, group.cal_mask
        if self.encoding.encoded_matrix[2] == 1:
            data, mask, calib = data[:, 0], mask[0], calib[0]
        reference = group.reference if group.reference is not None else group.first
        if group.reference is None:
            logger.warning("group %s has calibration lines only", group.indices)
        assert reference is not None
        noise = self.noise
        return KSpace(
            data=data,
            mask=mask,
            calib=calib,
            encoding=self.encoding,
            reference=reference,
            indices=group.indices,
            noise=None if noise is None else noise.copy(),
            noise_dwell_us=self._noise_dwell_us,
            dwell_us=group.dwell_us,
        )


# -- files ----------------------------------------------------------------------------------
def _open(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not an ISMRMRD raw data file")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if not is_hdf5:
        raise DataError(f"{path}: not an HDF5 file, so not ISMRMRD raw data")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: truncated or corrupt HDF5 file: {exc}") from None


def _group(f: h5py.File, path: str | Path, dataset: str, need_data: bool = True) -> h5py.Group:
    try:
        if dataset not in f:
            raise DataError(
                f"{path}: not ISMRMRD raw data: no /{dataset} group (has: {sorted(f.keys())})"
            )
        grp = f[dataset]
        if "xml" not in grp:
            raise DataError(f"{path}: not ISMRMRD raw data: no /{dataset}/xml header")
        if need_data and "data" not in grp:
            raise DataError(f"{path}: no acquisitions: /{dataset}/data is missing")
    except (OSError, KeyError, RuntimeError) as exc:
        raise DataError(f"{path}: truncated or corrupt HDF5 file: {exc}") from None
    return grp


def read_header(path: str | Path, dataset: str = "dataset") -> Any:
    """Parse the XML header of an ISMRMRD file (raw data, or images written with a header).

    A Siemens twix ``.dat`` file gets the header :mod:`mrprior.io.twix` builds from its protocol.
    """
    if is_twix(path):
        return read_twix_header(path)
    with _open(path) as f:
        grp = _group(f, path, dataset, need_data=False)
        try:
            xml = grp["xml"][0]
        except (OSError, KeyError, RuntimeError, IndexError) as exc:
            raise DataError(f"{path}: cannot read /{dataset}/xml: {exc}") from None
    try:
        return parse_header(xml)
    except HeaderError as exc:
        raise HeaderError(f"{path}: {exc}") from None


def iter_acquisitions(
    path: str | Path, dataset: str = "dataset", chunk: int = 512
) -> Iterator[ismrmrd.Acquisition]:
    """Yield the acquisitions of an ISMRMRD raw data file in order (read ``chunk`` at a time).

    A Siemens twix ``.dat`` file yields its acquisitions converted by :mod:`mrprior.io.twix`.
    """
    if is_twix(path):
        yield from iter_twix_acquisitions(path)
        return
    with _open(path) as f:
        grp = _group(f, path, dataset)
        dset = grp["data"]
        n = int(dset.shape[0]) if dset.shape else 0
        if n == 0:
            raise DataError(f"{path}: no acquisitions (/{dataset}/data is empty)")
        names = dset.dtype.names or ()
        if not {"head", "data"} <= set(names):
            raise DataError(f"{path}: /{dataset}/data is not an ISMRMRD acquisition table")
        for start in range(0, n, chunk):
            try:
                rows = dset[start : min(n, start + chunk)]
            except (OSError, RuntimeError, ValueError) as exc:
                raise DataError(
                    f"{path}: truncated or corrupt HDF5 file: cannot read acquisitions "
                    f"{start}..: {exc}"
                ) from None
            for i, row in enumerate(rows):
                try:
                    acq = ismrmrd.Acquisition(row["head"].tobytes())
                    c, ns = acq.active_channels, acq.number_of_samples
                    flat = np.asarray(row["data"], np.float32)
                    if flat.size != 2 * c * ns:
                        raise DataError(
                            f"{path}: acquisition {start + i} holds {flat.size // 2} samples, "
                            f"its header says {c} channels × {ns} samples"
                        )
                    acq.data[:] = flat.view(np.complex64).reshape(c, ns)
                    td = acq.trajectory_dimensions
                    if td:
                        traj = np.asarray(row["traj"], np.float32)
                        if traj.size == ns * td:
                            acq.traj[:] = traj.reshape(ns, td)
                except (ValueError, TypeError) as exc:
                    if isinstance(exc, DataError):
                        raise
                    raise DataError(
                        f"{path}: acquisition {start + i} is malformed: {exc}"
                    ) from None
                yield acq


def iter_kspace(
    path: str | Path, dataset: str = "dataset", header: Any | None = None
) -> Iterator[KSpace]:
    """Yield the k-space groups of a raw file as they complete (same buffer as streams).

    Raises
    ------
    DataError
        Not an HDF5 file, truncated HDF5, no ``/dataset/xml`` or ``/dataset/data``, no
        acquisitions, no imaging acquisitions, or any error :class:`AcquisitionBuffer` raises.
    """
    if is_twix(path):  # Siemens .dat: acquisitions converted by mrprior.io.twix, same buffer
        header = twix_recon_header(path, header)
    elif header is None:
        with _open(path) as f:
            _group(f, path, dataset)  # structure first: "no acquisitions" before header errors
        header = read_header(path, dataset)
    try:
        buffer = AcquisitionBuffer(header)
    except DataError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    emitted = 0
    try:
        for acq in iter_acquisitions(path, dataset):
            for ks in buffer.add(acq):
                emitted += 1
                yield ks
        for ks in buffer.flush():
            emitted += 1
            yield ks
    except DataError as exc:
        msg = str(exc)
        raise type(exc)(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    if emitted == 0:
        raise DataError(f"{path}: no imaging acquisitions (only noise or skipped scans)")


def read_raw(path: str | Path, dataset: str = "dataset") -> tuple[Any, list[KSpace]]:
    """Read an ISMRMRD raw data file: ``(header, [KSpace per group])``.

    Uses :class:`AcquisitionBuffer`, the same path that streamed acquisitions take.
    """
    if is_twix(path):
        header = read_header(path)
        return header, list(iter_kspace(path, header=header))
    with _open(path) as f:
        _group(f, path, dataset)
    header = read_header(path, dataset)
    return header, list(iter_kspace(path, dataset, header=header))
