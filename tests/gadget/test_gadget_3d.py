"""A 3D raw acquisition streamed through the gadget, launched exactly as Gadgetron launches it:
the volume comes back as one 2D image per partition with the right geometry and count."""

from __future__ import annotations

import ismrmrd
import numpy as np
import pytest

from tests.gadget.harness import launch_gadget, play
from tests.io.raw3d import GEOMETRY_3D, write_raw_3d

SHAPE = (16, 24, 20)


@pytest.fixture(scope="module")
def raw3d(tmp_path_factory: pytest.TempPathFactory):
    # LAST_IN_SLICE on every partition, as some 3D sequences send it
    return write_raw_3d(
        tmp_path_factory.mktemp("g3d") / "vol.h5",
        shape=SHAPE,
        repetitions=2,
        calib=(12, 12),
        last_in_slice="partition",
    )


def test_3d_volume_through_the_launched_gadget(raw3d) -> None:
    with launch_gadget() as role:
        reply = play(role, raw3d.header_xml, raw3d.acqs, {"method": "sense", "kernel_size": "5"})
    assert launch_gadget.last_returncode == 0, launch_gadget.last_output
    assert reply.problem is None, reply.problem
    assert reply.closed and not reply.errors, reply.errors
    nz, ny, nx = SHAPE
    assert len(reply.images) == 2 * nz
    assert [im.image_index for im in reply.images] == list(range(1, 2 * nz + 1))
    assert [(im.repetition, im.slice) for im in reply.images] == [
        (r, k) for r in (0, 1) for k in range(nz)
    ]
    dz = raw3d.fov[2] / nz
    centre = np.asarray(GEOMETRY_3D["position"])
    slice_dir = np.asarray(GEOMETRY_3D["slice_dir"])
    for im in reply.images:
        assert im.data_type == ismrmrd.DATATYPE_FLOAT
        assert tuple(im.matrix_size) == (nx, ny, 1)
        np.testing.assert_allclose(im.field_of_view, (raw3d.fov[0], raw3d.fov[1], dz))
        np.testing.assert_allclose(
            im.position, centre + (im.slice - nz // 2) * dz * slice_dir, atol=1e-4
        )
        for name in ("read_dir", "phase_dir", "slice_dir"):
            np.testing.assert_allclose(getattr(im, name), GEOMETRY_3D[name], atol=1e-6)
    # the returned slices are the phantom volume (SENSE at R = 2 x 2, 4 coils)
    vol = np.stack([np.asarray(im.data)[0, 0] for im in reply.images[:nz]])
    truth = np.abs(raw3d.volume)
    scale = (vol * truth).sum() / (vol * vol).sum()
    assert np.linalg.norm(scale * vol - truth) / np.linalg.norm(truth) < 0.25
