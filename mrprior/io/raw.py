"""ISMRMRD raw data → :class:`~mrprior.io.containers.KSpace` groups, for files and streams alike.

:class:`AcquisitionBuffer` is the one place acquisitions become k-space: the file reader
(:func:`read_raw`, :func:`iter_kspace`), the Gadgetron node and the MRD server all feed it
acquisitions one at a time and reconstruct what it emits.

Grouping: acquisitions are grouped by ``(slice, contrast, phase, repetition, set, average)``.

- **2D** encodings (encoded matrix z = 1 and no ``kspace_encoding_step_2`` range in the limits):
  a group is emitted when an acquisition carrying ``LAST_IN_SLICE`` arrives.
- **3D** encodings (encoded matrix z > 1, or encoding limits of ``kspace_encoding_step_2`` wider
  than one partition): a group is a whole volume. Some sequences flag ``LAST_IN_SLICE`` on the
  last line of *every* partition, so that flag alone does not end a volume: the group is emitted
  on ``LAST_IN_SLICE`` only when its partitions are complete (see :meth:`AcquisitionBuffer.add`),
  or on ``LAST_IN_ENCODE_STEP2`` / ``LAST_IN_REPETITION`` together with ``LAST_IN_SLICE``.
- ``LAST_IN_MEASUREMENT`` emits every group still open; whatever is left at the end of the
  stream is emitted by :meth:`AcquisitionBuffer.flush` (as python-ismrmrd-server does).

Noise scans (``NOISE_MEASUREMENT``) are kept and attached to every group emitted after them.
Lines flagged ``PARALLEL_CALIBRATION`` go to the calibration region only; lines flagged
``PARALLEL_CALIBRATION_AND_IMAGING`` to both the calibration region and the imaging mask.

Placement: line ``ky`` goes to row ``ky - center_ky + ny // 2`` and partition ``kz`` to plane
``kz - center_kz + nz // 2`` (centres from the encoding limits, else half the matrix); readout
samples are placed so that ``center_sample`` lands at ``nx_enc // 2`` (so asymmetric echoes are
zero-filled). Data stay unwhitened, and at the *encoded* matrix size unless the buffer is
given a ``readout`` reduction: readout-oversampling removal and noise prewhitening are the
pipeline's (:func:`mrprior.pipeline.preprocess`; its buffers,
:func:`mrprior.pipeline.acquisition_buffer`, remove the oversampling line by line with the same
function, which halves the memory of a buffered 3D volume).
One complex64 array per group holds the data (imaging lines replace calibration-only lines at
the same position; repeated lines are averaged), so a 3D volume costs its k-space size once.

Bad data in one group (NaN samples, a line or partition outside the encoding limits or the
matrix, a readout longer than the matrix, a changed coil count, partitions missing from a 3D
volume) fail **that group only**: its acquisitions are dropped, the error (naming the group and
the problem) is kept in :attr:`AcquisitionBuffer.errors`, and the other groups are still
emitted. :meth:`AcquisitionBuffer.raise_errors` raises them together at the end of the stream.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import h5py
import ismrmrd
import ismrmrd.xsd
import numpy as np

from mrprior.errors import DataError, HeaderError
from mrprior.io.containers import EncodedCentre, EncodingInfo, Indices, KSpace
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


class ReadoutReducer(Protocol):
    """Reduces each zero-filled encoded readout ``[C, nx_enc]`` to ``[C, size]`` as it arrives
    (e.g. readout-oversampling removal); ``mask`` maps the encoded samples a line covers
    (bool ``[nx_enc]``) to the reduced positions it covers (bool ``[size]``). The lines of the
    central ``keep_centre`` lines (and partitions) of k-space are also kept unreduced, as the
    group's :class:`~mrprior.io.containers.EncodedCentre` (0: none)."""

    size: int
    keep_centre: int

    def __call__(self, line: np.ndarray) -> np.ndarray: ...

    def mask(self, covered: np.ndarray) -> np.ndarray: ...


