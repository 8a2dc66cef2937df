"""Raw test files from Debian's ismrmrd-tools and image checks, shared by gadget and server tests."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest

from tests.gadget.harness import generate_shepp_logan, read_raw_file, with_geometry

GROUP_FIELDS = ("slice", "contrast", "phase", "repetition", "set", "average")


@dataclass
class RawCase:
    """One generated raw file, its acquisitions (with geometry) and the stored phantom."""

    path: Path
    header_xml: str
    acqs: list[ismrmrd.Acquisition]
    phantom: np.ndarray  # |phantom| [ny, nx]

    @property
    def groups(self) -> list[tuple[int, ...]]:
        """Group indices, in order, of the acquisitions flagged LAST_IN_SLICE."""
        return [
            tuple(int(getattr(a.idx, f)) for f in GROUP_FIELDS)
            for a in self.acqs
            if a.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE)
        ]


def nrmse(image: np.ndarray, reference: np.ndarray) -> float:
    """NRMSE of |image| against |reference| after a least-squares scalar fit (whole FOV)."""
    x = np.abs(np.squeeze(image)).astype(np.float64)
    ref = np.abs(reference).astype(np.float64)
    scale = (x * ref).sum() / max((x * x).sum(), 1e-30)
    return float(np.linalg.norm(scale * x - ref) / np.linalg.norm(ref))


def _make(tmp: Path, name: str, *args: str) -> RawCase:
    if shutil.which("ismrmrd_generate_cartesian_shepp_logan") is None:
        pytest.skip("Debian ismrmrd-tools not installed")
    path = generate_shepp_logan(tmp / f"{name}.h5", *args)
    xml, acqs = read_raw_file(path)
    with h5py.File(path, "r") as f:
        ph = f["dataset/phantom"][0]
    phantom = np.abs(ph["real"] + 1j * ph["imag"]) if ph.dtype.names else np.abs(ph)
    return RawCase(path, xml, with_geometry(acqs), phantom)


@pytest.fixture(scope="session")
def raw_a2(tmp_path_factory: pytest.TempPathFactory) -> RawCase:
    """64², 4 coils, R = 2 interleaved over 4 repetitions, 16 calibration lines, noise scan."""
    tmp = tmp_path_factory.mktemp("raw")
    return _make(
        tmp, "a2", "-m", "64", "-c", "4", "-a", "2", "-w", "16", "-C", "-r", "2", "-n", "0.01"
    )


@pytest.fixture(scope="session")
def raw_a3(tmp_path_factory: pytest.TempPathFactory) -> RawCase:
    """64², 4 coils, R = 3 interleaved over 3 repetitions, 16 calibration lines, noise scan."""
    tmp = tmp_path_factory.mktemp("raw")
    return _make(
        tmp, "a3", "-m", "64", "-c", "4", "-a", "3", "-w", "16", "-C", "-r", "1", "-n", "0.01"
    )


def check_images(
    images: list[ismrmrd.Image],
    case: RawCase,
    *,
    max_nrmse: float | None,
    data_type: int = ismrmrd.DATATYPE_FLOAT,
) -> list[float]:
    """Number, indices, types and geometry of returned images, and NRMSE against the phantom."""
    groups = case.groups
    assert len(images) == len(groups), f"{len(images)} images for {len(groups)} slices"
    got = sorted(tuple(int(getattr(im, f)) for f in GROUP_FIELDS) for im in images)
    assert got == sorted(groups)
    assert sorted(im.image_index for im in images) == list(range(1, len(groups) + 1))
    first_acq = next(a for a in case.acqs if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT))
    header = ismrmrd.xsd.CreateFromDocument(case.header_xml)
    rs = header.encoding[0].reconSpace
    errors = []
    for im in images:
        assert im.data_type == data_type
        assert im.image_type == ismrmrd.IMTYPE_MAGNITUDE
        assert im.image_series_index == 1
        assert tuple(im.matrix_size) == (rs.matrixSize.x, rs.matrixSize.y, 1)
        np.testing.assert_allclose(
            im.field_of_view, (rs.fieldOfView_mm.x, rs.fieldOfView_mm.y, rs.fieldOfView_mm.z)
        )
        for attr in ("position", "read_dir", "phase_dir", "slice_dir", "patient_table_position"):
            np.testing.assert_allclose(getattr(im, attr), getattr(first_acq, attr), err_msg=attr)
        meta = ismrmrd.Meta.deserialize(im.attribute_string)
        assert meta["DataRole"] == "Image"
        assert float(meta["WindowWidth"]) > 0
        assert "ImageProcessingHistory" in meta
        errors.append(nrmse(im.data, case.phantom))
    if max_nrmse is not None:
        assert max(errors) < max_nrmse, errors
    return errors


def first_slice(case: RawCase) -> list[ismrmrd.Acquisition]:
    """The acquisitions of ``case`` up to and including the first ``LAST_IN_SLICE``."""
    out = []
    for acq in case.acqs:
        out.append(acq)
        if acq.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE):
            return out
    raise AssertionError("no LAST_IN_SLICE")
