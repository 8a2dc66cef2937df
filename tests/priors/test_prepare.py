"""``mrprior prepare``: DICOM / NIfTI / PNG / HDF5 inputs, background dropping, subject split."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

from mrprior.cli import main
from mrprior.errors import ConfigError, DataError
from mrprior.priors.prepare import PrepareConfig, SourceSpec, prepare_dataset, resize_to_square

from .conftest import phantom_volume, write_nifti


def write_dicom_series(folder: Path, vol: np.ndarray, patient: str, series_uid: str) -> None:
    """A minimal MR series, one file per slice (pydicom can write this without a template)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    data = np.round(vol / vol.max() * 1000).astype(np.uint16)
    order = np.random.default_rng(0).permutation(data.shape[0])  # files out of order on disk
    for k in order:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"im{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientID = patient
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = series_uid + ".1"
        ds.Modality = "MR"
        ds.ContentDate = datetime.date.today().strftime("%Y%m%d")
        ds.InstanceNumber = int(k) + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(k) * 2.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 2.0
        ds.Rows, ds.Columns = data.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = data[k].tobytes()
        ds.save_as(str(folder / f"im{k:03d}.dcm"), enforce_file_format=True)


def _read(ds_dir: Path) -> tuple[dict, dict]:
    with h5py.File(ds_dir / "slices.h5") as f:
        arrays = {k: f[k][:] for k in ("images", "volume", "axis", "slice", "split")}
        arrays["volumes"] = json.loads(f.attrs["volumes"])
        arrays["subjects"] = json.loads(f.attrs["subjects"])
    manifest = yaml.safe_load((ds_dir / "manifest.yaml").read_text())
    return arrays, manifest


def test_mixed_formats_split_by_subject(tmp_path: Path) -> None:
    # NIfTI: 10×36×32 volume, subject A (two files of the same subject)
    write_nifti(tmp_path / "a1.nii.gz", phantom_volume(0))
    write_nifti(tmp_path / "a2.nii.gz", phantom_volume(1))
    # DICOM: an 8-slice series of subject B, in a folder with a non-image file
    write_dicom_series(tmp_path / "dcm", phantom_volume(2, (8, 24, 20)), "patB", "1.2.3.4")
    (tmp_path / "dcm" / "notes.txt").write_text("not an image")
    # PNG: one 2D image, subject C
    img = (phantom_volume(3, (3, 40, 30))[1] * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "c.png")
    # an unreadable file that claims to be NIfTI
    (tmp_path / "broken.nii.gz").write_bytes(b"this is not gzip")
    specs = [
        SourceSpec(str(tmp_path / "a1.nii.gz"), subject="A", licence="CC0"),
        SourceSpec(str(tmp_path / "a2.nii.gz"), subject="A", licence="CC0"),
        SourceSpec(str(tmp_path / "dcm")),
        SourceSpec(str(tmp_path / "c.png"), subject="C"),
        SourceSpec(str(tmp_path / "broken.nii.gz")),
    ]
    cfg = PrepareConfig(sources=specs, size=24, axis="all", val_subjects=["patB"])
    with pytest.warns(UserWarning, match="2 input"):
        prepare_dataset(cfg, tmp_path / "ds", progress=False)
    arr, man = _read(tmp_path / "ds")
    assert arr["images"].shape[1:] == (24, 24) and arr["images"].dtype == np.uint16
    # every kept slice is normalized to max 1 (65535)
    assert (arr["images"].reshape(len(arr["images"]), -1).max(axis=1) == 65535).all()
    names = arr["volumes"]
    assert names[:2] == ["a1.nii.gz", "a2.nii.gz"] and names[2].startswith("dicom:")
    per_vol = {v["name"]: v for v in man["volumes"]}
    for v in per_vol.values():  # every slice either kept or dropped, along all three axes
        total = sum(v["shape"]) if len(v["shape"]) == 3 and v["shape"][0] > 1 else v["shape"][0]
        assert v["slices_kept"] + v["slices_dropped"] == total
    # the phantom fills ≥ 5 % of the central slices; the outermost slices are background
    a1 = per_vol["a1.nii.gz"]
    assert 0 < a1["slices_dropped"] < 36 and a1["slices_kept"] > 30
    # DICOM: 8 slices along axis 0 (+ 24 + 20 along the other axes), sorted by position
    assert per_vol[names[2]]["shape"] == [8, 24, 20] and per_vol[names[2]]["subject"] == "patB"
    assert per_vol["c.png"]["slices_kept"] == 1
    # subject split: B is validation, A and C are training; no volume on both sides
    subj = np.asarray(arr["subjects"])[arr["volume"]]
    assert set(subj[arr["split"] == 1]) == {"patB"}
    assert set(subj[arr["split"] == 0]) == {"A", "C"}
    assert man["counts"]["val"] == int((arr["split"] == 1).sum())
    skipped = {Path(s["path"]).name: s["reason"] for s in man["skipped"]}
    assert set(skipped) == {"broken.nii.gz", "notes.txt"}
    assert "unreadable nifti" in skipped["broken.nii.gz"]
    assert man["sources"][0]["licence"] == "CC0"


