"""Siemens raw data (twix ``.dat``, VB and VD/VE multi-raid files) → ISMRMRD header and acquisitions.

Parsing is twixtools' (``twixtools.read_twix`` for the protocol, ``twixtools.mdb.Mdb`` for the
measurement data headers (MDH) and lazily read samples, MDH flags by name, ``twixtools.quat`` for
the slice orientation). This module only maps what twixtools parses onto ISMRMRD, so that a ``.dat`` file takes the same path
as an ISMRMRD raw file: :func:`mrprior.io.raw.read_header`, :func:`~mrprior.io.raw.iter_acquisitions`
and :func:`~mrprior.io.raw.iter_kspace` dispatch here for ``.dat`` paths, and
:func:`convert_twix` writes an ISMRMRD raw file (``mrprior convert``).

Mapping (the conventions of Siemens' own converter ``siemens_to_ismrmrd``):

- One measurement of the file (default: the last one, the imaging scan of a multi-raid file;
  earlier measurements are adjustment scans).
- Header: encoded space = the oversampled readout (``iNoOfFourierColumns``) × the phase-encode
  FFT length (``iPEFTLength``) × partitions (3D); recon space = ``lBaseResolution`` ×
  ``ImageLines`` × images per slab; FOVs from the slice array (encoded readout FOV × the readout
  oversampling factor, phase FOV × (1 + phase oversampling)); encoding limits from the MDH
  counters, k-space centres from the MDH (``CenterLin``, ``CenterPar``); acceleration from
  ``sPat``; field strength, vendor, model, protocol, TR/TE/TI/flip angle; Cartesian, or EPI
  with its ramp-sampling description, or radial/spiral.
- Acquisitions, one per MDH: counters (Lin, Par, Sli, Eco, Phs, Rep, Set, Ave, Seg) → ISMRMRD
  indices; ``CutOff`` → discards, ``CenterCol`` → centre sample; slice position (Sag, Cor,
  Tra) → position; the MDH quaternion's rotation matrix has columns (phase, read, slice);
  dwell time from the protocol (``alDwellTime`` of the echo).
- Flags: NOISEADJSCAN → noise measurement; PATREFSCAN → parallel calibration; PATREFANDIMASCAN →
  calibration and imaging; REFLECT → reverse; PHASCOR → phase-correction data; RTFEEDBACK /
  HPFEEDBACK / PHASESTABSCAN / REFPHASESTABSCAN → their ISMRMRD flags (readers that honour the
  flags, :class:`~mrprior.io.raw.AcquisitionBuffer` included, skip them). MDHs ISMRMRD has no flag for
  (FID navigators, VOP monitoring, sync data) are dropped with a log line. ``FIRST/LAST_IN_SLICE``
  and ``LAST_IN_MEASUREMENT`` are computed from the order of the acquisitions: the last line of
  each (slice, contrast, phase, repetition, set, average) group carries ``LAST_IN_SLICE``, so a
  Siemens separate reference-scan block cannot close a group before its imaging lines.

Noise: the MDH does not record the noise scans' dwell time, so noise acquisitions carry the
imaging dwell time: prewhitening decorrelates the coils as it should, but the whitened noise
level may be off by the square root of the two ADCs' bandwidth ratio.

EPI (``alRegridMode`` ≥ 2 ramp sampling, reflected lines, phase-correction navigators) converts
to ISMRMRD with trajectory ``epi`` and the ramp-sampling description Gadgetron's EPI chain reads,
but it is not reconstructed here: it needs ramp-sampling regridding and Nyquist-ghost correction
before it is Cartesian k-space (:func:`twix_recon_header` says so).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ismrmrd
import ismrmrd.xsd as xsd
import numpy as np

from mrprior.errors import DataError, HeaderError

logger = logging.getLogger(__name__)

#: Siemens MDH flag → ISMRMRD acquisition flag (flags kept on the converted acquisition).
FLAG_MAP: dict[str, int] = {
    "NOISEADJSCAN": ismrmrd.ACQ_IS_NOISE_MEASUREMENT,
    "PATREFSCAN": ismrmrd.ACQ_IS_PARALLEL_CALIBRATION,
    "REFLECT": ismrmrd.ACQ_IS_REVERSE,
    "PHASCOR": ismrmrd.ACQ_IS_PHASECORR_DATA,
    "RTFEEDBACK": ismrmrd.ACQ_IS_RTFEEDBACK_DATA,
    "HPFEEDBACK": ismrmrd.ACQ_IS_HPFEEDBACK_DATA,
    "PHASESTABSCAN": ismrmrd.ACQ_IS_PHASE_STABILIZATION,
    "REFPHASESTABSCAN": ismrmrd.ACQ_IS_PHASE_STABILIZATION_REFERENCE,
    "RETRO_DUMMYSCAN": ismrmrd.ACQ_IS_DUMMYSCAN_DATA,
}

#: MDH flags that ISMRMRD has no acquisition type for: such MDHs are not converted.
DROPPED_FLAGS: tuple[str, ...] = ("SYNCDATA", "ACQEND", "noname60", "MDH_VOP")

#: Flags of MDHs that are neither noise nor k-space (kept, flagged, skipped by the recon).
NON_IMAGING_FLAGS: tuple[str, ...] = (
    "PHASCOR",
    "RTFEEDBACK",
    "HPFEEDBACK",
    "PHASESTABSCAN",
    "REFPHASESTABSCAN",
    "RETRO_DUMMYSCAN",
)

#: ``sKSpace.ucTrajectory`` → ISMRMRD trajectory.
_TRAJECTORIES = {1: "cartesian", 2: "radial", 4: "spiral", 8: "other"}

#: Group counters (ISMRMRD names) and their MDH counter names.
_GROUP_COUNTERS = (
    ("slice", "Sli"),
    ("contrast", "Eco"),
    ("phase", "Phs"),
    ("repetition", "Rep"),
    ("set", "Set"),
    ("average", "Ave"),
)


def is_twix(path: str | Path) -> bool:
    """Whether ``path`` names a Siemens twix file (by its ``.dat`` suffix)."""
    return Path(path).suffix.lower() == ".dat"


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
@dataclass
class TwixMeasurement:
    """One measurement of a twix file, as twixtools parses it.

    Attributes
    ----------
    path : the file.
    index : the measurement's index in the file (0-based); ``count`` measurements in all.
    version : ``"VB"`` or ``"VD/VE"``.
    hdr : twixtools' parsed protocol (``Config``, ``Dicom``, ``Meas``, ``MeasYaps``, ...).
    mdbs : twixtools ``Mdb`` objects in acquisition order (sync data and ACQEND removed); their
        ``data`` is read from the file on access.
    """

    path: Path
    index: int
    count: int
    version: str
    hdr: dict[str, Any]
    mdbs: list[Any] = field(repr=False)


def _twixtools() -> Any:
    try:
        import twixtools
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise DataError(
            "reading Siemens .dat files needs the twixtools package (pip install twixtools)"
        ) from exc
    return twixtools


def _measurement_count(path: Path) -> tuple[bool, int]:
    """``(is VD/VE, number of measurements)`` from the file's first bytes (twixtools' check)."""
    from twixtools.helpers import idea_version_check

    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 8:
            raise DataError(f"{path}: too short to be a Siemens twix file")
        is_ve, n = idea_version_check(f)
    return bool(is_ve), int(n)


def _log_twixtools_output(path: Path, text: str) -> None:
    for line in text.splitlines():
        if line.strip():
            logger.warning("%s: twixtools: %s", path.name, line.strip())


def read_measurement(path: str | Path, measurement: int = -1) -> TwixMeasurement:
    """Parse one measurement of a twix file: its protocol with ``twixtools.read_twix``, its data
    blocks with ``twixtools.mdb.Mdb`` (:func:`_read_mdbs`).

    Parameters
    ----------
    path : a Siemens ``.dat`` file (VB, or VD/VE with one or more measurements).
    measurement : index of the measurement; -1 (default) is the last, the imaging scan.

    Raises
    ------
    DataError
        Missing file, not a twix file, no such measurement, truncated file (the multi-raid
        header's length exceeds the file, data blocks run past its end, or the end-of-acquisition
        block is missing), or an unreadable protocol.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a Siemens twix file")
    twixtools = _twixtools()
    size = path.stat().st_size
    is_ve, n_meas = _measurement_count(path)
    if not -n_meas <= measurement < n_meas:
        raise DataError(
            f"{path}: no measurement {measurement}: the file holds {n_meas} measurement(s)"
        )
    index = measurement % n_meas
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            scans = twixtools.read_twix(
                str(path),
                include_scans=[index],
                parse_data=False,
                parse_pmu=False,
                parse_geometry=False,
                verbose=False,
            )
    except Exception as exc:  # a third-party parser on untrusted bytes: report any failure
        raise DataError(
            f"{path}: not a readable Siemens twix file ({type(exc).__name__}: {exc})"
        ) from None
    _log_twixtools_output(path, out.getvalue())
    scans = [s for s in scans if isinstance(s, dict)]
    if len(scans) != 1:
        raise DataError(f"{path}: twixtools found no measurement {index}")
    scan = scans[0]
    hdr = scan.get("hdr") or {}
    if "Error parsing twix header" in out.getvalue() or not _has_protocol(hdr):
        raise DataError(
            f"{path}: truncated or corrupt twix file: the protocol header of measurement "
            f"{index} cannot be parsed"
        )
    start, end = 0, size
    raid = scan.get("raidfile_hdr")
    if raid is not None:
        start, end = int(raid["off_"]), int(raid["off_"]) + int(raid["len_"])
        if end > size:
            raise DataError(
                f"{path}: truncated twix file: measurement {index} should end at byte {end} "
                f"(multi-raid header) but the file has {size} bytes"
            )
    start += len(scan["hdr_str"])
    mdbs = _read_mdbs(path, index, is_ve, start, end)
    return TwixMeasurement(
        path=path,
        index=index,
        count=n_meas,
        version="VD/VE" if is_ve else "VB",
        hdr=hdr,
        mdbs=mdbs,
    )


