"""Raw ISMRMRD reading: grouping, masks, calibration, noise, and clear errors for bad input."""

from __future__ import annotations

import ismrmrd
import numpy as np
import pytest

from mrprior.errors import DataError, HeaderError
from mrprior.io.containers import EncodingInfo, Indices
from mrprior.io.raw import (
    AcquisitionBuffer,
    iter_acquisitions,
    iter_kspace,
    parse_header,
    read_header,
    read_raw,
)
from tests.fixtures import rewrite_raw, shepp_logan  # noqa: F401

pytestmark = pytest.mark.ismrmrd_tools

# -m 64 -c 4 -a 2 -w 16 -r 2 -C -O 2: 4 repetitions (r * a), 16 calibration lines
OPTS = dict(matrix=64, coils=4, acceleration=2, calibration_width=16, repetitions=2)


@pytest.fixture(scope="module")
def raw(shepp_logan):  # noqa: F811
    return shepp_logan(**OPTS)


def test_header_and_encoding(raw):
    header = read_header(raw)
    enc = EncodingInfo.from_header(header)
    assert enc.encoded_matrix == (128, 64, 1)
    assert enc.recon_matrix == (64, 64, 1)
    assert enc.encoded_fov == (600.0, 300.0, 6.0)
    assert enc.recon_fov == (300.0, 300.0, 6.0)
    assert enc.readout_oversampling == 2.0
    assert enc.ky_center() == 32
    assert enc.trajectory == "cartesian"
    assert enc.acceleration == (2, 1)
    assert enc.limits["repetition"].maximum == 3


def test_groups_masks_calibration_noise(raw):
    _, groups = read_raw(raw)
    assert [g.indices for g in groups] == [Indices(repetition=r) for r in range(4)]
    for r, g in enumerate(groups):
        assert g.data.shape == (4, 64, 128) and g.data.dtype == np.complex64
        assert g.mask.shape == g.calib.shape == (64, 128)
        assert g.acceleration == pytest.approx(2.0)
        rows = np.flatnonzero(g.mask.any(axis=1))
        np.testing.assert_array_equal(rows, np.arange(r % 2, 64, 2))  # pattern shifts per rep
        assert g.mask[rows].all()  # full readouts
        calib_rows = np.flatnonzero(g.calib.any(axis=1))
        np.testing.assert_array_equal(calib_rows, np.arange(24, 40))
        # calibration-only lines are in the calibration region, not in the imaging mask
        calib_only = np.flatnonzero(g.calib.any(axis=1) & ~g.mask.any(axis=1))
        assert len(calib_only) == 8
        assert np.all(np.abs(g.data[:, calib_only]) > 0)  # their data are kept
        unacquired = ~(g.mask | g.calib)
        assert np.all(g.data[:, unacquired] == 0)
        assert g.noise is not None and g.noise.shape == (4, 128)
        assert g.noise_dwell_us == g.dwell_us == 5.0
        assert not g.prewhitened and not g.oversampling_removed


def test_data_placed_at_its_line(raw):
    _, groups = read_raw(raw)
    acqs = list(iter_acquisitions(raw))
    acq = next(a for a in acqs if a.idx.repetition == 1 and a.idx.kspace_encode_step_1 == 33)
    # centre_ky = 32 -> row ky; centre_sample 64 of 128 -> column offset 0
    np.testing.assert_array_equal(groups[1].data[:, 33, :], acq.data)
    assert groups[1].reference.idx.repetition == 1


def test_stream_buffer_matches_file(raw):
    _, groups = read_raw(raw)
    buf = AcquisitionBuffer(read_header(raw))
    emitted = []
    for acq in iter_acquisitions(raw):
        out = buf.add(acq)
        assert len(out) <= 1
        if out:
            assert acq.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE)
        emitted += out
    assert buf.flush() == []
    assert len(emitted) == len(groups)
    for a, b in zip(emitted, groups, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.mask, b.mask)


def test_flush_emits_groups_without_last_in_slice(raw):
    buf = AcquisitionBuffer(read_header(raw))
    for acq in iter_acquisitions(raw):
        acq.clear_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        assert buf.add(acq) == []
    assert buf.pending == 4
    flushed = buf.flush()
    assert [g.indices.repetition for g in flushed] == [0, 1, 2, 3]
    assert buf.pending == 0


def test_noise_kept_for_later_groups(raw):
    buf = AcquisitionBuffer(read_header(raw))
    acqs = list(iter_acquisitions(raw))
    assert acqs[0].is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
    second_noise = acqs[0]
    out = []
    for acq in [*acqs[:50], second_noise, *acqs[50:]]:
        out += buf.add(acq)
    assert out[0].noise.shape == (4, 128)
    assert out[-1].noise.shape == (4, 256)


def test_parse_header_strips_nul(raw):
    xml = read_header(raw).toXML("utf-8")
    xml = xml.encode() if isinstance(xml, str) else xml
    assert parse_header(xml + b"\0").encoding
    assert parse_header(xml.decode() + "\0\0").encoding
    with pytest.raises(HeaderError, match="not a valid ISMRMRD header"):
        parse_header(b"<notismrmrd/>\0")
    with pytest.raises(HeaderError, match="empty"):
        parse_header(b"\0")


# -- bad input ------------------------------------------------------------------------------
def test_not_hdf5(tmp_path):
    p = tmp_path / "notes.h5"
    p.write_text("this is not HDF5\n" * 10)
    with pytest.raises(DataError, match="not an HDF5 file"):
        read_raw(p)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_raw(tmp_path / "absent.h5")


