"""Export images for a person to look at: windowed PNG files and NIfTI volumes.

Geometry convention for NIfTI: ISMRMRD positions and directions are in the DICOM patient
coordinate system (LPS, mm); NIfTI affines are RAS, so x and y are negated. The image
``position`` is taken as the centre of pixel ``(nx // 2, ny // 2)`` (the FFT centre, as
python-ismrmrd-server's ``mrd2dicom`` assumes); voxel ``(i, j)`` is readout column ``i`` and
phase-encode row ``j``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ismrmrd
import numpy as np

from mrprior.errors import DataError

logger = logging.getLogger(__name__)


def _plane(img: ismrmrd.Image) -> np.ndarray:
    data = np.asarray(img.data)
    if data.shape[0] != 1 or data.shape[1] != 1:
        raise DataError(f"only single-channel 2D images can be exported: {data.shape=}")
    return np.abs(data[0, 0]).astype(np.float64)


def _meta_window(img: ismrmrd.Image) -> tuple[float, float] | None:
    try:
        return float(img.meta["WindowCenter"]), float(img.meta["WindowWidth"])
    except (KeyError, TypeError, ValueError):
        return None


def window_to_uint8(
    image: np.ndarray, center: float | None = None, width: float | None = None
) -> np.ndarray:
    """Map ``image`` to uint8 with a window (default: the 0.5..99.5 percentile range)."""
    image = np.asarray(image, dtype=np.float64)
    if center is None or width is None or width <= 0:
        lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    else:
        lo, hi = center - width / 2, center + width / 2
    if not hi > lo:
        hi = lo + 1.0
    return np.clip(np.round((image - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


def export_png(
    images: Sequence[ismrmrd.Image] | Sequence[np.ndarray],
    out_dir: str | Path,
    prefix: str = "image",
) -> list[Path]:
    """Write each image as an 8-bit grayscale PNG (magnitude, windowed).

    ISMRMRD images use their ``WindowCenter``/``WindowWidth`` meta attributes when present and
    are named ``<prefix>_s<series>_i<index>_r<rep>_sl<slice>.png``; arrays (``[ny, nx]``, complex
    or real) are windowed to their 0.5..99.5 percentiles and named ``<prefix>_<n>.png``.
    """
    from PIL import Image as PILImage

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, img in enumerate(images):
        if isinstance(img, ismrmrd.Image):
            plane = _plane(img)
            win = _meta_window(img)
            pix = window_to_uint8(plane, *(win or (None, None)))
            name = (
                f"{prefix}_s{img.image_series_index:03d}_i{img.image_index:04d}"
                f"_r{img.repetition:03d}_sl{img.slice:03d}.png"
            )
        else:
            arr = np.asarray(img)
            if arr.ndim != 2:
                raise DataError(f"PNG export needs 2D arrays: {arr.shape=}")
            pix = window_to_uint8(np.abs(arr))
            name = f"{prefix}_{n:04d}.png"
        path = out / name
        PILImage.fromarray(pix, mode="L").save(path)
        paths.append(path)
    logger.info("wrote %d PNG files to %s", len(paths), out)
    return paths


def _unit(v: Any, fallback: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    return v / n if n > 0 else fallback


def image_affine(img: ismrmrd.Image, slice_spacing: float | None = None) -> np.ndarray:
    """4×4 RAS affine of one ISMRMRD image (voxel ``(i=x, j=y, k)`` → mm)."""
    nx, ny, _ = img.matrix_size
    fov = np.asarray(img.field_of_view, dtype=np.float64)
    read = _unit(img.read_dir, np.array([1.0, 0, 0]))
    phase = _unit(img.phase_dir, np.array([0, 1.0, 0]))
    slc = _unit(img.slice_dir, np.cross(read, phase))
    if not np.linalg.norm(np.asarray(img.read_dir, dtype=float)) > 0:
        warnings.warn("image has no orientation (zero read_dir); using identity", stacklevel=3)
    dx, dy = fov[0] / nx, fov[1] / ny
    dz = slice_spacing if slice_spacing else (fov[2] if fov[2] > 0 else 1.0)
    lps = np.eye(4)
    lps[:3, 0] = read * dx
    lps[:3, 1] = phase * dy
    lps[:3, 2] = slc * dz
    lps[:3, 3] = (
        np.asarray(img.position, dtype=np.float64)
        - read * dx * (nx // 2)
        - (phase * dy * (ny // 2))
    )
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def export_nifti(
    images: Sequence[ismrmrd.Image], path: str | Path, series_index: int | None = None
) -> Path:
    """Write one image series as a NIfTI-1 volume ``[x, y, slice(, repetition)]``.

    Images of ``series_index`` (default: the first image's series) are sorted by repetition,
    then by their position along the slice direction; the affine comes from the first slice's
    geometry and the spacing between slice positions (else the slice thickness).
    """
    import nibabel as nib

    if not images:
        raise DataError("no images to export")
    series = images[0].image_series_index if series_index is None else series_index
    sel = [im for im in images if im.image_series_index == series]
    if not sel:
        raise DataError(f"no images of series {series}")
    slc_dir = _unit(sel[0].slice_dir, np.array([0, 0, 1.0]))
    reps = sorted({im.repetition for im in sel})

    def along(im: ismrmrd.Image) -> float:
        return float(np.dot(np.asarray(im.position, dtype=np.float64), slc_dir))

    slices = sorted({(im.slice, round(along(im), 4)) for im in sel}, key=lambda t: (t[1], t[0]))
    order = {s[0]: k for k, s in enumerate(slices)}
    first = next(im for im in sel if order[im.slice] == 0)
    nx, ny, _ = first.matrix_size
    vol = np.zeros((nx, ny, len(slices), len(reps)), np.float32)
    for im in sel:
        if im.matrix_size[:2] != (nx, ny):
            raise DataError(f"images of series {series} differ in matrix size")
        vol[:, :, order[im.slice], reps.index(im.repetition)] = _plane(im).T
    spacing = None
    if len(slices) > 1:
        spacing = abs(slices[1][1] - slices[0][1]) or None
    affine = image_affine(first, spacing)
    data = vol[..., 0] if len(reps) == 1 else vol
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nifti = nib.Nifti1Image(data, affine)
    nifti.header.set_xyzt_units("mm")
    nib.save(nifti, str(path))
    return path
