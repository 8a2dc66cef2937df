"""Simulated raw files: 2D slices and 3D volumes written as a scanner streams them."""

import ismrmrd
import numpy as np
import pytest

from mrprior.errors import DataError
from mrprior.io.synthetic_raw import Geometry, RawSlice, write_cartesian_raw
from mrprior.mr.oversampling import remove_readout_oversampling
from mrprior.mr.sampling import poisson_disc
from mrprior.mr.simulate import coil_noise_covariance, simulate_kspace

OBLIQUE = Geometry(
    position=(4.0, -12.5, 21.0),
    read_dir=(0.0, 0.8, 0.6),
    phase_dir=(1.0, 0.0, 0.0),
    slice_dir=(0.0, 0.6, -0.8),
    patient_table_position=(0.0, 0.0, -1000.0),
)


def _read(path):
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    try:
        hdr = ismrmrd.xsd.CreateFromDocument(ds.read_xml_header())
        acqs = [ds.read_acquisition(i) for i in range(ds.number_of_acquisitions())]
    finally:
        ds.close()
    return hdr, acqs


def test_3d_volume_raw_file(tmp_path):
    """A 3D volume (20 partitions × 24 lines × 16 readout, 4 coils, correlated noise, 2×
    oversampled readout) with a ky–kz Poisson-disc mask: header (encoded/recon matrix incl. z,
    FOV incl. slab thickness, kz limits and centre), one acquisition per acquired (kz, ky)
    line, partitions in the outer loop, flags, oblique geometry in every header, noise scan;
    the k-space read back equals what was simulated."""
    vol = np.ones((20, 24, 16), np.float32)
    sim = simulate_kspace(
        vol,
        coils=4,
        noise_std=0.01,
        noise_cov=coil_noise_covariance(4, seed=1),
        noise_samples=64 * 32,
        readout_oversampling=2,
        seed=0,
    )
    m = poisson_disc((20, 24), 3.0, calib=(8, 8), seed=2)
    path = write_cartesian_raw(
        tmp_path / "vol.h5",
        [RawSlice(sim.kspace, m.mask, m.calib)],
        noise_scan=sim.noise_scan,
        fov_mm=(160.0, 240.0, 100.0),
        readout_oversampling=2,
        geometry=OBLIQUE,
        kspace_oversampled=True,
    )
    hdr, acqs = _read(path)
    enc = hdr.encoding[0]
    assert (enc.encodedSpace.matrixSize.x, enc.encodedSpace.matrixSize.y) == (32, 24)
    assert enc.encodedSpace.matrixSize.z == 20 and enc.reconSpace.matrixSize.z == 20
    assert enc.reconSpace.matrixSize.x == 16
    assert enc.encodedSpace.fieldOfView_mm.x == 320.0 and enc.reconSpace.fieldOfView_mm.z == 100.0
    lim = enc.encodingLimits.kspace_encoding_step_2
    assert (lim.minimum, lim.maximum, lim.center) == (0, 19, 10)
    assert enc.encodingLimits.kspace_encoding_step_1.center == 12
    noise = [a for a in acqs if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    data = [a for a in acqs if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    assert len(noise) == 64 and len(data) == int(m.mask.sum())
    kz = [a.idx.kspace_encode_step_2 for a in data]
    assert kz == sorted(kz) and set(kz) == set(np.flatnonzero(m.mask.any(axis=1)))
    assert data[0].is_flag_set(ismrmrd.ACQ_FIRST_IN_SLICE)
    assert [a.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE) for a in data].count(True) == 1
    assert data[-1].is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE)
    assert data[-1].is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    calib = [a for a in data if a.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)]
    assert len(calib) == int(m.calib.sum())
    for a in (data[0], data[len(data) // 2], data[-1]):
        np.testing.assert_allclose(a.position, OBLIQUE.position)
        np.testing.assert_allclose(a.read_dir, OBLIQUE.read_dir)
        np.testing.assert_allclose(a.slice_dir, OBLIQUE.slice_dir)
        np.testing.assert_allclose(a.patient_table_position, OBLIQUE.patient_table_position)
        assert a.center_sample == 16 and a.data.shape == (4, 32)
    k = np.zeros_like(sim.kspace)
    for a in data:
        k[:, a.idx.kspace_encode_step_2, a.idx.kspace_encode_step_1] = a.data
    np.testing.assert_array_equal(k[:, m.mask], sim.kspace[:, m.mask])
    assert np.all(k[:, ~m.mask] == 0)
    # recon-size k-space (oversampled by the writer) reads back as the same signal / √2
    small = remove_readout_oversampling(sim.kspace, 16)
    path2 = write_cartesian_raw(
        tmp_path / "vol2.h5", [RawSlice(small, m.mask, m.calib)], readout_oversampling=2
    )
    _, acqs2 = _read(path2)
    back = remove_readout_oversampling(np.stack([a.data for a in acqs2], axis=1), 16)
    np.testing.assert_allclose(back * np.sqrt(2), small[:, m.mask], atol=1e-4)


def test_2d_slices_and_errors(tmp_path):
    """2D multi-slice: positions step along the slice direction; bad input is refused."""
    k = simulate_kspace(np.ones((16, 12), np.float32), coils=2, seed=0).kspace
    lines = np.zeros(16, bool)
    lines[::2] = True
    cal = np.zeros(16, bool)
    cal[6:10] = True
    path = write_cartesian_raw(
        tmp_path / "sl.h5",
        [RawSlice(k, lines, cal, slice=s) for s in range(2)],
        fov_mm=(120.0, 160.0, 4.0),
        geometry=OBLIQUE,
    )
    hdr, acqs = _read(path)
    assert hdr.encoding[0].encodedSpace.matrixSize.z == 1
    last = next(a for a in acqs if a.idx.slice == 1)
    np.testing.assert_allclose(
        last.position, np.add(OBLIQUE.position, 4.0 * np.asarray(OBLIQUE.slice_dir)), atol=1e-5
    )
    assert all(a.idx.kspace_encode_step_2 == 0 for a in acqs)
    with pytest.raises(DataError, match="lines and calib_lines"):
        write_cartesian_raw(tmp_path / "x.h5", [RawSlice(k[:, None], lines, cal)])
    with pytest.raises(DataError, match="orthonormal"):
        Geometry(read_dir=(1.0, 0.0, 0.0), phase_dir=(1.0, 0.0, 0.0))