def test_truncated_hdf5(raw, tmp_path):
    p = tmp_path / "truncated.h5"
    blob = raw.read_bytes()
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated"):
        read_raw(p)


def test_hdf5_without_acquisitions(raw, tmp_path):
    p = rewrite_raw(raw, tmp_path / "empty.h5", edit_rows=lambda rows: rows[:0])
    with pytest.raises(DataError, match="no acquisitions"):
        read_raw(p)


def test_hdf5_without_data_group(tmp_path):
    import h5py

    p = tmp_path / "nodata.h5"
    with h5py.File(p, "w") as f:
        f.create_group("dataset").create_dataset("xml", data=[b"<x/>"])
    with pytest.raises(DataError, match="no acquisitions"):
        read_raw(p)
    with h5py.File(p, "w") as f:
        f.create_group("other")
    with pytest.raises(DataError, match="not ISMRMRD raw data"):
        read_raw(p)


def test_only_noise(raw, tmp_path):
    p = rewrite_raw(raw, tmp_path / "noise.h5", edit_rows=lambda rows: rows[:1])
    with pytest.raises(DataError, match="no imaging acquisitions"):
        read_raw(p)


def test_non_cartesian(raw, tmp_path):
    p = rewrite_raw(
        raw,
        tmp_path / "radial.h5",
        edit_xml=lambda x: x.replace("<trajectory>cartesian<", "<trajectory>radial<"),
    )
    with pytest.raises(DataError, match="trajectory 'radial' is not supported"):
        read_raw(p)


def test_nan_in_kspace(raw, tmp_path):
    def poison(rows):
        rows[10]["data"][5] = np.nan
        return rows

    p = rewrite_raw(raw, tmp_path / "nan.h5", edit_rows=poison)
    with pytest.raises(DataError, match=r"nan.h5: slice 0: acquisition 10 .* NaN/Inf"):
        read_raw(p)
    # the other groups are read before the error is raised
    good = []
    with pytest.raises(DataError, match="NaN/Inf"):
        good.extend(iter_kspace(p))
    assert [g.indices.repetition for g in good] == [1, 2, 3]


def test_missing_encoding(raw, tmp_path):
    def drop_encoding(xml: str) -> str:
        start, end = xml.index("<encoding>"), xml.index("</encoding>") + len("</encoding>")
        return xml[:start] + xml[end:]

    p = rewrite_raw(raw, tmp_path / "noenc.h5", edit_xml=drop_encoding)
    with pytest.raises(HeaderError, match="encoding"):
        read_raw(p)


def test_missing_recon_space(raw, tmp_path):
    def drop(xml: str) -> str:
        start, end = xml.index("<reconSpace>"), xml.index("</reconSpace>") + len("</reconSpace>")
        return xml[:start] + xml[end:]

    p = rewrite_raw(raw, tmp_path / "norecon.h5", edit_xml=drop)
    with pytest.raises(HeaderError, match="reconSpace"):
        read_raw(p)


def _fails_its_group_only(raw, index: int, bad: ismrmrd.Acquisition, match: str) -> None:
    """Replace acquisition ``index`` by ``bad``: its group fails with ``match``, every other
    group is still emitted, and ``raise_errors`` reports the failure at the end."""
    buf = AcquisitionBuffer(read_header(raw))
    acqs = list(iter_acquisitions(raw))
    acqs[index] = bad
    emitted = []
    for acq in acqs:
        emitted += buf.add(acq)
    emitted += buf.flush()
    failed = Indices.from_acquisition(bad)
    assert [g.indices.repetition for g in emitted] == [
        r for r in range(4) if r != failed.repetition
    ]
    assert len(buf.errors) == 1
    assert str(buf.errors[0]).startswith(failed.label() + ":")
    with pytest.raises(DataError, match=match):
        buf.raise_errors()


def test_inconsistent_coils(raw):
    acq = list(iter_acquisitions(raw))[2]
    bad = ismrmrd.Acquisition(acq.getHead())
    bad.resize(number_of_samples=128, active_channels=3)
    _fails_its_group_only(raw, 2, bad, r"inconsistent coil count.*3 channels.*4")


def test_line_outside_limits(raw):
    acq = list(iter_acquisitions(raw))[40]
    acq.idx.kspace_encode_step_1 = 70
    _fails_its_group_only(
        raw, 40, acq, "line kspace_encoding_step_1 = 70 outside the encoding limits"
    )


def test_partition_in_a_2d_encoding(raw):
    acq = list(iter_acquisitions(raw))[3]
    acq.idx.kspace_encode_step_2 = 2
    _fails_its_group_only(
        raw, 3, acq, r"partition kspace_encode_step_2 = 2 does not fit the encoded matrix \(z = 1"
    )


def test_readout_longer_than_header(raw):
    acq = list(iter_acquisitions(raw))[3]
    long = ismrmrd.Acquisition(acq.getHead())
    long.resize(number_of_samples=256, active_channels=4)
    long.center_sample = 128
    _fails_its_group_only(raw, 3, long, r"256 readout samples .* encoded matrix x = 128")


def test_skipped_scans_ignored(raw):
    buf = AcquisitionBuffer(read_header(raw))
    acq = list(iter_acquisitions(raw))[3]
    acq.set_flag(ismrmrd.ACQ_IS_NAVIGATION_DATA)
    acq.data[:] = np.nan  # would be an error for imaging data
    assert buf.add(acq) == []
    assert buf.pending == 0