def _read_mdbs(path: Path, index: int, is_ve: bool, start: int, end: int) -> list[Any]:
    """The measurement data blocks from ``start`` to the end-of-acquisition block, each parsed
    by ``twixtools.mdb.Mdb`` (samples stay on disk until read).

    This is twixtools' own walk with its failure modes turned into errors: a block of length
    0 (a zero-filled tail, where ``read_twix`` loops forever), blocks running past the end of
    the file, and a missing ACQEND (truncated file). Sync data blocks are left out.
    """
    from twixtools.mdb import Mdb

    mdbs: list[Any] = []
    pos = start
    with open(path, "rb") as fid:
        while True:
            if pos + 128 > end:
                raise DataError(
                    f"{path}: truncated twix file: measurement {index} ends after {len(mdbs)} "
                    "data blocks without its end-of-acquisition block (ACQEND)"
                )
            fid.seek(pos)
            try:
                mdb = Mdb(fid, is_ve)
            except (ValueError, TypeError) as exc:  # short read of the channel headers
                raise DataError(
                    f"{path}: truncated twix file: data block {len(mdbs)} at byte {pos} cannot "
                    f"be read ({exc})"
                ) from None
            if mdb.is_flag_set("ACQEND"):
                return mdbs
            length = int(mdb.dma_len)
            if length <= 0:
                raise DataError(
                    f"{path}: corrupt twix file: data block {len(mdbs)} at byte {pos} has "
                    "length 0 (zero-filled data?)"
                )
            if pos + length > end:
                raise DataError(
                    f"{path}: truncated twix file: data block {len(mdbs)} (scan counter "
                    f"{mdb.mdh.ScanCounter}) runs past the end of the file"
                )
            if not mdb.is_flag_set("SYNCDATA"):
                mdbs.append(mdb)
            pos += length


