"""Volume loaders on small synthetic NIfTI, NRRD and (mosaic) DICOM files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from mrprior.errors import DataError
from mrprior.io.volumes import load_volume, mosaic_count, read_nrrd, unpack_mosaic


def _vol(shape=(5, 6, 7)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.int16).reshape(shape)


def _write_nrrd(path: Path, a: np.ndarray, encoding: str = "raw", endian: str = "little") -> None:
    # NRRD lists the fastest axis first: sizes = a.shape for a Fortran-order payload
    payload = np.asfortranarray(a).astype(a.dtype.newbyteorder("<" if endian == "little" else ">"))
    raw = payload.tobytes(order="F")
    if encoding == "gzip":
        raw = gzip.compress(raw)
    header = (
        "NRRD0004\n# a comment\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {' '.join(map(str, a.shape))}\n"
        "space directions: (0.5,0,0) (0,-0.75,0) (0,0,6.5)\n"
        f"kinds: domain domain domain\nendian: {endian}\nencoding: {encoding}\n"
        "space origin: (0,0,0)\n\n"
    )
    path.write_bytes(header.encode() + raw)


@pytest.mark.parametrize("encoding,endian", [("raw", "little"), ("gzip", "little"), ("raw", "big")])
def test_nrrd(tmp_path, encoding, endian):
    a = _vol()
    p = tmp_path / "v.nrrd"
    _write_nrrd(p, a, encoding, endian)
    data, spacing = load_volume(p)
    assert data.dtype == np.float32 and data.shape == a.shape
    np.testing.assert_array_equal(data, a.astype(np.float32))
    assert spacing == pytest.approx((0.5, 0.75, 6.5))


def test_nrrd_errors(tmp_path):
    p = tmp_path / "t.nrrd"
    _write_nrrd(p, _vol())
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_nrrd(p)
    q = tmp_path / "x.nrrd"
    q.write_bytes(b"NOTNRRD\n")
    with pytest.raises(DataError, match="not a NRRD"):
        load_volume(q)


def test_nifti(tmp_path):
    import nibabel as nib

    a = _vol().astype(np.float32)
    p = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(a, np.diag([1.0, 2.0, 3.0, 1.0])), str(p))
    data, spacing = load_volume(p)
    np.testing.assert_array_equal(data, a)
    assert spacing == (1.0, 2.0, 3.0)


def _dicom(path: Path, pixels: np.ndarray, instance: int, mosaic: int = 0, z: float = 0.0):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.Modality = "MR"
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelSpacing = [1.5, 1.25]
    ds.SliceThickness = 3.0
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, z]
    ds.RescaleSlope, ds.RescaleIntercept = 2, 1
    if mosaic:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "MOSAIC"]
        ds.add_new((0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
        ds.add_new((0x0019, 0x100A), "US", mosaic)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def test_dicom_series_sorted_by_position(tmp_path):
    rng = np.random.default_rng(0)
    sl = rng.integers(0, 1000, (3, 8, 6))
    for i, z in enumerate([6.0, 0.0, 3.0]):  # files out of order
        _dicom(tmp_path / f"s{i}.dcm", sl[i], instance=i + 1, z=z)
    data, spacing = load_volume(tmp_path)
    np.testing.assert_array_equal(data, 2.0 * sl[[1, 2, 0]] + 1)
    assert spacing == (3.0, 1.5, 1.25)


def test_mosaic_unpack(tmp_path):
    rng = np.random.default_rng(1)
    slices = rng.integers(0, 1000, (5, 4, 6))  # 5 slices → 3×3 tiles, 4 empty
    mosaic = np.zeros((12, 18), np.int64)
    for k in range(5):
        r, c = divmod(k, 3)
        mosaic[4 * r : 4 * r + 4, 6 * c : 6 * c + 6] = slices[k]
    np.testing.assert_array_equal(unpack_mosaic(mosaic, 5), slices)
    _dicom(tmp_path / "m1.dcm", mosaic, instance=1, mosaic=5)
    _dicom(tmp_path / "m2.dcm", mosaic + 1, instance=2, mosaic=5)
    import pydicom

    assert mosaic_count(pydicom.dcmread(tmp_path / "m1.dcm")) == 5
    data, spacing = load_volume(tmp_path / "m1.dcm")
    np.testing.assert_array_equal(data, 2.0 * slices + 1)
    assert spacing == (3.0, 1.5, 1.25)
    both, _ = load_volume(sorted(tmp_path.glob("m*.dcm")))
    assert both.shape == (5, 4, 6, 2)
    np.testing.assert_array_equal(both[..., 1], 2.0 * (slices + 1) + 1)
    with pytest.raises(DataError, match="tiles"):
        unpack_mosaic(np.zeros((10, 18)), 5)


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_volume(tmp_path / "absent.nii")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="unknown image file type"):
        load_volume(tmp_path / "notes.txt")
