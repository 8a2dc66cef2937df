"""Small 3D Cartesian raw ISMRMRD files for tests, written the way a scanner streams them.

A volume ``[nz, ny, nx]`` with an asymmetric marker (so orientation errors show), smooth 3D coil
sensitivities, k-space ``F_zyx(S_c · m)`` (centred orthonormal FFT, the pipeline's convention),
2× readout oversampling, a noise scan, and one acquisition per acquired ``(kz, ky)`` line with
``kspace_encode_step_2`` set, partitions in the outer loop. ``LAST_IN_SLICE`` goes on the last
line of each volume (``last_in_slice="volume"``) or of every partition (``"partition"``), as
some sequences do; ``LAST_IN_MEASUREMENT`` on the last acquisition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import ismrmrd
import ismrmrd.xsd as xsd
import numpy as np

from mrprior.mr.fft import fftc, ifftc

#: Oblique geometry (LPS, mm): orthonormal read/phase/slice directions and a slab centre.
GEOMETRY_3D = {
    "position": (4.0, -12.5, 21.0),
    "read_dir": (0.0, 0.8, 0.6),
    "phase_dir": (1.0, 0.0, 0.0),
    "slice_dir": (0.0, 0.6, -0.8),
    "patient_table_position": (0.0, 0.0, -1000.0),
}


def phantom_volume(nz: int, ny: int, nx: int) -> np.ndarray:
    """complex64 ``[nz, ny, nx]``: two ellipsoids with a smooth phase and a bright cube marker
    in the (+z, +y, +x) octant, so a flipped axis is detected."""
    z, y, x = np.meshgrid(
        (np.arange(nz) - nz / 2) / (nz / 2),
        (np.arange(ny) - ny / 2) / (ny / 2),
        (np.arange(nx) - nx / 2) / (nx / 2),
        indexing="ij",
    )
    vol = ((z / 0.8) ** 2 + (y / 0.75) ** 2 + (x / 0.7) ** 2 <= 1).astype(np.float32)
    vol += 0.5 * ((z / 0.4) ** 2 + ((y + 0.2) / 0.3) ** 2 + (x / 0.35) ** 2 <= 1)
    vol[marker_slices(nz, ny, nx)] = 2.5
    phase = 0.4 * x + 0.3 * y - 0.2 * z
    return (vol * np.exp(1j * phase)).astype(np.complex64)


def marker_slices(nz: int, ny: int, nx: int) -> tuple[slice, slice, slice]:
    """Index of the marker cube in ``[z, y, x]``."""
    return (
        slice(nz * 5 // 8, nz * 5 // 8 + max(nz // 8, 1)),
        slice(ny * 5 // 8, ny * 5 // 8 + max(ny // 8, 1)),
        slice(nx * 5 // 8, nx * 5 // 8 + max(nx // 8, 1)),
    )


def coil_maps_3d(coils: int, nz: int, ny: int, nx: int) -> np.ndarray:
    """Smooth complex sensitivities ``[C, nz, ny, nx]`` of coils on a ring around the (y, x)
    plane at alternating z offsets, normalized to ``Σ_c |S_c|² = 1``."""
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij"
    )
    maps = []
    for c in range(coils):
        a = 2 * np.pi * c / coils
        cz = 0.8 if c % 2 else -0.8
        d2 = (y - 1.6 * np.sin(a)) ** 2 + (x - 1.6 * np.cos(a)) ** 2 + 0.5 * (z - cz) ** 2
        maps.append(np.exp(1j * (a + 0.3 * z)) / (0.5 + d2))
    s = np.asarray(maps)
    return (s / np.sqrt((np.abs(s) ** 2).sum(axis=0, keepdims=True))).astype(np.complex64)


def lines_3d(
    nz: int, ny: int, accel: tuple[int, int] = (2, 2), calib: tuple[int, int] = (8, 8)
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform ``ky × kz`` undersampling with a fully sampled centre: ``(lines, calib_lines)``
    bool ``[nz, ny]`` (calibration lines off the pattern are calibration-only)."""
    lines = np.zeros((nz, ny), bool)
    lines[:: accel[1], :: accel[0]] = True
    cal = np.zeros((nz, ny), bool)
    cal[
        nz // 2 - calib[1] // 2 : nz // 2 + calib[1] // 2,
        ny // 2 - calib[0] // 2 : ny // 2 + calib[0] // 2,
    ] = True
    return lines, cal


@dataclass
class Raw3D:
    """A written 3D raw file, with what it was made from."""

    path: Path
    header_xml: str
    acqs: list[ismrmrd.Acquisition]
    volume: np.ndarray  # [nz, ny, nx] complex64 (recon size)
    maps: np.ndarray  # [C, nz, ny, nx]
    lines: np.ndarray  # [nz, ny]
    calib_lines: np.ndarray
    fov: tuple[float, float, float]
    repetitions: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.volume.shape)  # type: ignore[return-value]


