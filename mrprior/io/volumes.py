"""Read magnitude image volumes: NIfTI, NRRD, DICOM series (Siemens mosaics unpacked), numpy
arrays pickled in a ``dict`` (read without unpickling, :mod:`mrprior.io.pickled_arrays`) and
grayscale PNG / TIFF / PGM slices (``[frames, rows, cols]``, 1 mm: the files store no size).

:func:`load_volume` returns ``float32`` voxels and the voxel size (mm) of each array axis. The
axis order is the file's natural one: NIfTI is reoriented to the closest canonical (RAS+) order
``[x, y, z]``; NRRD keeps its ``sizes`` order ``[axis0, axis1, axis2]`` (fastest first, as
NIfTI); a DICOM series is ``[slice, row, column]`` ordered along the slice normal. Several
volumes of one series (4D NIfTI, several mosaic files, 4D NRRD) come back as a 4D array with the
volumes on the last axis. Scaling (NIfTI ``scl_slope``, DICOM ``RescaleSlope/Intercept``) is
applied.

The NRRD reader here covers what scanners and 3D Slicer write: attached data, encodings
``raw``, ``gzip`` and ``bzip2``, the integer and float types, either endianness, ``space
directions`` or ``spacings``.

A pickle (``.pkl``, as ``mdreg`` and ``vreg`` ship their scans) must hold a ``dict`` (or a
``vreg`` ``Volume3D``) whose ``array`` (``_values``) is the 3D or 4D volume in its stored order
(volumes on the last axis); the voxel size of the first three axes comes from ``spacing``, else
the column norms of ``_affine``, else a 2-value ``pixel_spacing`` with the slice spacing taken as
the larger in-plane size, else 1 mm (the last two logged).
"""

from __future__ import annotations

import bz2
import gzip
import logging
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrprior.errors import DataError
from mrprior.io.pickled_arrays import read_pickled_arrays

logger = logging.getLogger(__name__)

Spacing = tuple[float, float, float]

NRRD_TYPES = {
    "signed char": "i1", "int8": "i1", "int8_t": "i1",
    "uchar": "u1", "unsigned char": "u1", "uint8": "u1", "uint8_t": "u1",
    "short": "i2", "short int": "i2", "signed short": "i2", "signed short int": "i2",
    "int16": "i2", "int16_t": "i2",
    "ushort": "u2", "unsigned short": "u2", "unsigned short int": "u2", "uint16": "u2",
    "uint16_t": "u2",
    "int": "i4", "signed int": "i4", "int32": "i4", "int32_t": "i4",
    "uint": "u4", "unsigned int": "u4", "uint32": "u4", "uint32_t": "u4",
    "longlong": "i8", "long long": "i8", "long long int": "i8", "signed long long": "i8",
    "signed long long int": "i8", "int64": "i8", "int64_t": "i8",
    "ulonglong": "u8", "unsigned long long": "u8", "unsigned long long int": "u8",
    "uint64": "u8", "uint64_t": "u8",
    "float": "f4", "double": "f8",
}  # fmt: skip

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


# ------------------------------------------------------------------------------------ NRRD


def _nrrd_vector(text: str) -> list[float] | None:
    text = text.strip()
    if text == "none":
        return None
    return [float(v) for v in text.strip("()").split(",")]


def read_nrrd_header(path: str | Path) -> tuple[dict[str, str], int]:
    """NRRD header fields (lower-case keys) and the byte offset of the attached data."""
    p = Path(path)
    with p.open("rb") as f:
        magic = f.readline()
        if not magic.startswith(b"NRRD000"):
            raise DataError(f"{p}: not a NRRD file (magic {magic[:8]!r})")
        fields: dict[str, str] = {}
        while True:
            line = f.readline()
            if not line:
                raise DataError(f"{p}: NRRD header has no end (blank line) before the data")
            s = line.decode("latin-1").rstrip("\r\n")
            if s == "":
                break
            if s.startswith("#"):
                continue
            if ":=" in s:  # key/value pairs, not fields
                continue
            if ": " not in s:
                raise DataError(f"{p}: bad NRRD header line {s!r}")
            k, v = s.split(": ", 1)
            fields[k.strip().lower()] = v.strip()
        return fields, f.tell()