def _has_protocol(hdr: dict[str, Any]) -> bool:
    yaps = hdr.get("MeasYaps") if isinstance(hdr, dict) else None
    return bool(
        isinstance(yaps, dict) and isinstance(yaps.get("sKSpace"), dict) and "sSliceArray" in yaps
    )


# --------------------------------------------------------------------------------------------
# protocol helpers
# --------------------------------------------------------------------------------------------
def _value(d: Any, *keys: str | int, default: Any = None) -> Any:
    """Nested look-up in twixtools' protocol dicts; empty strings count as missing."""
    cur = d
    for key in keys:
        if isinstance(cur, dict):
            cur = cur.get(key)
        elif isinstance(cur, list | tuple) and isinstance(key, int):
            cur = cur[key] if -len(cur) <= key < len(cur) else None
        else:
            return default
        if cur is None or (isinstance(cur, str) and not cur.strip()):
            return default
    return cur


def _number(d: Any, *keys: str | int, default: float | None = None) -> float | None:
    v = _value(d, *keys)
    try:
        return float(v) if v is not None else default
    except (TypeError, ValueError):
        return default


def classify(mdb: Any) -> str:
    """What one MDH is: ``"noise"``, ``"imaging"``, ``"calibration"`` (PAT reference only),
    ``"calibration_and_imaging"``, ``"other"`` (phase correction, feedback, phase
    stabilisation, dummy: kept with its ISMRMRD flag) or ``"dropped"`` (no ISMRMRD equivalent,
    or no samples)."""
    if any(mdb.is_flag_set(f) for f in DROPPED_FLAGS):
        return "dropped"
    if int(mdb.mdh.UsedChannels) == 0 or int(mdb.mdh.SamplesInScan) == 0:
        return "dropped"  # no samples
    if mdb.is_flag_set("NOISEADJSCAN"):
        return "noise"
    if any(mdb.is_flag_set(f) for f in NON_IMAGING_FLAGS):
        return "other"
    if mdb.is_flag_set("PATREFANDIMASCAN"):
        return "calibration_and_imaging"
    if mdb.is_flag_set("PATREFSCAN"):
        return "calibration"
    return "imaging"


KSPACE_KINDS = ("imaging", "calibration", "calibration_and_imaging")


def _group_key(mdb: Any) -> tuple[int, ...]:
    c = mdb.mdh.Counter
    return tuple(int(getattr(c, name)) for _, name in _GROUP_COUNTERS)


def _is_epi(meas: TwixMeasurement, kspace_mdbs: list[Any]) -> bool:
    yaps, m = meas.hdr.get("MeasYaps", {}), meas.hdr.get("Meas", {})
    regrid = _value(m, "alRegridMode", 0, default=1)
    epi_factor = _number(yaps, "sFastImaging", "lEPIFactor", default=1) or 1
    reflected = any(mdb.is_flag_set("REFLECT") for mdb in kspace_mdbs)
    return (regrid is not None and int(regrid) >= 2) or epi_factor > 1 or reflected


