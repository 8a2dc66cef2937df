"""ISMRMRD image files: write and read ``ismrmrd.Image`` lists in HDF5.

Layout (the convention of python-ismrmrd-server's client): images go under
``/<dataset>/image_<image_series_index>/{header,attributes,data}``, one HDF5 group per image
series, images in the order given. An ISMRMRD image group holds images of one size and data
type only, so images of a series that differ from its first ones in size (or type) go to
``image_<series>_<k>`` (k = 1, 2, ... per further size). The raw data's XML header can be
stored as ``/<dataset>/xml`` so the file is self-describing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import ismrmrd

from mrprior.errors import DataError

logger = logging.getLogger(__name__)

#: HDF5 group name of one image series inside the dataset group.
SERIES_GROUP = "image_{series}"


def series_group(series_index: int) -> str:
    """Group name (inside the dataset) of image series ``series_index``."""
    return SERIES_GROUP.format(series=int(series_index))


def write_images(
    images: Iterable[ismrmrd.Image],
    path: str | Path,
    dataset: str = "dataset",
    header: Any | None = None,
    append: bool = False,
) -> Path:
    """Write ISMRMRD images to an HDF5 file, one group per ``image_series_index``.

    Parameters
    ----------
    images : the images (any data type ISMRMRD supports: float32, uint16, complex64, ...).
    path : output file; replaced unless ``append``.
    dataset : top-level group name.
    header : optional ISMRMRD header (xsd object, str or bytes) stored as ``/<dataset>/xml``.
    append : add to an existing file instead of replacing it.

    Returns
    -------
    The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = list(images)
    if not append and path.exists():
        path.unlink()
    groups = _existing_groups(path, dataset) if append and path.exists() else {}
    with ismrmrd.Dataset(str(path), dataset, create_if_needed=True) as ds:
        if header is not None:
            if hasattr(header, "toXML"):
                header = header.toXML("utf-8")
            if isinstance(header, bytes):
                header = header.decode("utf-8")
            ds.write_xml_header(str(header).rstrip("\0"))
        for img in images:
            ds.append_image(_group_for(groups, img), img)
    logger.info("wrote %d images to %s", len(images), path)
    return path


_GROUP = re.compile(r"image_(\d+)(?:_(\d+))?")


def _existing_groups(path: Path, dataset: str) -> dict[str, tuple[Any, ...]]:
    """Image group name → (shape, dtype) of one image, for the groups already in ``path``."""
    out: dict[str, tuple[Any, ...]] = {}
    with h5py.File(path, "r") as f:
        for name, obj in f.get(dataset, {}).items():
            if isinstance(obj, h5py.Group) and "data" in obj and _GROUP.fullmatch(name):
                out[name] = (tuple(obj["data"].shape[1:]), obj["data"].dtype.str)
    return out


def _group_for(groups: dict[str, tuple[Any, ...]], img: ismrmrd.Image) -> str:
    """The group of ``img``: its series' group holding images of its size and type (new if none)."""
    key = (tuple(img.data.shape), img.data.dtype.str)
    base = series_group(img.image_series_index)
    k = 0
    while True:
        name = base if k == 0 else f"{base}_{k}"
        if groups.setdefault(name, key) == key:
            return name
        k += 1


def read_images(path: str | Path, dataset: str = "dataset") -> list[ismrmrd.Image]:
    """Read every image of an ISMRMRD image file, ordered by series index, then file order
    (images of a series stored in several groups by size: group by group).

    Raises
    ------
    DataError
        Not an HDF5 file, no ``/<dataset>`` group, or no image groups in it.
    """
    path = Path(path)
    if not path.is_file() or not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 file")
    groups: list[tuple[tuple[int, int], str]] = []
    with h5py.File(path, "r") as f:
        if dataset not in f:
            raise DataError(f"{path}: no /{dataset} group")
        for name, obj in f[dataset].items():
            if isinstance(obj, h5py.Group) and {"header", "attributes", "data"} <= set(obj):
                match = _GROUP.fullmatch(name)
                order = (int(match[1]), int(match[2] or 0)) if match else (1 << 30, 0)
                groups.append((order, name))
    if not groups:
        raise DataError(f"{path}: no ISMRMRD images under /{dataset}")
    images = []
    with ismrmrd.Dataset(str(path), dataset, mode="r") as ds:
        for _, name in sorted(groups):
            for i in range(ds.number_of_images(name)):
                images.append(ds.read_image(name, i))
    return images
