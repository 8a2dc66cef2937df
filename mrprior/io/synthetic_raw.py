"""Write simulated multi-coil Cartesian k-space (2D slices or 3D volumes) as ISMRMRD raw files.

The file looks like a scanner's: an XML header with encoded/recon spaces (encoded ``z`` = the
number of partitions of a 3D scan), FOV (encoded x doubled with readout oversampling; for 3D the
slab thickness in z), encoding limits with the k-space centres of ``kspace_encoding_step_1``
and ``_2``, and parallel-imaging information; an optional noise scan
(``ACQ_IS_NOISE_MEASUREMENT``); one acquisition per acquired phase-encode line — for 3D per
acquired ``(kz, ky)`` line with ``kspace_encode_step_2`` set, partitions in the outer loop — with
``FIRST_IN_SLICE``/``LAST_IN_SLICE`` on the first/last line of each slice or volume,
``LAST_IN_MEASUREMENT`` on the last one, calibration lines flagged
``PARALLEL_CALIBRATION_AND_IMAGING`` (inside the imaging mask) or ``PARALLEL_CALIBRATION``
(calibration-only); optional 2× readout oversampling; the geometry (position, read/phase/slice
directions, table position) in every acquisition header.
Used by the demo, the batch tests, the 3D benchmark and anyone who wants a raw file from an image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ismrmrd
import ismrmrd.xsd as xsd
import numpy as np

from mrprior.errors import DataError
from mrprior.mr.simulate import oversample_readout

__all__ = ["Geometry", "RawSlice", "write_cartesian_raw"]


@dataclass
class RawSlice:
    """One 2D slice or one 3D volume to write.

    Attributes
    ----------
    kspace : complex64 ``[C, ky, kx]`` (2D) or ``[C, kz, ky, kx]`` (3D), fully sampled, at the
        recon readout size (or already at the encoded size, see ``kspace_oversampled`` of
        :func:`write_cartesian_raw`).
    lines : bool ``[ky]`` (2D) or ``[kz, ky]`` (3D): lines acquired for imaging.
    calib_lines : bool, same shape: calibration lines (may overlap ``lines``).
    slice, repetition, contrast : ISMRMRD encoding counters.
    """

    kspace: np.ndarray
    lines: np.ndarray
    calib_lines: np.ndarray
    slice: int = 0
    repetition: int = 0
    contrast: int = 0


@dataclass(frozen=True)
class Geometry:
    """Patient-coordinate geometry (mm, LPS) of the acquisitions.

    Attributes
    ----------
    position : centre of slice 0 (2D; slice ``s`` sits at ``position + s · thickness ·
        slice_dir``) or of the 3D slab.
    read_dir, phase_dir, slice_dir : orthonormal direction cosines of x, y and z.
    patient_table_position : table position written to every acquisition.
    """

    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    read_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)
    phase_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)
    slice_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)
    patient_table_position: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        dirs = np.array([self.read_dir, self.phase_dir, self.slice_dir], dtype=np.float64)
        if dirs.shape != (3, 3) or not np.allclose(dirs @ dirs.T, np.eye(3), atol=1e-5):
            raise DataError(f"read/phase/slice directions must be orthonormal: {dirs.tolist()}")


def _header(
    coils: int,
    matrix: tuple[int, int, int],
    nx_enc: int,
    fov_mm: tuple[float, float, float],
    oversampling: int,
    n_slices: int,
    n_reps: int,
    accel: tuple[int, int],
    calib_count: int,
) -> xsd.ismrmrdHeader:
    nz, ny, nx = matrix
    enc_fov = xsd.fieldOfViewMm(x=fov_mm[0] * oversampling, y=fov_mm[1], z=fov_mm[2])
    rec_fov = xsd.fieldOfViewMm(x=fov_mm[0], y=fov_mm[1], z=fov_mm[2])
    limits = xsd.encodingLimitsType(
        kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=ny - 1, center=ny // 2),
        kspace_encoding_step_2=xsd.limitType(minimum=0, maximum=nz - 1, center=nz // 2),
        slice=xsd.limitType(minimum=0, maximum=n_slices - 1, center=0),
        repetition=xsd.limitType(minimum=0, maximum=n_reps - 1, center=0),
        contrast=xsd.limitType(minimum=0, maximum=0, center=0),
        average=xsd.limitType(minimum=0, maximum=0, center=0),
        phase=xsd.limitType(minimum=0, maximum=0, center=0),
        set=xsd.limitType(minimum=0, maximum=0, center=0),
        segment=xsd.limitType(minimum=0, maximum=0, center=0),
    )
    pi = xsd.parallelImagingType(
        accelerationFactor=xsd.accelerationFactorType(
            kspace_encoding_step_1=max(accel[0], 1), kspace_encoding_step_2=max(accel[1], 1)
        ),
        calibrationMode=xsd.calibrationModeType.EMBEDDED
        if calib_count
        else xsd.calibrationModeType.OTHER,
    )
    encoding = xsd.encodingType(
        encodedSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=nx_enc, y=ny, z=nz), fieldOfView_mm=enc_fov
        ),
        reconSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=nx, y=ny, z=nz), fieldOfView_mm=rec_fov
        ),
        encodingLimits=limits,
        trajectory=xsd.trajectoryType.CARTESIAN,
        parallelImaging=pi,
    )
    return xsd.ismrmrdHeader(
        version=1,
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            systemVendor="mrprior-simulation",
            systemFieldStrength_T=3.0,
            receiverChannels=coils,
            relativeReceiverNoiseBandwidth=0.793,
        ),
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=127_700_000),
        encoding=[encoding],
        sequenceParameters=xsd.sequenceParametersType(TR=[5.0], TE=[2.5], flipAngle_deg=[10.0]),
    )


def write_cartesian_raw(
    path: str | Path,
    slices: Sequence[RawSlice],
    noise_scan: np.ndarray | None = None,
    fov_mm: tuple[float, float, float] = (220.0, 220.0, 5.0),
    readout_oversampling: int = 1,
    sample_time_us: float = 5.0,
    geometry: Geometry | None = None,
    kspace_oversampled: bool = False,
    acceleration: tuple[int, int] | None = None,
) -> Path:
    """Write ``slices`` (and an optional noise scan ``[C, N]``) to an ISMRMRD raw HDF5 file.

    Parameters
    ----------
    path : output file; overwritten.
    slices : 2D slices or 3D volumes, all with the same coil count and matrix.
    noise_scan : complex ``[C, N]`` noise-only samples, written as one NOISE_MEASUREMENT
        acquisition per block of encoded-readout samples before the imaging data (with the
        same ``sample_time_us``).
    fov_mm : recon field of view (x, y, z) in mm: z is the slice thickness (2D) or the slab
        thickness (3D).
    readout_oversampling : 1 or 2; with 2 the readout is written at twice the FOV.
    sample_time_us : dwell time of every acquisition.
    geometry : positions and directions (default: axis-aligned at the origin).
    kspace_oversampled : the slices' k-space is already at the encoded readout size
        (``readout_oversampling · nx``, e.g. from
        :func:`mrprior.mr.simulate.simulate_kspace` with ``readout_oversampling=2``) and is
        written as is; otherwise it is at the recon size and oversampled here (signal scaled by
        ``1 / √factor`` per sample).
    acceleration : ``(step_1, step_2)`` written as the header's acceleration factors; default
        ``round(ny / lines)`` for 2D and ``(1, 1)`` for 3D (irregular patterns).
    """
    if not slices:
        raise DataError("no slices to write")
    if readout_oversampling not in (1, 2):
        raise DataError(f"readout_oversampling must be 1 or 2, got {readout_oversampling}")
    geo = geometry or Geometry()
    first = slices[0].kspace
    if first.ndim not in (3, 4):
        raise DataError(f"k-space must be [C, ky, kx] or [C, kz, ky, kx]: {first.shape=}")
    volume = first.ndim == 4
    shape = first.shape
    c = shape[0]
    plane = shape[1:-1]  # (ky,) or (kz, ky)
    nx_in = shape[-1]
    if kspace_oversampled:
        if nx_in % readout_oversampling:
            raise DataError(f"readout {nx_in} is not a multiple of {readout_oversampling}")
        nx = nx_in // readout_oversampling
    else:
        nx = nx_in
    for s in slices:
        if s.kspace.shape != shape:
            raise DataError(f"all slices need shape {shape}: got {s.kspace.shape}")
        if s.lines.shape != plane or s.calib_lines.shape != plane:
            raise DataError(f"lines and calib_lines must be bool {list(plane)}")
        if not np.all(np.isfinite(s.kspace)):
            raise DataError("k-space contains NaN or Inf")
    nx_enc = nx * readout_oversampling
    nz = plane[0] if volume else 1
    ny = plane[-1]
    n_sl = max(s.slice for s in slices) + 1
    n_rep = max(s.repetition for s in slices) + 1
    if acceleration is None:
        imaging = int(slices[0].lines.sum())
        acceleration = (1, 1) if volume else (round(ny / max(imaging, 1)), 1)
    header = _header(
        c,
        (nz, ny, nx),
        nx_enc,
        fov_mm,
        readout_oversampling,
        n_sl,
        n_rep,
        acceleration,
        int(slices[0].calib_lines.sum()),
    )

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    try:
        ds.write_xml_header(
            header.toXML("utf-8") if hasattr(header, "toXML") else xsd.ToXML(header)
        )
        counter = 0
        if noise_scan is not None:
            noise_scan = np.asarray(noise_scan, dtype=np.complex64)
            if noise_scan.ndim != 2 or noise_scan.shape[0] != c:
                raise DataError(f"noise_scan must be [C={c}, N]: {noise_scan.shape=}")
            for start in range(0, noise_scan.shape[1] - nx_enc + 1, nx_enc):
                acq = ismrmrd.Acquisition.from_array(noise_scan[:, start : start + nx_enc])
                acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
                acq.scan_counter = counter
                acq.sample_time_us = sample_time_us
                counter += 1
                ds.append_acquisition(acq)
        for s in slices:
            k = np.asarray(s.kspace, dtype=np.complex64)
            if not kspace_oversampled and readout_oversampling > 1:
                k = oversample_readout(k, readout_oversampling) * np.float32(
                    np.sqrt(1.0 / readout_oversampling)
                )
            k = k.reshape(c, nz, ny, nx_enc)
            lines = s.lines.reshape(nz, ny)
            cal = s.calib_lines.reshape(nz, ny)
            acquired = np.argwhere(lines | cal)  # (kz, ky), partitions in the outer loop
            position = np.asarray(geo.position, dtype=np.float64)
            if not volume:
                position = position + s.slice * fov_mm[2] * np.asarray(geo.slice_dir)
            for i, (kz, ky) in enumerate(acquired.tolist()):
                acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(k[:, kz, ky, :]))
                acq.scan_counter = counter
                counter += 1
                acq.sample_time_us = sample_time_us
                acq.center_sample = nx_enc // 2
                acq.idx.kspace_encode_step_1 = int(ky)
                acq.idx.kspace_encode_step_2 = int(kz)
                acq.idx.slice = s.slice
                acq.idx.repetition = s.repetition
                acq.idx.contrast = s.contrast
                acq.read_dir[:] = geo.read_dir
                acq.phase_dir[:] = geo.phase_dir
                acq.slice_dir[:] = geo.slice_dir
                acq.position[:] = tuple(float(v) for v in position)
                acq.patient_table_position[:] = geo.patient_table_position
                if cal[kz, ky]:
                    acq.set_flag(
                        ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING
                        if lines[kz, ky]
                        else ismrmrd.ACQ_IS_PARALLEL_CALIBRATION
                    )
                if i == 0:
                    acq.set_flag(ismrmrd.ACQ_FIRST_IN_SLICE)
                if i == len(acquired) - 1:
                    acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
                    if s is slices[-1]:
                        acq.set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
                ds.append_acquisition(acq)
    finally:
        ds.close()
    return path