def _dwell_us(meas: TwixMeasurement, contrast: int = 0) -> float:
    dwell = _value(meas.hdr, "Meas", "alDwellTime") or _value(
        meas.hdr, "MeasYaps", "sRXSPEC", "alDwellTime"
    )
    if not dwell:
        return 0.0
    dwell = list(dwell)
    ns = dwell[contrast] if contrast < len(dwell) and dwell[contrast] else dwell[0]
    return float(ns) / 1000.0


# --------------------------------------------------------------------------------------------
# header
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Geometry:
    enc: tuple[int, int, int]
    recon: tuple[int, int, int]
    enc_fov: tuple[float, float, float]
    recon_fov: tuple[float, float, float]
    center_lin: int
    center_par: int


def _geometry(meas: TwixMeasurement, kspace: list[Any]) -> _Geometry:
    """Encoded/recon matrices and FOVs, checked against where the MDHs put their samples."""
    hdr, path = meas.hdr, meas.path
    yaps, m = hdr["MeasYaps"], hdr.get("Meas", {})
    ksp = yaps["sKSpace"]
    slc = _value(yaps, "sSliceArray", "asSlice", 0)
    if not isinstance(slc, dict):
        raise HeaderError(f"{path}: protocol has no slice (sSliceArray.asSlice[0])")
    base = _number(ksp, "lBaseResolution")
    read_fov, phase_fov = _number(slc, "dReadoutFOV"), _number(slc, "dPhaseFOV")
    if not base or not read_fov or not phase_fov:
        raise HeaderError(
            f"{path}: protocol lacks the base resolution or the field of view "
            "(sKSpace.lBaseResolution, sSliceArray.asSlice[0].dReadoutFOV / dPhaseFOV)"
        )
    thickness = _number(slc, "dThickness", default=1.0) or 1.0
    os_read = _number(m, "flReadoutOSFactor", default=2.0) or 2.0
    os_phase = _number(ksp, "dPhaseOversamplingForDialog", default=0.0) or 0.0
    is_3d = int(_number(ksp, "ucDimension", default=2) or 2) == 4
    first = next((x for x in kspace if classify(x) != "calibration"), kspace[0])
    center_lin, center_par = int(first.mdh.CenterLin), int(first.mdh.CenterPar)

    # readout: the centre sample lands at nx // 2 (asymmetric echoes are zero-filled)
    nx = int(_number(m, "iNoOfFourierColumns", default=base * os_read) or base * os_read)
    need_x = 0
    for x in kspace:
        pre, post, ns = int(x.mdh.CutOff.Pre), int(x.mdh.CutOff.Post), int(x.mdh.SamplesInScan)
        centre = int(x.mdh.CenterCol) - pre if x.mdh.CenterCol else (ns - pre - post) // 2
        need_x = max(need_x, 2 * centre, 2 * (ns - pre - post - centre))
    lines = [int(x.mdh.Counter.Lin) for x in kspace]
    need_y = 2 * max(center_lin - min(lines), max(lines) - center_lin + 1)
    ny = int(_number(m, "iPEFTLength", default=0) or _number(ksp, "lPhaseEncodingLines") or 1)
    nx, ny = _fit(nx, need_x, "readout", path), _fit(ny, need_y, "phase-encode", path)
    recon_x = int(base)
    recon_y = int(_number(m, "ImageLines", default=0) or _number(ksp, "lPhaseEncodingLines") or ny)
    if is_3d:
        parts = [int(x.mdh.Counter.Par) for x in kspace]
        need_z = 2 * max(center_par - min(parts), max(parts) - center_par + 1)
        partitions = int(_number(ksp, "lPartitions", default=1) or 1)
        nz = _fit(partitions, need_z, "partition", path)
        recon_z = int(_number(ksp, "lImagesPerSlab", default=0) or partitions)
        enc_fov_z = thickness * partitions / recon_z  # slice oversampling, if any
    else:
        nz = recon_z = 1
        enc_fov_z = thickness
    return _Geometry(
        enc=(nx, ny, nz),
        recon=(recon_x, recon_y, recon_z),
        enc_fov=(read_fov * os_read, phase_fov * (1.0 + os_phase), enc_fov_z),
        recon_fov=(read_fov, phase_fov, thickness),
        center_lin=center_lin,
        center_par=center_par if is_3d else 0,
    )


def _fit(size: int, needed: int, what: str, path: Path) -> int:
    if needed <= size:
        return size
    logger.warning(
        "%s: the protocol's %s matrix (%d) is smaller than the data need (%d): using %d",
        path.name,
        what,
        size,
        needed,
        needed,
    )
    return needed


def _matrix(size: tuple[int, int, int]) -> xsd.matrixSizeType:
    return xsd.matrixSizeType(x=size[0], y=size[1], z=size[2])


def _fov(fov: tuple[float, float, float]) -> xsd.fieldOfViewMm:
    return xsd.fieldOfViewMm(x=fov[0], y=fov[1], z=fov[2])


def _limit(values: list[int], center: int = 0) -> xsd.limitType:
    return xsd.limitType(minimum=min(values), maximum=max(values), center=center)


def _param_long(name: str, value: float | None) -> list[xsd.userParameterLongType]:
    return [] if value is None else [xsd.userParameterLongType(name=name, value=int(value))]