def read_nrrd(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Voxels ``[sizes[0], sizes[1], ...]`` (float32) and the spacing of every axis."""
    p = Path(path)
    h, offset = read_nrrd_header(p)
    for key in ("type", "dimension", "sizes", "encoding"):
        if key not in h:
            raise DataError(f"{p}: NRRD header lacks {key!r}")
    if "data file" in h or "datafile" in h:
        raise DataError(f"{p}: detached NRRD data files are not supported")
    typ = NRRD_TYPES.get(h["type"].lower())
    if typ is None:
        raise DataError(f"{p}: NRRD type {h['type']!r} is not supported")
    sizes = [int(v) for v in h["sizes"].split()]
    if len(sizes) != int(h["dimension"]):
        raise DataError(f"{p}: NRRD sizes {sizes} do not match dimension {h['dimension']}")
    endian = "<" if h.get("endian", "little") == "little" else ">"
    dt = np.dtype(endian + typ) if typ[1] != "1" else np.dtype(typ)
    raw = p.read_bytes()[offset:]
    enc = h["encoding"].lower()
    try:
        if enc in ("gzip", "gz"):
            raw = gzip.decompress(raw)
        elif enc in ("bzip2", "bz2"):
            raw = bz2.decompress(raw)
        elif enc != "raw":
            raise DataError(f"{p}: NRRD encoding {enc!r} is not supported (raw, gzip, bzip2)")
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"{p}: corrupt {enc} NRRD data: {exc}") from exc
    n = int(np.prod(sizes))
    if len(raw) < n * dt.itemsize:
        raise DataError(f"{p}: NRRD data is truncated ({len(raw)} of {n * dt.itemsize} bytes)")
    # NRRD lists the fastest axis first: a C-order array is sizes reversed, then transposed
    data = np.frombuffer(raw[: n * dt.itemsize], dt)
    data = data.reshape(sizes[::-1]).transpose().astype(np.float32)
    spacing: list[float] = [1.0] * len(sizes)
    if "space directions" in h:
        vecs = [_nrrd_vector(v) for v in re.findall(r"none|\([^)]*\)", h["space directions"])]
        spacing = [1.0 if v is None else float(np.linalg.norm(v)) for v in vecs]
    elif "spacings" in h:
        spacing = [float(v) if v.lower() != "nan" else 1.0 for v in h["spacings"].split()]
    if len(spacing) != len(sizes):
        raise DataError(f"{p}: NRRD spacing {spacing} does not match sizes {sizes}")
    return np.ascontiguousarray(data), tuple(spacing)


# ----------------------------------------------------------------------------------- DICOM


def mosaic_count(ds: Any) -> int:
    """Number of slices in a Siemens mosaic (0 when ``ds`` is not a mosaic)."""
    image_type = [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]
    n = ds.get((0x0019, 0x100A))
    if n is not None:
        count = int(
            n.value if not isinstance(n.value, bytes) else int.from_bytes(n.value, "little")
        )
        return count if count > 1 else 0
    if "MOSAIC" in image_type:
        acq = [int(v) for v in (getattr(ds, "AcquisitionMatrix", None) or []) if int(v)]
        if len(acq) >= 1:
            tiles = int(ds.Rows) // max(acq)
            return tiles * tiles if tiles > 1 else 0
    return 0


def unpack_mosaic(frame: np.ndarray, count: int) -> np.ndarray:
    """Siemens mosaic ``[rows, cols]`` → slices ``[count, rows/t, cols/t]`` (``t = ⌈√count⌉``).

    Tiles are stored row by row, left to right; trailing empty tiles are dropped.
    """
    if frame.ndim != 2 or count < 1:
        raise DataError(f"mosaic frame {frame.shape} with {count} slices")
    t = math.ceil(math.sqrt(count))
    rows, cols = frame.shape
    if rows % t or cols % t:
        raise DataError(f"mosaic {frame.shape} does not split into {t}×{t} tiles")
    h, w = rows // t, cols // t
    tiles = frame.reshape(t, h, t, w).transpose(0, 2, 1, 3).reshape(t * t, h, w)
    return np.ascontiguousarray(tiles[:count])


def _rescale(ds: Any, arr: np.ndarray) -> np.ndarray:
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    icpt = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(icpt)


def dicom_slices(ds: Any) -> np.ndarray:
    """The pixels of one DICOM dataset as slices ``[n, rows, cols]`` float32 (mosaics unpacked)."""
    arr = _rescale(ds, ds.pixel_array)
    n = mosaic_count(ds)
    if n:
        if arr.ndim != 2:
            raise DataError(f"mosaic with pixel array of shape {arr.shape}")
        return unpack_mosaic(arr, n)
    return arr if arr.ndim == 3 else arr[None]


def slice_position(ds: Any) -> float:
    """A DICOM slice's position along its normal (ImagePositionPatient · the normal of
    ImageOrientationPatient), else its InstanceNumber: the sort key of a series."""
    pos = getattr(ds, "ImagePositionPatient", None)
    ori = getattr(ds, "ImageOrientationPatient", None)
    if pos is not None and ori is not None and len(ori) == 6:
        nrm = np.cross(np.asarray(ori[:3], float), np.asarray(ori[3:], float))
        return float(np.dot(nrm, np.asarray(pos, float)))
    return float(getattr(ds, "InstanceNumber", 0) or 0)


def dicom_spacing(ds: Any, positions: Sequence[float] = ()) -> Spacing:
    """(slice, row, column) spacing: slice positions' median step, else the header's values."""
    ps = getattr(ds, "PixelSpacing", None) or (1.0, 1.0)
    st = 0.0
    if len(positions) > 1:
        steps = np.abs(np.diff(np.sort(np.asarray(positions, float))))
        steps = steps[steps > 1e-3]
        st = float(np.median(steps)) if steps.size else 0.0
    if st <= 0:
        st = float(
            getattr(ds, "SpacingBetweenSlices", 0) or getattr(ds, "SliceThickness", 0) or 1.0
        )
    return (st, float(ps[0]), float(ps[1]))


def read_dicom_series(paths: Iterable[str | Path]) -> tuple[np.ndarray, Spacing]:
    """One DICOM series: slices sorted along the normal → ``[slice, row, col]``.

    Files that are Siemens mosaics each hold a whole volume: they are unpacked and stacked on a
    4th (last) axis in acquisition order.
    """
    import pydicom

    items = []
    for p in paths:
        try:
            ds = pydicom.dcmread(str(p))
        except Exception as exc:
            raise DataError(f"{p}: not a readable DICOM file: {exc}") from exc
        if "PixelData" not in ds:
            raise DataError(f"{p}: DICOM file without pixel data")
        items.append(ds)
    if not items:
        raise DataError("no DICOM files given")
    uids = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in items}
    if len(uids) > 1:
        raise DataError(f"the files belong to {len(uids)} series: load one series at a time")
    if all(mosaic_count(ds) for ds in items):
        items.sort(key=lambda ds: int(getattr(ds, "InstanceNumber", 0) or 0))
        vols = [dicom_slices(ds) for ds in items]
        if len({v.shape for v in vols}) != 1:
            raise DataError(f"mosaics of different sizes: {sorted({v.shape for v in vols})}")
        data = np.stack(vols, axis=-1) if len(vols) > 1 else vols[0]
        ds0 = items[0]
        st = float(
            getattr(ds0, "SpacingBetweenSlices", 0) or getattr(ds0, "SliceThickness", 0) or 1.0
        )
        ps = getattr(ds0, "PixelSpacing", None) or (1.0, 1.0)
        return data, (st, float(ps[0]), float(ps[1]))
    items.sort(key=slice_position)
    slices = [dicom_slices(ds) for ds in items]
    shapes = {s.shape[1:] for s in slices}
    if len(shapes) != 1:
        raise DataError(f"DICOM series with slices of different sizes {sorted(shapes)}")
    data = np.concatenate(slices, axis=0)
    return data, dicom_spacing(items[0], [slice_position(ds) for ds in items])


# ------------------------------------------------------------------------------------ entry


def read_nifti(path: str | Path) -> tuple[np.ndarray, Spacing]:
    """NIfTI in closest-canonical (RAS+) order ``[x, y, z(, t)]``, float32, and the voxel size."""
    import nibabel as nib

    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:
        raise DataError(f"{path}: not a readable NIfTI file: {exc}") from exc
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    while len(zooms) < 3:
        zooms.append(1.0)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0]
    if data.ndim not in (3, 4):
        raise DataError(f"{path}: NIfTI image of shape {data.shape} is not 2D, 3D or 4D")
    return data, (zooms[0], zooms[1], zooms[2])


def _pickle_spacing(obj: dict, path: str | Path) -> Any:
    if obj.get("spacing") is not None:
        return obj["spacing"]
    affine = obj.get("_affine")
    if isinstance(affine, np.ndarray) and affine.shape == (4, 4):
        return np.linalg.norm(affine[:3, :3], axis=0)
    px = obj.get("pixel_spacing")
    if px is not None and len(px) == 2:
        px = [float(v) for v in px]
        logger.warning("%s: slice spacing not stored; the in-plane %.3g mm assumed", path, max(px))
        return (*px, max(px))
    logger.warning("%s: no 'spacing' in the pickle; 1 mm assumed", path)
    return (1.0, 1.0, 1.0)


def read_pickled_volume(path: str | Path) -> tuple[np.ndarray, Spacing]:
    """The volume (3D or 4D) and voxel size of a pickled ``dict``, never unpickling it."""
    obj = read_pickled_arrays(path)
    key = next((k for k in ("array", "_values") if isinstance(obj, dict) and k in obj), None)
    arr = obj[key] if key else None
    if not isinstance(arr, np.ndarray) or arr.ndim not in (3, 4):
        raise DataError(f"{path}: pickle holds no 3D/4D numpy array under 'array' or '_values'")
    spacing = _pickle_spacing(obj, path)
    sp = [float(v) for v in spacing]
    if len(sp) != 3 or not all(math.isfinite(v) and v > 0 for v in sp):
        raise DataError(f"{path}: 'spacing' {spacing!r} is not three positive sizes")
    return np.asarray(arr, dtype=np.float32), (sp[0], sp[1], sp[2])


IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".pgm")


def read_image(path: str | Path) -> tuple[np.ndarray, Spacing]:
    """A grayscale image file (every frame of a multi-page TIFF) as ``[frames, rows, cols]``.

    Colour images are converted to luminance; the files hold no voxel size, so 1 mm is
    returned.
    """
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            frames = [
                np.asarray(fr.convert("L") if fr.mode in ("RGB", "RGBA", "P", "LA") else fr)
                for fr in ImageSequence.Iterator(im)
            ]
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: unreadable image: {exc}") from exc
    if not frames or frames[0].ndim != 2:
        raise DataError(f"{path}: not a grayscale image")
    return np.stack(frames).astype(np.float32), (1.0, 1.0, 1.0)


def volume_kind(path: str | Path) -> str | None:
    """``nifti``, ``nrrd``, ``dicom``, ``pickle``, ``image`` or ``None`` from the name / preamble."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith(".pkl"):
        return "pickle"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    try:
        with p.open("rb") as f:
            f.seek(128)
            if f.read(4) == b"DICM":
                return "dicom"
    except OSError:
        return None
    return None