def test_dicom_slice_order_follows_position(tmp_path: Path) -> None:
    # slice k (by ImagePositionPatient) holds a square at columns 2k … 2k+5; files are written in
    # random order, so the stacked volume is right only if the series is sorted by position
    vol = np.zeros((6, 20, 20), np.float32)
    for k in range(6):
        vol[k, 7:13, 2 * k : 2 * k + 6] = 1.0
    write_dicom_series(tmp_path / "d", vol, "p", "9.9.9")
    cfg = PrepareConfig(sources=[SourceSpec(str(tmp_path / "d"))], size=20, axis="0")
    prepare_dataset(cfg, tmp_path / "ds", progress=False)
    with h5py.File(tmp_path / "ds" / "slices.h5") as f:
        imgs = f["images"][:].astype(float)
        order = f["slice"][:]
    assert list(order) == list(range(6))
    first_col = [int(np.nonzero(im.max(axis=0) > 30000)[0][0]) for im in imgs]
    assert first_col == [2 * k for k in range(6)]


def test_fastmri_hdf5_and_random_split(tmp_path: Path) -> None:
    for i in range(4):
        with h5py.File(tmp_path / f"file{i}.h5", "w") as f:
            f["reconstruction_rss"] = phantom_volume(i, (5, 32, 32))
            f["kspace"] = np.zeros((5, 4, 4), np.complex64)
    cfg = PrepareConfig(
        sources=[SourceSpec(str(tmp_path))], size=16, axis="all", val_fraction=0.25, seed=3
    )
    man = prepare_dataset(cfg, tmp_path / "ds", progress=False)
    # 2D slice stacks: only axis 0 is sliced; all 5 slices of each file have foreground
    assert man["counts"]["total"] == 20
    assert len(man["val_subjects"]) == 1 and man["counts"]["val"] == 5


def test_resize_keeps_aspect() -> None:
    img = np.ones((10, 40), np.float32)
    out = resize_to_square(img, (1.0, 1.0), 32)
    rows = np.nonzero(out.max(axis=1) > 0.5)[0]
    assert out.shape == (32, 32) and len(rows) == 8  # 40 → 32 wide, 10 → 8 high, centred
    aniso = resize_to_square(np.ones((10, 10), np.float32), (4.0, 1.0), 32)
    cols = np.nonzero(aniso.max(axis=0) > 0.5)[0]
    assert len(np.nonzero(aniso.max(axis=1) > 0.5)[0]) == 32 and len(cols) == 8


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no readable.*missing\.nii"):
        prepare_dataset(
            PrepareConfig(sources=[SourceSpec(str(tmp_path / "missing.nii"))]), tmp_path / "o"
        )
    write_nifti(tmp_path / "a.nii.gz", phantom_volume(0))
    with pytest.raises(ConfigError, match="val_subjects"):
        prepare_dataset(
            PrepareConfig(sources=[SourceSpec(str(tmp_path / "a.nii.gz"))], val_subjects=["zz"]),
            tmp_path / "o",
        )


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(2):
        write_nifti(tmp_path / f"v{i}.nii.gz", phantom_volume(i))
    rc = main(
        [
            "prepare",
            str(tmp_path / "v0.nii.gz"),
            str(tmp_path / "v1.nii.gz"),
            "-o",
            str(tmp_path / "ds"),
            "--size",
            "16",
            "--axis",
            "0",
            "--val-fraction",
            "0.5",
            "--licence",
            "test-licence",
            "--no-progress",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "20 slices" in out or "slices (" in out
    man = yaml.safe_load((tmp_path / "ds" / "manifest.yaml").read_text())
    assert man["axis"] == "0" and man["sources"][0]["licence"] == "test-licence"
    assert man["counts"]["train"] > 0 and man["counts"]["val"] > 0