def _param_double(name: str, value: float | None) -> list[xsd.userParameterDoubleType]:
    return [] if value is None else [xsd.userParameterDoubleType(name=name, value=float(value))]


def _epi_description(meas: TwixMeasurement) -> xsd.trajectoryDescriptionType:
    """The ramp-sampling description of a conventional EPI readout (Gadgetron's names)."""
    m, yaps = meas.hdr.get("Meas", {}), meas.hdr["MeasYaps"]
    longs = [
        *_param_long("numSamples", _number(m, "alRegridDestSamples", 0)),
        *_param_long("rampUpTime", _number(m, "alRegridRampupTime", 0)),
        *_param_long("rampDownTime", _number(m, "alRegridRampdownTime", 0)),
        *_param_long("flatTopTime", _number(m, "alRegridFlattopTime", 0)),
        *_param_long("acqDelayTime", _number(m, "alRegridDelaySamplesTime", 0)),
        *_param_long("etl", _number(yaps, "sFastImaging", "lEPIFactor")),
        *_param_long("regridMode", _number(m, "alRegridMode", 0)),
    ]
    doubles = [
        *_param_double("dwellTime", _dwell_us(meas)),
        *_param_double("echoSpacing", _number(m, "iEffectiveEpiEchoSpacing")),
        *_param_double("adcDuration", _number(m, "aflRegridADCDuration", 0)),
    ]
    return xsd.trajectoryDescriptionType(
        identifier="ConventionalEPI",
        userParameterLong=longs,
        userParameterDouble=doubles,
        comment="Siemens EPI: ramp-sampled readouts (times in us), reflected lines flagged "
        "IS_REVERSE, navigators flagged IS_PHASECORR_DATA",
    )


def build_header(meas: TwixMeasurement) -> xsd.ismrmrdHeader:
    """The ISMRMRD header of one twix measurement (see the module docstring for the mapping).

    Raises
    ------
    DataError
        No imaging or calibration MDH in the measurement.
    HeaderError
        The protocol lacks the base resolution or the field of view.
    """
    hdr = meas.hdr
    yaps, m, dicom = hdr["MeasYaps"], hdr.get("Meas", {}), hdr.get("Dicom", {})
    kspace = [x for x in meas.mdbs if classify(x) in KSPACE_KINDS]
    if not kspace:
        raise DataError(
            f"{meas.path}: measurement {meas.index} holds no imaging scans "
            f"(only {dict(Counter(classify(x) for x in meas.mdbs))})"
        )
    geo = _geometry(meas, kspace)
    ctr = [x.mdh.Counter for x in kspace]
    limits = xsd.encodingLimitsType(
        kspace_encoding_step_1=_limit([c.Lin for c in ctr], geo.center_lin),
        kspace_encoding_step_2=_limit([c.Par for c in ctr], geo.center_par),
        slice=_limit([c.Sli for c in ctr]),
        contrast=_limit([c.Eco for c in ctr]),
        phase=_limit([c.Phs for c in ctr]),
        repetition=_limit([c.Rep for c in ctr]),
        set=_limit([c.Set for c in ctr]),
        average=_limit([c.Ave for c in ctr]),
        segment=_limit([c.Seg for c in ctr]),
    )
    kinds = Counter(classify(x) for x in kspace)
    accel = (
        int(_number(yaps, "sPat", "lAccelFactPE", default=1) or 1),
        int(_number(yaps, "sPat", "lAccelFact3D", default=1) or 1),
    )
    parallel = None
    if kinds["calibration"] or kinds["calibration_and_imaging"] or max(accel) > 1:
        if kinds["calibration_and_imaging"]:
            mode = xsd.calibrationModeType.EMBEDDED
        elif kinds["calibration"]:
            mode = xsd.calibrationModeType.SEPARATE
        else:
            mode = xsd.calibrationModeType.OTHER
        parallel = xsd.parallelImagingType(
            accelerationFactor=xsd.accelerationFactorType(
                kspace_encoding_step_1=accel[0], kspace_encoding_step_2=accel[1]
            ),
            calibrationMode=mode,
        )
    epi = _is_epi(meas, kspace)
    traj_name = (
        "epi" if epi else _TRAJECTORIES.get(int(_number(yaps, "sKSpace", "ucTrajectory") or 1))
    )
    encoding = xsd.encodingType(
        encodedSpace=xsd.encodingSpaceType(
            matrixSize=_matrix(geo.enc), fieldOfView_mm=_fov(geo.enc_fov)
        ),
        reconSpace=xsd.encodingSpaceType(
            matrixSize=_matrix(geo.recon),
            fieldOfView_mm=_fov(geo.recon_fov),
        ),
        encodingLimits=limits,
        trajectory=xsd.trajectoryType(traj_name or "other"),
        trajectoryDescription=_epi_description(meas) if epi else None,
        parallelImaging=parallel,
        echoTrainLength=int(_number(yaps, "sFastImaging", "lEPIFactor", default=0) or 0)
        if epi
        else None,
    )
    n_contrasts = max(int(_number(yaps, "lContrasts", default=1) or 1), limits.contrast.maximum + 1)
    te = [float(t) / 1000.0 for t in (_value(yaps, "alTE") or [])[:n_contrasts]]
    tr = [float(t) / 1000.0 for t in (_value(yaps, "alTR") or [])[:1]]
    # Siemens' inversion enum: 1 slice-selective, 2 non-selective, 4 off
    inversion = int(_number(yaps, "sPrepPulses", "ucInversion", default=4) or 4) in (1, 2)
    ti = [float(t) / 1000.0 for t in (_value(yaps, "alTI") or [])[:1]] if inversion else []
    flip = [float(a) for a in (_value(yaps, "adFlipAngleDegree") or [])[:1]]
    echo_spacing = _number(m, "iEffectiveEpiEchoSpacing") if epi else None
    sequence = xsd.sequenceParametersType(
        TR=tr,
        TE=te,
        TI=ti,
        flipAngle_deg=flip,
        sequence_type=_value(dicom, "tScanningSequence"),
        echo_spacing=[echo_spacing / 1000.0] if echo_spacing else [],
    )
    position = _value(dicom, "tPatientPosition") or _value(m, "tPatientPosition")
    try:
        patient_position = xsd.patientPositionType(position) if position else None
    except ValueError:
        patient_position = None
    channels = max(int(x.mdh.UsedChannels) for x in kspace)
    field_t = _number(m, "flMagneticFieldStrength") or _number(
        yaps, "sProtConsistencyInfo", "flNominalB0"
    )
    serial = _value(dicom, "DeviceSerialNumber")
    return xsd.ismrmrdHeader(
        version=1,
        measurementInformation=xsd.measurementInformationType(
            measurementID=str(int(_number(m, "MeasUID", default=0) or 0)),
            patientPosition=patient_position,
            protocolName=_value(dicom, "tProtocolName") or _value(yaps, "tProtocolName"),
            sequenceName=_value(yaps, "tSequenceFileName"),
        ),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            systemVendor=_value(dicom, "Manufacturer"),
            systemModel=_value(dicom, "ManufacturersModelName"),
            systemFieldStrength_T=field_t,
            receiverChannels=channels,
            institutionName=_value(dicom, "InstitutionName"),
            deviceSerialNumber=str(int(serial)) if isinstance(serial, float) else serial,
        ),
        experimentalConditions=xsd.experimentalConditionsType(
            H1resonanceFrequency_Hz=int(
                _number(dicom, "lFrequency")
                or _number(yaps, "sTXSPEC", "asNucleusInfo", 0, "lFrequency")
                or 0
            )
        ),
        encoding=[encoding],
        sequenceParameters=sequence,
        userParameters=xsd.userParametersType(
            userParameterLong=[
                xsd.userParameterLongType(name="TwixMeasurementIndex", value=meas.index),
                xsd.userParameterLongType(name="TwixMeasurementCount", value=meas.count),
            ],
            userParameterString=[
                xsd.userParameterStringType(name="TwixVersion", value=meas.version),
                *(
                    [xsd.userParameterStringType(name="SoftwareVersions", value=str(sw))]
                    if (sw := _value(dicom, "SoftwareVersions"))
                    else []
                ),
            ],
        ),
    )