def load_volume(paths: str | Path | Sequence[str | Path]) -> tuple[np.ndarray, Spacing]:
    """Read one volume: a NIfTI or NRRD file, or the files of one DICOM series.

    Parameters
    ----------
    paths
        one file, or several DICOM files of one series (a folder is expanded to its files).

    Returns
    -------
    data, spacing
        ``float32`` voxels ``[a, b, c]`` (or ``[a, b, c, t]`` for several volumes of one
        series) and the voxel size in mm of axes ``a, b, c`` (see the module docstring for the
        axis order of each format).

    Raises
    ------
    DataError
        unreadable or unsupported file, mixed kinds, several series.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p} does not exist")
    if not files:
        raise DataError(f"no files in {list(paths)}")
    kinds = {f: volume_kind(f) for f in files}
    unknown = [str(f) for f, k in kinds.items() if k is None]
    if unknown:
        raise DataError(
            f"unknown image file type: {unknown[:5]} (NIfTI, NRRD, DICOM, .pkl or PNG/TIFF expected)"
        )
    if len(set(kinds.values())) > 1:
        raise DataError(f"mixed file types {sorted(set(kinds.values()))}: load one volume")
    kind = next(iter(kinds.values()))
    if kind == "dicom":
        return read_dicom_series(files)
    if len(files) > 1:
        raise DataError(f"{len(files)} {kind} files given: one volume per call")
    if kind == "nifti":
        return read_nifti(files[0])
    if kind == "pickle":
        return read_pickled_volume(files[0])
    if kind == "image":
        return read_image(files[0])
    data, spacing = read_nrrd(files[0])
    if data.ndim == 2:
        data, spacing = data[:, :, None], (*spacing, 1.0)
    if data.ndim not in (3, 4):
        raise DataError(f"{files[0]}: NRRD of shape {data.shape} is not 2D, 3D or 4D")
    return data, (float(spacing[0]), float(spacing[1]), float(spacing[2]))
