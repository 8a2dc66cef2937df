"""Export images for a person to look at: windowed PNG files, PNG montages and NIfTI volumes.

Geometry convention for NIfTI: ISMRMRD positions and directions are in the DICOM patient
coordinate system (LPS, mm); NIfTI affines are RAS, so x and y are negated. The image
``position`` is taken as the centre of pixel ``(nx // 2, ny // 2)`` (the FFT centre, as
python-ismrmrd-server's ``mrd2dicom`` assumes); voxel ``(i, j, k)`` is readout column ``i``,
phase-encode row ``j`` and slice ``k``, slices sorted by their position along ``slice_dir``
(ascending), so the third affine column is ``slice_dir`` times the slice spacing. A 3D volume
written by :func:`mrprior.pipeline.images_from_series` (one image per partition, positions
``Δz`` apart along ``slice_dir``) becomes a NIfTI volume whose voxel ``(i, j, k)`` is the
reconstructed volume's ``[k, j, i]``.
"""

from __future__ import annotations

import logging
import math
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


def _stack_key(img: ismrmrd.Image) -> tuple[int, ...]:
    """Images of one stack (volume or multi-slice set): same series and counters but slice."""
    return (
        img.image_series_index,
        img.repetition,
        img.contrast,
        img.phase,
        img.set,
        img.average,
    )


def _along_slice(img: ismrmrd.Image) -> float:
    direction = _unit(img.slice_dir, np.array([0, 0, 1.0]))
    return float(np.dot(np.asarray(img.position, dtype=np.float64), direction))


def export_montage(
    images: Sequence[ismrmrd.Image], out_dir: str | Path, prefix: str = "montage"
) -> list[Path]:
    """Write one PNG montage per stack of images (a 3D volume or a multi-slice set).

    Images of the same series and counters (repetition, contrast, phase, set, average) form a
    stack; its slices are sorted by position along ``slice_dir`` (then by ``slice``) and tiled
    row by row, ``ceil(sqrt(n))`` per row, with one window for the whole stack (the first
    image's ``WindowCenter``/``WindowWidth``, else the stack's 0.5..99.5 percentiles). Files
    are named ``<prefix>_s<series>_r<rep>_c<contrast>_p<phase>_set<set>_a<avg>.png``.
    """
    from PIL import Image as PILImage

    stacks: dict[tuple[int, ...], list[ismrmrd.Image]] = {}
    for img in images:
        stacks.setdefault(_stack_key(img), []).append(img)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, stack in sorted(stacks.items()):
        stack.sort(key=lambda im: (round(_along_slice(im), 4), im.slice))
        planes = [_plane(im) for im in stack]
        ny, nx = planes[0].shape
        if any(p.shape != (ny, nx) for p in planes):
            raise DataError(f"images of series {key[0]} differ in matrix size")
        cols = math.ceil(math.sqrt(len(planes)))
        rows = math.ceil(len(planes) / cols)
        tiles = np.zeros((rows * ny, cols * nx))
        for n, plane in enumerate(planes):
            r, c = divmod(n, cols)
            tiles[r * ny : (r + 1) * ny, c * nx : (c + 1) * nx] = plane
        win = _meta_window(stack[0])
        if win is None:
            values = np.concatenate([p.ravel() for p in planes])
            pix = window_to_uint8(tiles, *_percentile_window(values))
        else:
            pix = window_to_uint8(tiles, *win)
        series, rep, contrast, phase, set_, avg = key
        name = f"{prefix}_s{series:03d}_r{rep:03d}_c{contrast}_p{phase}_set{set_}_a{avg}.png"
        path = out / name
        PILImage.fromarray(pix, mode="L").save(path)
        paths.append(path)
    logger.info("wrote %d montage(s) to %s", len(paths), out)
    return paths


def _percentile_window(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
    return float((hi + lo) / 2), float(max(hi - lo, 1e-30))


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