def header_xml(header: xsd.ismrmrdHeader) -> str:
    """Serialize an ISMRMRD header."""
    return header.toXML("utf-8") if hasattr(header, "toXML") else xsd.ToXML(header)


# --------------------------------------------------------------------------------------------
# acquisitions
# --------------------------------------------------------------------------------------------
def _directions(mdb: Any) -> tuple[list[float], list[float], list[float]]:
    """(read, phase, slice) directions: the MDH quaternion (w, x, y, z) is a rotation matrix
    whose columns are (phase, read, slice) in the patient coordinate system."""
    from twixtools.quat import quaternion_to_directions

    w, x, y, z = (float(v) for v in mdb.mdh.SliceData.Quaternion)
    if w == x == y == z == 0.0:  # noise scans carry no orientation
        return [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]
    phase, read, slc = quaternion_to_directions([x, y, z, w])
    return list(read), list(phase), list(slc)


def _acquisition(meas: TwixMeasurement, mdb: Any, kind: str, channels: int) -> ismrmrd.Acquisition:
    try:
        data = np.ascontiguousarray(np.atleast_2d(mdb.data), dtype=np.complex64)
    except ValueError as exc:
        raise DataError(
            f"{meas.path}: truncated or corrupt twix file: cannot read the samples of scan "
            f"{mdb.mdh.ScanCounter}: {exc}"
        ) from None
    h = mdb.mdh
    if data.shape != (int(h.UsedChannels), int(h.SamplesInScan)):
        raise DataError(
            f"{meas.path}: scan {h.ScanCounter}: read {data.shape} samples, its header says "
            f"{h.UsedChannels} channels × {h.SamplesInScan} samples"
        )
    acq = ismrmrd.Acquisition.from_array(data)
    acq.measurement_uid = int(h.MeasUID)
    acq.scan_counter = int(h.ScanCounter)
    acq.acquisition_time_stamp = int(h.TimeStamp)
    acq.physiology_time_stamp[0] = int(h.PMUTimeStamp)
    acq.available_channels = channels
    for c in range(data.shape[0]):
        acq.channel_mask[c // 64] |= np.uint64(1) << np.uint64(c % 64)
    acq.discard_pre = int(h.CutOff.Pre)
    acq.discard_post = int(h.CutOff.Post)
    acq.center_sample = int(h.CenterCol)
    acq.sample_time_us = _dwell_us(meas, int(h.Counter.Eco))
    pos = h.SliceData.SlicePos
    acq.position[:] = (float(pos.Sag), float(pos.Cor), float(pos.Tra))
    read, phase, slc = _directions(mdb)
    acq.read_dir[:], acq.phase_dir[:], acq.slice_dir[:] = read, phase, slc
    acq.patient_table_position[:] = [float(getattr(h, f"PTABPos{a}", 0)) for a in "XYZ"]
    c = h.Counter
    idx = acq.idx
    idx.kspace_encode_step_1, idx.kspace_encode_step_2 = int(c.Lin), int(c.Par)
    idx.average, idx.slice, idx.contrast = int(c.Ave), int(c.Sli), int(c.Eco)
    idx.phase, idx.repetition, idx.set, idx.segment = int(c.Phs), int(c.Rep), int(c.Set), int(c.Seg)
    user = [int(c.Ida), int(c.Idb), int(c.Idc), int(c.Idd), int(c.Ide), int(h.CenterLin)]
    user.append(int(h.CenterPar))
    idx.user[: len(user)] = user
    ice = [int(v) for v in h.IceProgramPara]
    acq.user_int[: min(8, len(ice))] = ice[:8]
    acq.user_float[: max(0, min(8, len(ice) - 8))] = [float(v) for v in ice[8:16]]
    for name, flag in FLAG_MAP.items():
        if mdb.is_flag_set(name):
            acq.set_flag(flag)
    if kind == "calibration_and_imaging":
        acq.clear_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
        acq.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
    return acq


@dataclass
class AcquisitionCounts:
    """How the MDHs of a measurement were converted."""

    noise: int = 0
    imaging: int = 0
    calibration: int = 0
    calibration_and_imaging: int = 0
    other: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)

    @property
    def written(self) -> int:
        return (
            self.noise
            + self.imaging
            + self.calibration
            + self.calibration_and_imaging
            + sum(self.other.values())
        )