@dataclass
class _Group:
    """Accumulates the lines of one group (2D groups use kz = 1 internally).

    ``data`` holds imaging lines, or calibration-only lines where no imaging line was acquired;
    ``img_count`` / ``cal_count`` count imaging / calibration-only lines per ``(kz, ky)``.
    """

    indices: Indices
    shape: tuple[int, int, int, int]  # C, kz, ky, kx
    data: np.ndarray = field(init=False)
    img_count: np.ndarray = field(init=False)
    cal_count: np.ndarray = field(init=False)
    img_mask: np.ndarray = field(init=False)
    cal_mask: np.ndarray = field(init=False)
    reference: ismrmrd.AcquisitionHeader | None = None
    first: ismrmrd.AcquisitionHeader | None = None
    dwell_us: float = 0.0
    n_acq: int = 0
    error: DataError | None = None
    # the k-space centre at the encoded readout [C, cz, cy, nx_enc] from (z0, y0), or None
    centre: np.ndarray | None = None
    centre_start: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        _, nz, ny, nx = self.shape
        self.data = np.zeros(self.shape, np.complex64)
        self.img_count = np.zeros((nz, ny), np.int32)
        self.cal_count = np.zeros((nz, ny), np.int32)
        self.img_mask = np.zeros((nz, ny, nx), bool)
        self.cal_mask = np.zeros((nz, ny, nx), bool)

    def keep_centre(self, size: int, nx_enc: int) -> None:
        """Also hold the central ``size`` lines (and partitions) at the encoded readout."""
        c, nz, ny, _ = self.shape
        cz, cy = min(size, nz), min(size, ny)
        self.centre_start = (nz // 2 - cz // 2, ny // 2 - cy // 2)
        self.centre = np.zeros((c, cz, cy, nx_enc), np.complex64)

    def centre_line(self, plane: int, row: int) -> np.ndarray | None:
        """The encoded-readout line ``[C, nx_enc]`` of ``(plane, row)`` when it is in the box."""
        if self.centre is None:
            return None
        z, y = plane - self.centre_start[0], row - self.centre_start[1]
        _, cz, cy, _ = self.centre.shape
        return self.centre[:, z, y] if 0 <= z < cz and 0 <= y < cy else None

    def fail(self, error: DataError) -> None:
        """Mark the group failed and free its arrays (later acquisitions are dropped)."""
        self.error = error
        empty = np.zeros((0, 0, 0, 0), np.complex64)
        self.data = empty
        self.centre = None
        self.img_mask = self.cal_mask = np.zeros((0, 0, 0), bool)

    def partitions_present(self) -> np.ndarray:
        """bool ``[nz]``: partitions holding at least one line (imaging or calibration)."""
        return ((self.img_count + self.cal_count) > 0).any(axis=1)


def _average_repeated(lines: np.ndarray, counts: np.ndarray) -> None:
    """Divide the lines ``[C, kz, ky, kx]`` acquired ``counts [kz, ky]`` > 1 times by their count,
    in place (no copy of the volume)."""
    repeated = counts > 1
    if repeated.any():
        lines[:, repeated] /= counts[repeated][None, :, None].astype(np.float32)


def _runs(missing: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive ``(start, stop)`` index pairs of the runs of True in a 1D bool array."""
    padded = np.concatenate([[False], missing, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


class AcquisitionBuffer:
    """Collect ISMRMRD acquisitions into :class:`KSpace` groups (see the module docstring).

    Parameters
    ----------
    header : parsed header, or its XML text.
    encoding_index : which ``<encoding>`` of the header the data belong to.
    readout : optional reduction applied to every readout as it arrives (the pipeline passes
        its readout-oversampling removal, so a 3D volume is held at the recon readout size;
        see :func:`mrprior.pipeline.acquisition_buffer`). Emitted groups then carry
        ``oversampling_removed=True``.

    Attributes
    ----------
    errors : the :class:`DataError` of every group that failed so far (each names its group).

    Raises
    ------
    HeaderError
        Header without encoding information, or 3D limits with an encoded matrix z = 1.
    DataError
        Non-Cartesian trajectory (at construction); while adding: a noise scan whose coil count
        differs from earlier acquisitions. Problems of one group are kept in :attr:`errors`.
    """

    def __init__(
        self, header: Any, encoding_index: int = 0, readout: ReadoutReducer | None = None
    ) -> None:
        self.header = parse_header(header)
        self.readout = readout
        self.encoding = EncodingInfo.from_header(self.header, encoding_index)
        if self.encoding.trajectory not in CARTESIAN_TRAJECTORIES:
            raise DataError(
                f"trajectory {self.encoding.trajectory!r} is not supported: only Cartesian data "
                "can be reconstructed"
            )
        lim = self.encoding.limits.get("kspace_encoding_step_2")
        if self.encoding.encoded_matrix[2] == 1 and lim is not None and lim.size > 1:
            raise HeaderError(
                f"ISMRMRD header: kspace_encoding_step_2 limits [{lim.minimum}, {lim.maximum}] "
                "describe a 3D encoding but the encoded matrix size z is 1"
            )
        self.is_3d = self.encoding.is_3d
        self._groups: dict[tuple[int, ...], _Group] = {}
        self._noise: list[np.ndarray] = []
        self._noise_dwell_us: float | None = None
        self._coils: int | None = None
        self._kz_extent: tuple[int, int, Indices] | None = None
        self.errors: list[DataError] = []
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
        """Add one acquisition; return the groups it completes (usually none or one).

        A 2D group completes on ``LAST_IN_SLICE``. A 3D group completes on ``LAST_IN_SLICE``
        together with ``LAST_IN_ENCODE_STEP2`` or ``LAST_IN_REPETITION``, or on ``LAST_IN_SLICE``
        alone once its partitions are complete: every partition of the encoding limits' range
        has a line except gaps the acquisition allows (runs of empty partitions no longer than
        the header's kz acceleration minus one inside the volume and at its edges).
        ``LAST_IN_MEASUREMENT`` completes every open group.
        """
        self.n_added += 1
        number = self.n_added - 1
        if any(acq.is_flag_set(f) for f in _SKIP):
            return []
        data = np.asarray(acq.data)
        if acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            self._check_coils(acq, number)
            self._check_finite(acq, data, number)
            self._noise.append(data.astype(np.complex64, copy=True))
            if acq.sample_time_us > 0:
                self._noise_dwell_us = float(acq.sample_time_us)
            return []
        indices = Indices.from_acquisition(acq)
        key = indices.as_tuple()
        group = self._groups.get(key)
        if group is None or group.error is None:
            try:
                self._check_coils(acq, number)
                self._check_finite(acq, data, number)
                group = self._place(acq, data, number, indices)
            except DataError as exc:
                if group is None:
                    group = _Group(indices=indices, shape=(0, 0, 0, 0))
                    self._groups[key] = group
                group.fail(DataError(f"{indices.label()}: {exc}"))
                logger.warning("%s; the group's acquisitions are dropped", group.error)
        out: list[KSpace] = []
        if acq.is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT):
            for k in list(self._groups):
                out += self._close(self._groups.pop(k))
        elif acq.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE) and self._ends_group(acq, group):
            out += self._close(self._groups.pop(key))
        return out

    def flush(self) -> list[KSpace]:
        """Emit every group still open (end of stream)."""
        out = []
        for key in list(self._groups):
            group = self._groups.pop(key)
            if group.error is None and group.reference is None and group.first is None:
                continue
            if group.error is None:
                logger.info("flushing group %s at the end of the stream", group.indices.label())
            out += self._close(group)
        return out

    def raise_errors(self) -> None:
        """Raise one :class:`DataError` listing every failed group (no-op when none failed)."""
        if not self.errors:
            return
        if len(self.errors) == 1:
            raise DataError(str(self.errors[0]))
        joined = "; ".join(str(e) for e in self.errors)
        raise DataError(f"{len(self.errors)} groups failed: {joined}")

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

    @staticmethod
    def _check_finite(acq: ismrmrd.Acquisition, data: np.ndarray, number: int) -> None:
        if not np.isfinite(data).all():
            bad = int(np.count_nonzero(~np.isfinite(data)))
            raise DataError(
                f"acquisition {number} (scan counter {acq.scan_counter}, line "
                f"{acq.idx.kspace_encode_step_1}, partition {acq.idx.kspace_encode_step_2}) "
                f"contains {bad} NaN/Inf samples"
            )

    def _kz_planes(self) -> tuple[int, int]:
        """Plane indices ``(first, last)`` the encoding limits expect to be acquired."""
        enc = self.encoding
        nz = enc.encoded_matrix[2]
        lo, hi = enc.kz_range()
        offset = nz // 2 - enc.kz_center()
        return max(lo + offset, 0), min(hi + offset, nz - 1)

    def _allowed_gap(self, present: np.ndarray, interior: bool) -> int:
        """Longest run of empty partitions that undersampling explains: the header's kz
        acceleration minus one; inside the volume also the measured kz acceleration (rounded
        up), which covers variable-density patterns whose header says 1."""
        rz = max(int(self.encoding.acceleration[1]), 1)
        if not interior:
            return rz - 1
        n = int(present.sum())
        measured = math.ceil(present.size / n) if n else present.size
        return max(rz - 1, measured)

    def _partition_problem(self, group: _Group, strict: bool) -> str | None:
        """Why a 3D group's partitions are incomplete (None if they are not).

        ``strict`` (deciding whether ``LAST_IN_SLICE`` ends the volume) also demands the edge
        partitions of the limits' range; otherwise (validating an emitted volume) edge runs are
        held to the same allowance as interior ones.
        """
        first, last = self._kz_planes()
        present = group.partitions_present()[first : last + 1]
        if not present.any():
            return "no partition of the volume holds a line"
        runs = _runs(~present)
        offset = self.encoding.kz_center() - self.encoding.encoded_matrix[2] // 2 + first
        bad = []
        for a, b in runs:
            edge = a == 0 or b == present.size - 1
            allowed = self._allowed_gap(present, interior=not (strict and edge))
            if b - a + 1 > allowed:
                bad.append((a + offset, b + offset))
        if not bad:
            return None
        where = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in bad)
        lo, hi = first + offset, last + offset
        return (
            f"missing partitions: kspace_encode_step_2 {where} of {lo}..{hi} have no acquisitions "
            f"(more than the kz acceleration R = {self.encoding.acceleration[1]} of the header "
            "explains)"
        )

    def _ends_group(self, acq: ismrmrd.Acquisition, group: _Group) -> bool:
        """Whether ``LAST_IN_SLICE`` on ``acq`` ends ``group`` (always in 2D, see :meth:`add`)."""
        if not self.is_3d or group.error is not None:
            return True
        if acq.is_flag_set(ismrmrd.ACQ_LAST_IN_ENCODE_STEP2) or acq.is_flag_set(
            ismrmrd.ACQ_LAST_IN_REPETITION
        ):
            return True
        return self._partition_problem(group, strict=True) is None

    def _place(
        self, acq: ismrmrd.Acquisition, data: np.ndarray, number: int, indices: Indices
    ) -> _Group:
        enc = self.encoding
        nx, ny, nz = enc.encoded_matrix
        ky = int(acq.idx.kspace_encode_step_1)
        kz = int(acq.idx.kspace_encode_step_2)
        for name, value in (("kspace_encoding_step_1", ky), ("kspace_encoding_step_2", kz)):
            lim = enc.limits.get(name)
            if lim is not None and not lim.minimum <= value <= lim.maximum:
                what = "partition" if name.endswith("2") else "line"
                raise DataError(
                    f"acquisition {number}: {what} {name} = {value} outside the encoding limits "
                    f"[{lim.minimum}, {lim.maximum}]"
                )
        row = ky - enc.ky_center() + ny // 2
        plane = kz - enc.kz_center() + nz // 2
        if not 0 <= row < ny:
            raise DataError(
                f"acquisition {number}: line {ky} does not fit the encoded matrix (y = {ny})"
            )
        if not 0 <= plane < nz:
            raise DataError(
                f"acquisition {number}: partition kspace_encode_step_2 = {kz} does not fit the "
                f"encoded matrix (z = {nz}, centre {enc.kz_center()})"
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
        key = indices.as_tuple()
        group = self._groups.get(key)
        width = nx if self.readout is None else self.readout.size
        if group is None:
            group = _Group(indices=indices, shape=(self._coils or data.shape[0], nz, ny, width))
            if self.readout is not None and self.readout.keep_centre > 0 and width < nx:
                group.keep_centre(self.readout.keep_centre, nx)
            self._groups[key] = group
        stop = start + samples.shape[1]
        full: np.ndarray | None = None
        if self.readout is None:
            cols: slice | np.ndarray = slice(start, stop)
        else:  # reduce the zero-filled encoded line as it arrives
            full = np.zeros((samples.shape[0], nx), np.complex64)
            full[:, start:stop] = samples
            covered = np.zeros(nx, bool)
            covered[start:stop] = True
            samples = self.readout(full)
            cols = np.flatnonzero(self.readout.mask(covered))
            samples = samples[:, cols] if cols.size != width else samples
            if cols.size == width:
                cols = slice(0, width)
        calib_only = acq.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
        both = acq.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
        if calib_only or both:
            group.cal_mask[plane, row, cols] = True
        line = group.data[:, plane, row]
        encoded = None if full is None else group.centre_line(plane, row)
        if calib_only:
            if group.img_count[plane, row] == 0:  # imaging lines take precedence
                line[:, cols] += samples
                if encoded is not None:
                    encoded += full
            group.cal_count[plane, row] += 1
        else:
            if group.img_count[plane, row] == 0 and group.cal_count[plane, row] > 0:
                line[:] = 0  # drop calibration-only data: an imaging line replaces it
                if encoded is not None:
                    encoded[:] = 0
            line[:, cols] += samples
            if encoded is not None:
                encoded += full
            group.img_count[plane, row] += 1
            group.img_mask[plane, row, cols] = True
            if group.reference is None:
                group.reference = ismrmrd.AcquisitionHeader.from_buffer_copy(acq.getHead())
                group.dwell_us = float(acq.sample_time_us)
        if group.first is None:
            group.first = ismrmrd.AcquisitionHeader.from_buffer_copy(acq.getHead())
            group.dwell_us = group.dwell_us or float(acq.sample_time_us)
        group.n_acq += 1
        return group

    def _close(self, group: _Group) -> list[KSpace]:
        """Validate and emit a finished group; a failed one goes to :attr:`errors` instead."""
        if group.error is None and self.is_3d:
            problem = self._partition_problem(group, strict=False)
            if problem is None:
                problem = self._check_kz_extent(group)
            if problem is not None:
                group.fail(DataError(f"{group.indices.label()}: {problem}"))
                logger.warning("%s; the group is dropped", group.error)
        if group.error is not None:
            self.errors.append(group.error)
            return []
        return [self._emit(group)]

    def _check_kz_extent(self, group: _Group) -> str | None:
        """Partitions acquired must span the same range in every group (repetitions, contrasts,
        ...) of the measurement, within the header's kz acceleration; the first group emitted
        sets the range."""
        present = np.flatnonzero(group.partitions_present())
        extent = (int(present[0]), int(present[-1]))
        if self._kz_extent is None:
            self._kz_extent = (*extent, group.indices)
            return None
        lo, hi, ref = self._kz_extent
        tol = max(int(self.encoding.acceleration[1]), 1) - 1
        if abs(extent[0] - lo) <= tol and abs(extent[1] - hi) <= tol:
            return None
        shift = self.encoding.kz_center() - self.encoding.encoded_matrix[2] // 2
        return (
            f"inconsistent partitions: kspace_encode_step_2 spans {extent[0] + shift}.."
            f"{extent[1] + shift} here but {lo + shift}..{hi + shift} in {ref.label()}"
        )

    def _emit(self, group: _Group) -> KSpace:
        n = np.where(group.img_count > 0, group.img_count, group.cal_count)
        _average_repeated(group.data, n)
        centre = None
        if group.centre is not None:
            (z0, y0), (_, cz, cy, _) = group.centre_start, group.centre.shape
            _average_repeated(group.centre, n[z0 : z0 + cz, y0 : y0 + cy])
            centre = (
                EncodedCentre(group.centre, group.centre_start)
                if self.is_3d
                else EncodedCentre(group.centre[:, 0], group.centre_start[1:])
            )
        data, mask, calib = group.data, group.img_mask, group.cal_mask
        if not self.is_3d:
            data, mask, calib = data[:, 0], mask[0], calib[0]
        reference = group.reference if group.reference is not None else group.first
        if group.reference is None:
            logger.warning("group %s has calibration lines only", group.indices.label())
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
            oversampling_removed=self.readout is not None,
            encoded_centre=centre,
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
    path: str | Path,
    dataset: str = "dataset",
    header: Any | None = None,
    readout: ReadoutReducer | None = None,
) -> Iterator[KSpace]:
    """Yield the k-space groups of a raw file as they complete (same buffer as streams;
    ``readout`` as in :class:`AcquisitionBuffer`). Groups with bad data are raised as one
    :class:`DataError` after every good group was yielded.

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
        buffer = AcquisitionBuffer(header, readout=readout)
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
        buffer.raise_errors()  # after every good group: nothing lost
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