def header_3d(
    coils: int,
    nz: int,
    ny: int,
    nx: int,
    fov: tuple[float, float, float],
    accel: tuple[int, int],
    repetitions: int,
    oversampling: int = 2,
) -> str:
    """ISMRMRD XML of a 3D Cartesian encoding (encoded x oversampled, limits for ky and kz)."""
    lim = xsd.limitType
    enc = xsd.encodingType(
        encodedSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=nx * oversampling, y=ny, z=nz),
            fieldOfView_mm=xsd.fieldOfViewMm(x=fov[0] * oversampling, y=fov[1], z=fov[2]),
        ),
        reconSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=nx, y=ny, z=nz),
            fieldOfView_mm=xsd.fieldOfViewMm(x=fov[0], y=fov[1], z=fov[2]),
        ),
        encodingLimits=xsd.encodingLimitsType(
            kspace_encoding_step_1=lim(minimum=0, maximum=ny - 1, center=ny // 2),
            kspace_encoding_step_2=lim(minimum=0, maximum=nz - 1, center=nz // 2),
            slice=lim(minimum=0, maximum=0, center=0),
            repetition=lim(minimum=0, maximum=repetitions - 1, center=0),
        ),
        trajectory=xsd.trajectoryType.CARTESIAN,
        parallelImaging=xsd.parallelImagingType(
            accelerationFactor=xsd.accelerationFactorType(
                kspace_encoding_step_1=accel[0], kspace_encoding_step_2=accel[1]
            ),
            calibrationMode=xsd.calibrationModeType.EMBEDDED,
        ),
    )
    header = xsd.ismrmrdHeader(
        version=1,
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            systemVendor="mrprior-tests", receiverChannels=coils
        ),
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=127_700_000),
        encoding=[enc],
    )
    xml = header.toXML("utf-8")
    return xml.decode() if isinstance(xml, bytes) else xml


def write_raw_3d(
    path: Path,
    shape: tuple[int, int, int] = (16, 24, 20),
    coils: int = 4,
    accel: tuple[int, int] = (2, 2),
    calib: tuple[int, int] = (8, 8),
    fov: tuple[float, float, float] = (200.0, 240.0, 64.0),
    repetitions: int = 1,
    noise_std: float = 0.002,
    last_in_slice: str = "volume",
    seed: int = 0,
) -> Raw3D:
    """Write a 3D raw file (see the module docstring) and return it with its ground truth."""
    nz, ny, nx = shape
    rng = np.random.default_rng(seed)
    vol = phantom_volume(nz, ny, nx)
    maps = coil_maps_3d(coils, nz, ny, nx)
    k = fftc(maps * vol[None], ndim=3)
    # 2x readout oversampling: zero-pad the readout FOV in image space (orthonormal scaling)
    img_x = ifftc(k, ndim=1)
    img_x = np.pad(img_x, [(0, 0), (0, 0), (0, 0), (nx // 2, nx - nx // 2)])
    k_os = (fftc(img_x, ndim=1) / np.sqrt(2.0)).astype(np.complex64)
    lines, cal = lines_3d(nz, ny, accel, calib)
    xml = header_3d(coils, nz, ny, nx, fov, accel, repetitions)
    acqs: list[ismrmrd.Acquisition] = []

    def noise(*s: int) -> np.ndarray:
        return (noise_std * (rng.standard_normal(s) + 1j * rng.standard_normal(s))).astype(
            np.complex64
        )

    acq = ismrmrd.Acquisition.from_array(noise(coils, 2 * nx * 4))
    acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    acq.sample_time_us = 5.0
    acqs.append(acq)
    acquired = [(z, y) for z in range(nz) for y in range(ny) if lines[z, y] or cal[z, y]]
    for rep in range(repetitions):
        for i, (z, y) in enumerate(acquired):
            data = k_os[:, z, y, :] + noise(coils, 2 * nx)
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data))
            acq.sample_time_us = 5.0
            acq.center_sample = nx
            acq.idx.kspace_encode_step_1 = y
            acq.idx.kspace_encode_step_2 = z
            acq.idx.repetition = rep
            for name, value in GEOMETRY_3D.items():
                getattr(acq, name)[:] = value
            if cal[z, y]:
                acq.set_flag(
                    ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING
                    if lines[z, y]
                    else ismrmrd.ACQ_IS_PARALLEL_CALIBRATION
                )
            last = i == len(acquired) - 1
            end_of_partition = last or acquired[i + 1][0] != z
            if last or (last_in_slice == "partition" and end_of_partition):
                acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
            if last and rep == repetitions - 1:
                acq.set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
            acq.scan_counter = len(acqs)
            acqs.append(acq)
    write_acquisitions(path, xml, acqs)
    return Raw3D(path, xml, acqs, vol, maps, lines, cal, fov, repetitions)


def write_acquisitions(path: Path, xml: str, acqs: list[ismrmrd.Acquisition]) -> Path:
    """Write a header and acquisitions as an ISMRMRD raw HDF5 file (replacing ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=True) as ds:
        ds.write_xml_header(xml)
        for acq in acqs:
            ds.append_acquisition(acq)
    return path


def copy_acq(acq: ismrmrd.Acquisition) -> ismrmrd.Acquisition:
    """An independent copy of an acquisition."""
    return ismrmrd.Acquisition.from_bytes(acq.to_bytes())