def _flag_names(mdb: Any, names: tuple[str, ...], default: str = "none") -> str:
    return "+".join(n for n in names if mdb.is_flag_set(n)) or default


def iter_measurement_acquisitions(
    meas: TwixMeasurement, counts: AcquisitionCounts | None = None
) -> Iterator[ismrmrd.Acquisition]:
    """Yield the ISMRMRD acquisitions of one measurement in acquisition order.

    ``counts`` (optional) is filled with what was converted and what was dropped.
    """
    counts = counts if counts is not None else AcquisitionCounts()
    kinds = [classify(x) for x in meas.mdbs]
    kept = [i for i, k in enumerate(kinds) if k != "dropped"]
    kspace = [i for i in kept if kinds[i] in KSPACE_KINDS]
    last_of_group: dict[tuple[int, ...], int] = {}
    first_of_group: dict[tuple[int, ...], int] = {}
    for i in kspace:
        key = _group_key(meas.mdbs[i])
        last_of_group[key] = i
        first_of_group.setdefault(key, i)
    last_in_slice, first_in_slice = set(last_of_group.values()), set(first_of_group.values())
    channels = max((int(meas.mdbs[i].mdh.UsedChannels) for i in kept), default=0)
    for i, kind in enumerate(kinds):
        mdb = meas.mdbs[i]
        if kind == "dropped":
            counts.dropped[_flag_names(mdb, DROPPED_FLAGS, default="no samples")] += 1
            continue
        acq = _acquisition(meas, mdb, kind, channels)
        if kind == "other":
            counts.other[_flag_names(mdb, NON_IMAGING_FLAGS)] += 1
        else:
            setattr(counts, kind, getattr(counts, kind) + 1)
        if i in first_in_slice:
            acq.set_flag(ismrmrd.ACQ_FIRST_IN_SLICE)
        if i in last_in_slice:
            acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        if kspace and i == kspace[-1]:
            acq.set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
        yield acq
    if counts.other:
        logger.info(
            "%s: %d non-imaging scan(s) kept with their ISMRMRD flags (%s); reconstructions "
            "skip them",
            meas.path.name,
            sum(counts.other.values()),
            ", ".join(f"{n} {k}" for k, n in counts.other.items()),
        )
    if counts.dropped:
        logger.info(
            "%s: %d MDH(s) without an ISMRMRD equivalent not converted: %s",
            meas.path.name,
            sum(counts.dropped.values()),
            dict(counts.dropped),
        )


