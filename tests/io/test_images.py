"""ISMRMRD image output: geometry copied from the acquisitions, round trip through HDF5, export."""

from __future__ import annotations

import ismrmrd
import numpy as np
import pytest

from mrprior.errors import DataError
from mrprior.io.containers import ImageSeries
from mrprior.io.export import export_nifti, export_png, image_affine
from mrprior.io.images import read_images, series_group, write_images
from mrprior.io.raw import read_raw
from mrprior.mr.fft import ifftc
from mrprior.pipeline import OutputConfig, ReconConfig, fit_matrix, images_from_series
from tests.fixtures import GEOMETRY, rewrite_raw, set_geometry, shepp_logan  # noqa: F401

pytestmark = pytest.mark.ismrmrd_tools


@pytest.fixture(scope="module")
def series_list(shepp_logan, tmp_path_factory):  # noqa: F811
    src = shepp_logan(matrix=64, coils=4, acceleration=1, calibration_width=0, repetitions=2)
    raw = rewrite_raw(src, tmp_path_factory.mktemp("geo") / "geo.h5", edit_rows=set_geometry)
    _, groups = read_raw(raw)
    out = []
    for g in groups:
        # root-sum-of-squares of the fully sampled data, cropped to the recon FOV
        import torch

        coil_img = ifftc(torch.from_numpy(g.data))
        rss = torch.sqrt((coil_img.abs() ** 2).sum(0)).to(torch.complex64)
        img = fit_matrix(rss, 64, 64).numpy() * np.exp(0.3j)
        out.append(
            ImageSeries(
                image=img.astype(np.complex64),
                encoding=g.encoding,
                reference=g.reference,
                indices=g.indices,
                extras={"uncertainty": (0.1 * np.abs(img)).astype(np.float32)},
                method="test",
            )
        )
    return out


def _cfg(**output):
    return ReconConfig(output=OutputConfig(**output))


def test_image_headers(series_list):
    cfg = _cfg(extra_series=["phase", "uncertainty"])
    images = [im for s in series_list for im in images_from_series(s, cfg)]
    assert len(images) == 3 * len(series_list) == 6
    for im in images:
        for name, value in GEOMETRY.items():
            np.testing.assert_allclose(getattr(im, name), value, rtol=0, atol=1e-6)
        np.testing.assert_allclose(im.field_of_view, (300.0, 300.0, 6.0))
        assert im.matrix_size == (64, 64, 1)
        assert im.data.shape == (1, 1, 64, 64)
        meta = im.meta
        assert {"DataRole", "WindowCenter", "WindowWidth", "ImageProcessingHistory"} <= set(meta)
        assert float(meta["WindowWidth"]) > 0
    by_series = {}
    for im in images:
        by_series.setdefault(im.image_series_index, []).append(im)
    assert sorted(by_series) == [1, 2, 3]
    assert [im.image_type for im in by_series[1]] == [ismrmrd.IMTYPE_MAGNITUDE] * 2
    assert [im.image_type for im in by_series[2]] == [ismrmrd.IMTYPE_PHASE] * 2
    assert [im.meta["DataRole"] for im in by_series[3]] == ["Uncertainty"] * 2
    for series in by_series.values():
        assert [im.repetition for im in series] == [0, 1]
        assert [im.image_index for im in series] == [1, 2]
    mag, phase = by_series[1][0], by_series[2][0]
    assert mag.data.dtype == np.float32
    np.testing.assert_allclose(mag.data[0, 0], np.abs(series_list[0].image), rtol=1e-6)
    inside = np.abs(series_list[0].image) > 0.1 * np.abs(series_list[0].image).max()
    np.testing.assert_allclose(phase.data[0, 0][inside], 0.3, atol=1e-5)


def test_uint16_images(series_list):
    cfg = _cfg(dtype="uint16", extra_series=["phase"])
    mag, phase = images_from_series(series_list[0], cfg, series_index_start=10, image_index=7)
    assert mag.data.dtype == np.uint16 and phase.data.dtype == np.uint16
    assert mag.image_series_index == 10 and phase.image_series_index == 11
    assert mag.image_index == phase.image_index == 7
    assert mag.data.max() == 4095
    ref = np.abs(series_list[0].image)
    np.testing.assert_allclose(mag.data[0, 0] / 4095.0, ref / ref.max(), atol=1 / 4095)


def test_write_read_round_trip(series_list, tmp_path):
    cfg = _cfg(extra_series=["phase"])
    images = [im for s in series_list for im in images_from_series(s, cfg)]
    path = write_images(images, tmp_path / "out.h5")
    import h5py

    with h5py.File(path, "r") as f:
        assert sorted(f["dataset"]) == [series_group(1), series_group(2)]
    back = read_images(path)
    assert len(back) == len(images)
    key = lambda im: (im.image_series_index, im.image_index)  # noqa: E731
    for a, b in zip(sorted(images, key=key), back, strict=True):
        assert a.getHead() == b.getHead()
        np.testing.assert_array_equal(a.data, b.data)
        assert b.meta["DataRole"] == a.meta["DataRole"]
        assert b.meta["ImageProcessingHistory"] == a.meta["ImageProcessingHistory"]
        for name, value in GEOMETRY.items():
            np.testing.assert_allclose(getattr(b, name), value, atol=1e-6)
        np.testing.assert_allclose(b.field_of_view, (300.0, 300.0, 6.0))


def test_read_images_errors(tmp_path):
    p = tmp_path / "x.h5"
    p.write_text("nope")
    with pytest.raises(DataError, match="not an HDF5 file"):
        read_images(p)


def test_png_export(series_list, tmp_path):
    from PIL import Image

    images = images_from_series(series_list[0], _cfg(extra_series=["phase"]))
    paths = export_png(images, tmp_path / "png", prefix="sl")
    assert [p.name for p in paths] == [
        "sl_s001_i0001_r000_sl000.png",
        "sl_s002_i0001_r000_sl000.png",
    ]
    pix = np.asarray(Image.open(paths[0]))
    assert pix.shape == (64, 64) and pix.dtype == np.uint8
    assert pix.max() == 255 and pix.min() == 0
    arr_paths = export_png([np.ones((8, 9)), np.eye(8)], tmp_path / "arr")
    assert len(arr_paths) == 2


def test_nifti_export_affine(series_list, tmp_path):
    import nibabel as nib

    images = [im for s in series_list for im in images_from_series(s, _cfg())]
    path = export_nifti(images, tmp_path / "vol.nii.gz")
    vol = nib.load(path)
    # 2 repetitions of one slice -> [x, y, 1, 2]
    assert vol.shape == (64, 64, 1, 2)
    data = np.asarray(vol.dataobj)
    np.testing.assert_allclose(data[:, :, 0, 1], images[1].data[0, 0].T, rtol=1e-6)
    aff = vol.affine
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    centre = aff @ np.array([32, 32, 0, 1.0])
    np.testing.assert_allclose(centre[:3], lps_to_ras * GEOMETRY["position"], atol=1e-4)
    dx = 300.0 / 64
    np.testing.assert_allclose(
        aff[:3, 0], lps_to_ras * np.array(GEOMETRY["read_dir"]) * dx, atol=1e-5
    )
    np.testing.assert_allclose(
        aff[:3, 1], lps_to_ras * np.array(GEOMETRY["phase_dir"]) * dx, atol=1e-5
    )
    np.testing.assert_allclose(image_affine(images[0]), aff, atol=1e-5)
