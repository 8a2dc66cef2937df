"""``mrprior recon`` on 3D raw files: ISMRMRD images per partition, NIfTI with the volume's
affine, a PNG montage; a volume with bad data is named while the good ones are written."""

from __future__ import annotations

import ismrmrd
import nibabel as nib
import numpy as np
import pytest

from mrprior.cli import main
from mrprior.io.images import read_images
from tests.io.raw3d import GEOMETRY_3D, copy_acq, write_acquisitions, write_raw_3d

SHAPE = (16, 24, 20)


@pytest.fixture(scope="module")
def raw3d(tmp_path_factory: pytest.TempPathFactory):
    return write_raw_3d(
        tmp_path_factory.mktemp("cli3d") / "vol.h5", shape=SHAPE, repetitions=2, calib=(12, 12)
    )


def _expected_affine(fov: tuple[float, float, float]) -> np.ndarray:
    nz, ny, nx = SHAPE
    read, phase, slc = (np.asarray(GEOMETRY_3D[k]) for k in ("read_dir", "phase_dir", "slice_dir"))
    dx, dy, dz = fov[0] / nx, fov[1] / ny, fov[2] / nz
    lps = np.eye(4)
    lps[:3, :3] = np.stack([read * dx, phase * dy, slc * dz], axis=1)
    lps[:3, 3] = (
        np.asarray(GEOMETRY_3D["position"])
        - read * dx * (nx // 2)
        - phase * dy * (ny // 2)
        - slc * dz * (nz // 2)
    )
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_recon_3d_writes_ismrmrd_nifti_and_montage(raw3d, tmp_path, capsys):
    out, nii, png = tmp_path / "vol_recon.h5", tmp_path / "vol.nii.gz", tmp_path / "png"
    args = ["recon", str(raw3d.path), "-o", str(out), "--nifti", str(nii), "--png", str(png)]
    rc = main([*args, "--method", "sense", "--set", "kernel_size=5", "--device", "cpu"])
    assert rc == 0
    assert "2 volume(s), 32 image(s), method sense" in capsys.readouterr().out
    images = read_images(out)
    nz = SHAPE[0]
    assert [(im.repetition, im.slice, im.image_index) for im in images] == [
        (r, k, r * nz + k + 1) for r in (0, 1) for k in range(nz)
    ]
    assert all(im.image_type == ismrmrd.IMTYPE_MAGNITUDE for im in images)
    vol = nib.load(nii)
    assert vol.shape == (SHAPE[2], SHAPE[1], nz, 2)  # x, y, partition, repetition
    np.testing.assert_allclose(vol.affine, _expected_affine(raw3d.fov), atol=1e-4)
    first = np.stack([np.asarray(im.data)[0, 0] for im in images[:nz]])  # [z, y, x]
    np.testing.assert_allclose(vol.get_fdata()[..., 0], first.transpose(2, 1, 0), rtol=1e-5)
    assert len(list(png.glob("*.png"))) == 2  # one montage per volume


def test_recon_3d_with_a_bad_volume_keeps_the_good_one(raw3d, tmp_path, capsys):
    acqs = [copy_acq(a) for a in raw3d.acqs]
    bad = next(a for a in acqs if a.idx.repetition == 1 and a.idx.kspace_encode_step_2 == 6)
    bad.idx.kspace_encode_step_2 = 40
    path = write_acquisitions(tmp_path / "bad.h5", raw3d.header_xml, acqs)
    out = tmp_path / "bad_recon.h5"
    rc = main(
        ["recon", str(path), "-o", str(out), "--method", "zerofill", "--set", "kernel_size=5"]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "repetition 1" in err and "kspace_encoding_step_2 = 40 outside" in err
    images = read_images(out)
    assert len(images) == SHAPE[0] and {im.repetition for im in images} == {0}