# --------------------------------------------------------------------------------------------
# entry points used by mrprior.io.raw and the CLI
# --------------------------------------------------------------------------------------------
def read_twix_header(path: str | Path, measurement: int = -1) -> xsd.ismrmrdHeader:
    """The ISMRMRD header of a twix file's measurement (default: the last).

    The header needs every MDH (counters, k-space centres, channels), and twixtools reads a
    VD/VE file's data blocks while parsing them, so the XML is cached per (file, size,
    modification time, measurement): a recon asks for the header more than once.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return build_header(read_measurement(path, measurement))  # its error names the problem
    xml = _header_xml_cached(str(path), st.st_size, st.st_mtime_ns, measurement)
    return xsd.CreateFromDocument(xml)


@functools.lru_cache(maxsize=8)
def _header_xml_cached(path: str, size: int, mtime_ns: int, measurement: int) -> str:
    return header_xml(build_header(read_measurement(path, measurement)))


def iter_twix_acquisitions(
    path: str | Path, measurement: int = -1
) -> Iterator[ismrmrd.Acquisition]:
    """The ISMRMRD acquisitions of a twix file's measurement, in acquisition order."""
    yield from iter_measurement_acquisitions(read_measurement(path, measurement))


def check_reconstructable(header: Any, path: str | Path) -> None:
    """Raise a DataError naming why a converted twix measurement cannot be reconstructed here."""
    enc = header.encoding[0]
    traj = str(getattr(enc.trajectory, "value", enc.trajectory)).lower()
    if traj == "epi":
        desc = enc.trajectoryDescription
        ramps = {p.name: p.value for p in (desc.userParameterLong if desc else [])}
        raise DataError(
            f"{path}: EPI data (ramp-sampled readouts: regrid mode {ramps.get('regridMode')}, "
            f"ramps {ramps.get('rampUpTime')}/{ramps.get('rampDownTime')} us of a "
            f"{ramps.get('flatTopTime')} us flat top; alternating readout directions with "
            "phase-correction navigators) need ramp-sampling regridding and Nyquist-ghost "
            "correction, which mrprior does not do; `mrprior convert` writes them as ISMRMRD "
            "raw data for an EPI reconstruction (e.g. Gadgetron's EPI chain)"
        )


def twix_recon_header(path: str | Path, header: Any | None = None) -> Any:
    """The header to reconstruct a twix file with (built if not given), after checking that
    mrprior can reconstruct it: EPI is refused with the reason (:func:`check_reconstructable`).
    """
    header = read_twix_header(path) if header is None else header
    check_reconstructable(header, path)
    return header


@dataclass
class ConversionSummary:
    """What :func:`convert_twix` wrote."""

    input: Path
    output: Path
    measurement: int
    measurements: int
    version: str
    header: xsd.ismrmrdHeader = field(repr=False)
    counts: AcquisitionCounts

    def describe(self) -> str:
        enc = self.header.encoding[0]
        e, r = enc.encodedSpace.matrixSize, enc.reconSpace.matrixSize
        c = self.counts
        other = sum(c.other.values())
        traj = str(getattr(enc.trajectory, "value", enc.trajectory))
        return (
            f"{self.input} -> {self.output}: twix {self.version}, measurement "
            f"{self.measurement + 1}/{self.measurements}, {traj}, encoded {e.x}x{e.y}x{e.z}, "
            f"recon {r.x}x{r.y}x{r.z}, {self.header.acquisitionSystemInformation.receiverChannels}"
            f" coils; {c.written} acquisitions: {c.imaging + c.calibration_and_imaging} imaging "
            f"({c.calibration_and_imaging} also calibration), {c.calibration} calibration-only, "
            f"{c.noise} noise, {other} other (flagged)"
            + (f"; {sum(c.dropped.values())} MDHs not converted" if c.dropped else "")
        )


def convert_twix(
    path: str | Path, output: str | Path, measurement: int = -1, overwrite: bool = False
) -> ConversionSummary:
    """Write one measurement of a twix file as an ISMRMRD raw data file (``/dataset``).

    The file is written next to ``output`` under a temporary name and renamed when complete, so
    a failed conversion leaves nothing behind.

    Raises
    ------
    DataError
        Unreadable, truncated or non-imaging input; ``output`` exists and ``overwrite`` is false.
    """
    path, output = Path(path), Path(output)
    if output.exists() and not overwrite:
        raise DataError(f"{output} exists (use --overwrite to replace it)")
    if output.exists() and output.is_dir():
        raise DataError(f"{output} is a directory")
    meas = read_measurement(path, measurement)
    header = build_header(meas)
    counts = AcquisitionCounts()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        ds = ismrmrd.Dataset(str(tmp), "dataset", create_if_needed=True)
        try:
            ds.write_xml_header(header_xml(header))
            for acq in iter_measurement_acquisitions(meas, counts):
                ds.append_acquisition(acq)
        finally:
            ds.close()
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    summary = ConversionSummary(
        input=path,
        output=output,
        measurement=meas.index,
        measurements=meas.count,
        version=meas.version,
        header=header,
        counts=counts,
    )
    logger.info("%s", summary.describe())
    return summary
