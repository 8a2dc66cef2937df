"""Write simulated multi-coil Cartesian k-space as a real ISMRMRD raw file.

The file looks like a scanner's: an XML header with encoded/recon spaces, FOV, encoding limits
and parallel-imaging information; an optional noise scan (``ACQ_IS_NOISE_MEASUREMENT``); one
acquisition per acquired phase-encode line with ``LAST_IN_SLICE`` on the last line of each slice,
calibration lines flagged ``PARALLEL_CALIBRATION_AND_IMAGING`` (inside the imaging mask) or
``PARALLEL_CALIBRATION`` (calibration-only); optional 2× readout oversampling.
Used by the demo, the batch tests and anyone who wants a raw file from an image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ismrmrd
import ismrmrd.xsd as xsd
import numpy as np

from mrprior.errors import DataError
from mrprior.mr.fft import fftc, ifftc


@dataclass
class RawSlice:
    """One slice to write.

    Attributes
    ----------
    kspace : complex64 ``[C, ky, kx]`` fully sampled k-space at the recon matrix size.
    lines : bool ``[ky]`` phase-encode lines acquired for imaging.
    calib_lines : bool ``[ky]`` calibration lines (may overlap ``lines``).
    slice, repetition, contrast : ISMRMRD encoding counters.
    """

    kspace: np.ndarray
    lines: np.ndarray
    calib_lines: np.ndarray
    slice: int = 0
    repetition: int = 0
    contrast: int = 0


def _header(
    coils: int,
    ny: int,
    nx_enc: int,
    nx: int,
    fov_mm: tuple[float, float, float],
    oversampling: int,
    n_slices: int,
    n_reps: int,
    accel: int,
    calib_count: int,
) -> xsd.ismrmrdHeader:
    enc_fov = xsd.fieldOfViewMm(x=fov_mm[0] * oversampling, y=fov_mm[1], z=fov_mm[2])
    rec_fov = xsd.fieldOfViewMm(x=fov_mm[0], y=fov_mm[1], z=fov_mm[2])
    limits = xsd.encodingLimitsType(
        kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=ny - 1, center=ny // 2),
        kspace_encoding_step_2=xsd.limitType(minimum=0, maximum=0, center=0),
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
            kspace_encoding_step_1=max(accel, 1), kspace_encoding_step_2=1
        ),
        calibrationMode=xsd.calibrationModeType.EMBEDDED
        if calib_count
        else xsd.calibrationModeType.OTHER,
    )
    encoding = xsd.encodingType(
        encodedSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=nx_enc, y=ny, z=1), fieldOfView_mm=enc_fov
        ),
        reconSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=nx, y=ny, z=1), fieldOfView_mm=rec_fov
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


def _oversample_readout(kspace: np.ndarray, factor: int) -> np.ndarray:
    """k-space [C, ky, kx] -> [C, ky, factor*kx] as if the readout FOV were ``factor``× larger."""
    if factor == 1:
        return kspace
    img = ifftc(kspace, 1)  # along kx only
    nx = kspace.shape[-1]
    pad = (factor - 1) * nx
    img = np.pad(img, [(0, 0), (0, 0), (pad // 2, pad - pad // 2)])
    # orthonormal FFT: keep the per-sample amplitude of the original signal
    return (fftc(img, 1) * np.sqrt(1.0 / factor)).astype(np.complex64)


def write_cartesian_raw(
    path: str | Path,
    slices: Sequence[RawSlice],
    noise_scan: np.ndarray | None = None,
    fov_mm: tuple[float, float, float] = (220.0, 220.0, 5.0),
    readout_oversampling: int = 1,
    sample_time_us: float = 5.0,
) -> Path:
    """Write ``slices`` (and an optional noise scan ``[C, N]``) to an ISMRMRD raw HDF5 file.

    Parameters
    ----------
    path : output file; overwritten.
    slices : the slices, all with the same coil count and matrix.
    noise_scan : complex ``[C, N]`` noise-only samples, written as one NOISE_MEASUREMENT
        acquisition per block of ``kx`` samples before the imaging data.
    fov_mm : recon field of view (x, y, slice thickness) in mm.
    readout_oversampling : 1 or 2; with 2 the readout is written at twice the FOV.
    """
    if not slices:
        raise DataError("no slices to write")
    c, ny, nx = slices[0].kspace.shape
    for s in slices:
        if s.kspace.shape != (c, ny, nx):
            raise DataError(f"all slices need shape {(c, ny, nx)}: got {s.kspace.shape}")
        if s.lines.shape != (ny,) or s.calib_lines.shape != (ny,):
            raise DataError(f"lines and calib_lines must be bool [{ny}]")
        if not np.all(np.isfinite(s.kspace)):
            raise DataError("k-space contains NaN or Inf")
    if readout_oversampling not in (1, 2):
        raise DataError(f"readout_oversampling must be 1 or 2, got {readout_oversampling}")
    nx_enc = nx * readout_oversampling
    n_sl = max(s.slice for s in slices) + 1
    n_rep = max(s.repetition for s in slices) + 1
    imaging = slices[0].lines.sum()
    accel = round(ny / max(int(imaging), 1))
    header = _header(
        c,
        ny,
        nx_enc,
        nx,
        fov_mm,
        readout_oversampling,
        n_sl,
        n_rep,
        accel,
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
            k = _oversample_readout(np.asarray(s.kspace, dtype=np.complex64), readout_oversampling)
            acquired = np.flatnonzero(s.lines | s.calib_lines)
            for i, ky in enumerate(acquired):
                acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(k[:, ky, :]))
                acq.scan_counter = counter
                counter += 1
                acq.sample_time_us = sample_time_us
                acq.center_sample = nx_enc // 2
                acq.idx.kspace_encode_step_1 = int(ky)
                acq.idx.slice = s.slice
                acq.idx.repetition = s.repetition
                acq.idx.contrast = s.contrast
                acq.read_dir[:] = (1.0, 0.0, 0.0)
                acq.phase_dir[:] = (0.0, 1.0, 0.0)
                acq.slice_dir[:] = (0.0, 0.0, 1.0)
                acq.position[:] = (0.0, 0.0, float(s.slice) * fov_mm[2])
                if s.calib_lines[ky]:
                    acq.set_flag(
                        ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING
                        if s.lines[ky]
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
