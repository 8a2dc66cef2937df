"""Siemens twix (.dat) input: real scanner files (twixtools 0.24's gre.dat / epi.dat) through
``mrprior convert`` and ``mrprior recon``, synthetic measurements for what those files lack
(noise scans, PAT reference lines, several slices, 3D partitions), and clear errors."""

from __future__ import annotations

from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from mrprior.cli import main
from mrprior.errors import DataError
from mrprior.io.containers import EncodingInfo, Indices
from mrprior.io.images import read_images
from mrprior.io.raw import AcquisitionBuffer, iter_acquisitions, read_header, read_raw
from mrprior.io.twix import (
    TwixMeasurement,
    build_header,
    classify,
    iter_measurement_acquisitions,
    read_measurement,
)
from tests.io.twix_data import twix_example

twixtools = pytest.importorskip("twixtools")


@pytest.fixture(scope="module")
def gre() -> Path:
    return twix_example("gre.dat")


@pytest.fixture(scope="module")
def epi() -> Path:
    return twix_example("epi.dat")


@pytest.fixture(scope="module")
def gre_twix(gre):
    """twixtools' own view of gre.dat: (protocol, image MDBs)."""
    scan = twixtools.read_twix(str(gre), verbose=False, parse_pmu=False, parse_geometry=False)[-1]
    return scan["hdr"], [m for m in scan["mdb"] if m.is_image_scan()]


@pytest.fixture(scope="module")
def gre_converted(gre, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("twix") / "gre_raw.h5"
    assert main(["convert", str(gre), "-o", str(out), "-q"]) == 0
    return out


def _fft_rss(kspace: np.ndarray) -> np.ndarray:
    """Root-sum-of-squares of the centered inverse FFT of ``[C, ky, kx]`` k-space."""
    img = np.fft.fftshift(
        np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    return np.sqrt((np.abs(img) ** 2).sum(axis=0))


@pytest.fixture(scope="module")
def gre_plain_fft(gre) -> np.ndarray:
    """A plain FFT reconstruction of gre.dat done with twixtools alone (its oversampling
    removal), the reference for our images."""
    arr = twixtools.map_twix(str(gre), verbose=False)[-1]["image"]
    arr.flags["remove_os"] = True
    arr.flags["squeeze_singletons"] = True
    assert arr.dims == ["Lin", "Cha", "Col"]
    return _fft_rss(np.moveaxis(arr[:], 1, 0))


# --------------------------------------------------------------------------------------------
# real scanner data: gre.dat
# --------------------------------------------------------------------------------------------
def test_gre_header_matches_protocol(gre, gre_twix):
    hdr, mdbs = gre_twix
    yaps, meas = hdr["MeasYaps"], hdr["Meas"]
    slc = yaps["sSliceArray"]["asSlice"][0]
    header = read_header(gre)
    enc = EncodingInfo.from_header(header)
    base = yaps["sKSpace"]["lBaseResolution"]
    os_factor = meas["flReadoutOSFactor"]
    assert enc.encoded_matrix == (int(base * os_factor), int(meas["iPEFTLength"]), 1)
    assert enc.recon_matrix == (base, int(meas["ImageLines"]), 1)
    assert enc.encoded_fov == (slc["dReadoutFOV"] * os_factor, slc["dPhaseFOV"], slc["dThickness"])
    assert enc.recon_fov == (slc["dReadoutFOV"], slc["dPhaseFOV"], slc["dThickness"])
    assert enc.readout_oversampling == os_factor == 2.0
    assert enc.trajectory == "cartesian"
    assert enc.ky_center() == mdbs[0].mdh.CenterLin == 80
    assert enc.limits["kspace_encoding_step_1"].maximum == max(m.cLin for m in mdbs) == 159
    assert enc.receiver_channels == mdbs[0].mdh.UsedChannels == 2
    assert enc.acceleration == (1, 1)
    sysinfo = header.acquisitionSystemInformation
    assert sysinfo.systemFieldStrength_T == pytest.approx(meas["flMagneticFieldStrength"])
    assert (
        sysinfo.systemVendor == "SIEMENS"
        and sysinfo.systemModel == hdr["Dicom"]["ManufacturersModelName"]
    )
    seq = header.sequenceParameters
    tr_ms, te_ms = yaps["alTR"][0] / 1000, yaps["alTE"][0] / 1000
    times = {"TR": seq.TR, "TE": seq.TE}
    assert times == {"TR": [tr_ms], "TE": [te_ms]}
    assert seq.flipAngle_deg == yaps["adFlipAngleDegree"][:1]
    assert seq.TI == []  # inversion off in this protocol
    assert header.experimentalConditions.H1resonanceFrequency_Hz == hdr["Dicom"]["lFrequency"]


def test_gre_convert_writes_valid_ismrmrd(gre_converted, gre_twix):
    hdr, mdbs = gre_twix
    ds = ismrmrd.Dataset(str(gre_converted), "dataset", create_if_needed=False)
    try:
        header = ismrmrd.xsd.CreateFromDocument(ds.read_xml_header())
        n = ds.number_of_acquisitions()
        acqs = [ds.read_acquisition(i) for i in range(n)]
    finally:
        ds.close()
    assert header.encoding[0].encodedSpace.matrixSize.x == 320
    assert n == len(mdbs) == 160
    normal = hdr["MeasYaps"]["sSliceArray"]["asSlice"][0]["sNormal"]
    normal = np.array([normal.get(k, 0.0) for k in ("dSag", "dCor", "dTra")])
    position = hdr["MeasYaps"]["sSliceArray"]["asSlice"][0]["sPosition"]
    position = np.array([position[k] for k in ("dSag", "dCor", "dTra")])
    dwell_us = hdr["Meas"]["alDwellTime"][0] / 1000
    for i, (acq, mdb) in enumerate(zip(acqs, mdbs, strict=True)):
        np.testing.assert_array_equal(acq.data, mdb.data)  # samples untouched, oversampled
        assert acq.idx.kspace_encode_step_1 == mdb.cLin
        assert acq.center_sample == mdb.mdh.CenterCol == 160
        assert acq.number_of_samples == 320 and acq.active_channels == 2
        assert acq.sample_time_us == pytest.approx(dwell_us)
        assert acq.scan_counter == mdb.mdh.ScanCounter
        np.testing.assert_allclose(acq.position, position, atol=1e-3)
        np.testing.assert_allclose(acq.slice_dir, normal, atol=1e-5)
        r, p, s = (np.asarray(v, float) for v in (acq.read_dir, acq.phase_dir, acq.slice_dir))
        np.testing.assert_allclose([r @ r, p @ p, r @ p, r @ s, p @ s], [1, 1, 0, 0, 0], atol=1e-5)
        assert not acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        assert not acq.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
        assert acq.is_flag_set(ismrmrd.ACQ_FIRST_IN_SLICE) == (i == 0)
        assert acq.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE) == (i == n - 1)
        assert acq.is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT) == (i == n - 1)
    # transversal slice, phase encoding anterior-posterior: read is left-right
    np.testing.assert_allclose(np.abs(acqs[0].read_dir), [1, 0, 0], atol=1e-6)


def test_gre_converted_file_reconstructs_like_a_plain_fft(gre_converted, gre_plain_fft, tmp_path):
    out = tmp_path / "images.h5"
    args = ["recon", str(gre_converted), "-o", str(out), "--method", "sense"]
    assert main([*args, "--device", "cpu", "-q"]) == 0
    (image,) = read_images(out)
    mag = np.abs(np.asarray(image.data)).squeeze()
    assert mag.shape == (160, 160)
    # geometry from the scanner's slice: FOV, matrix, position, orientation
    assert tuple(image.field_of_view) == pytest.approx((200.0, 200.0, 4.0))
    assert tuple(image.matrix_size) == (160, 160, 1)
    acq = next(iter_acquisitions(gre_converted))
    np.testing.assert_allclose(image.position, acq.position, atol=1e-4)
    for name in ("read_dir", "phase_dir", "slice_dir"):
        np.testing.assert_allclose(getattr(image, name), getattr(acq, name), atol=1e-6)
    # the phantom: same image as twixtools' own FFT recon, energy inside the object
    ref = gre_plain_fft
    assert np.corrcoef(mag.ravel(), ref.ravel())[0, 1] > 0.99
    obj = ref > 0.25 * ref.max()
    assert 0.3 < obj.mean() < 0.8  # a phantom filling about half of the FOV
    assert (mag[obj] ** 2).sum() / (mag**2).sum() > 0.97
    # and not a mirrored one: the flipped image matches far worse
    assert np.corrcoef(mag.ravel(), ref[:, ::-1].ravel())[0, 1] < 0.9


@pytest.mark.ismrmrd_tools
def test_libismrmrd_reads_the_converted_file(gre_converted, gre_plain_fft, tmp_path):
    """An independent reader: libismrmrd's C++ example Cartesian recon (Debian ismrmrd-tools)
    reconstructs the converted file into the same image as twixtools' plain FFT."""
    import subprocess

    import h5py

    copy = tmp_path / "raw.h5"
    copy.write_bytes(gre_converted.read_bytes())
    proc = subprocess.run(
        ["ismrmrd_recon_cartesian_2d", str(copy)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Encoding Matrix Size        : [320, 160, 1]" in proc.stdout
    assert "Number of acquisitions      : 160" in proc.stdout
    with h5py.File(copy, "r") as f:
        cpp = np.abs(f["dataset/cpp/data"][0]).squeeze()
    assert cpp.shape == (160, 160)
    assert np.corrcoef(cpp.ravel(), gre_plain_fft.ravel())[0, 1] > 0.99


def test_recon_dat_directly_equals_recon_of_converted_file(gre, gre_converted, tmp_path):
    images = {}
    for name, src in (("dat", gre), ("h5", gre_converted)):
        out = tmp_path / f"{name}.h5"
        args = ["recon", str(src), "-o", str(out), "--method", "zerofill", "--device", "cpu"]
        assert main([*args, "-q"]) == 0
        (images[name],) = read_images(out)
    np.testing.assert_allclose(images["dat"].data, images["h5"].data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(images["dat"].position, images["h5"].position)


def test_read_raw_groups_of_a_dat_file(gre):
    _, groups = read_raw(gre)
    (ks,) = groups
    assert ks.data.shape == (2, 160, 320) and ks.mask.all() and not ks.calib.any()
    assert ks.indices == Indices() and ks.noise is None
    assert ks.dwell_us == pytest.approx(11.6)  # alDwellTime[0] = 11600 ns


def test_convert_refuses_to_overwrite_and_writes_into_a_directory(gre, gre_converted, tmp_path):
    assert main(["convert", str(gre), "-o", str(gre_converted), "-q"]) == 1
    assert main(["convert", str(gre), "-o", str(tmp_path), "-q"]) == 0
    assert (tmp_path / "gre.h5").is_file()
    assert not list(tmp_path.glob(".*partial"))


def test_replay_streams_a_dat_file(gre):
    from mrprior.replay import load_raw_stream

    text, acqs = load_raw_stream(gre)
    header = ismrmrd.xsd.CreateFromDocument(text)
    assert header.acquisitionSystemInformation.receiverChannels == 2
    assert len(acqs) == 160 and acqs[-1].is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE)


def test_multi_raid_file_measurement_selection(gre, tmp_path):
    """A VD/VE multi-raid file (written by twixtools from gre.dat twice, the first copy's
    k-space cut to 100 lines, as an adjustment scan would differ): -1 is the last measurement,
    --measurement picks another; a cut-short multi-raid file is reported as truncated."""
    scan = twixtools.read_twix(str(gre), verbose=False, keep_acqend=True, parse_pmu=False)[-1]
    first = dict(scan, mdb=[m for m in scan["mdb"] if m.is_flag_set("ACQEND") or m.cLin < 100])
    multi = tmp_path / "multi.dat"
    twixtools.write_twix([first, scan], str(multi), version_is_ve=True)
    assert read_measurement(multi).count == 2
    assert len(read_measurement(multi).mdbs) == 160
    assert len(read_measurement(multi, measurement=0).mdbs) == 100
    out = tmp_path / "first.h5"
    assert main(["convert", str(multi), "-o", str(out), "--measurement", "0", "-q"]) == 0
    enc = EncodingInfo.from_header(read_header(out))
    assert enc.limits["kspace_encoding_step_1"].maximum == 99
    _, (ks,) = read_raw(multi)
    assert ks.mask.all()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(multi.read_bytes()[: multi.stat().st_size - 4096])
    with pytest.raises(DataError, match="truncated twix file: measurement 1 should end at byte"):
        read_measurement(cut)
    assert read_measurement(cut, measurement=0).index == 0  # the intact first one still reads


# --------------------------------------------------------------------------------------------
# real scanner data: epi.dat
# --------------------------------------------------------------------------------------------
def test_epi_converts_with_its_ramp_sampling_and_is_refused_by_recon(epi, tmp_path, capsys):
    out = tmp_path / "epi_raw.h5"
    assert main(["convert", str(epi), "-o", str(out), "-q"]) == 0
    header = read_header(out)
    enc = header.encoding[0]
    assert enc.trajectory.value == "epi"
    params = {p.name: p.value for p in enc.trajectoryDescription.userParameterLong}
    scan = twixtools.read_twix(str(epi), verbose=False, parse_pmu=False, parse_geometry=False)[-1]
    meas = scan["hdr"]["Meas"]
    assert params["rampUpTime"] == meas["alRegridRampupTime"][0] == 160
    assert params["flatTopTime"] == meas["alRegridFlattopTime"][0]
    assert params["numSamples"] == meas["alRegridDestSamples"][0]
    acqs = list(iter_acquisitions(out))
    mdbs = [m for m in scan["mdb"] if not m.is_flag_set("ACQEND")]
    assert len(acqs) == len(mdbs) == 83
    phasecorr = [a for a in acqs if a.is_flag_set(ismrmrd.ACQ_IS_PHASECORR_DATA)]
    assert len(phasecorr) == sum(m.is_flag_set("PHASCOR") for m in mdbs) == 3
    reverse = [a.is_flag_set(ismrmrd.ACQ_IS_REVERSE) for a in acqs]
    assert reverse == [m.is_flag_set("REFLECT") for m in mdbs]
    assert sum(reverse) == 42  # 40 imaging lines and 2 of the 3 navigators
    capsys.readouterr()
    assert main(["recon", str(epi), "-o", str(tmp_path / "img.h5"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "EPI" in err and "ramp-sampling regridding and Nyquist-ghost correction" in err
    assert "mrprior convert" in err
    assert not (tmp_path / "img.h5").exists()


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (4, "too short"),
        (5000, "truncated"),  # inside the protocol header
        (20000, "truncated"),  # just after the protocol
        (828672, "truncated"),  # half the data
        (-1000, "truncated"),  # the last readout and the end block cut off
    ],
)
def test_truncated_file_gives_a_clear_error(gre, tmp_path, keep, message):
    raw = gre.read_bytes()
    bad = tmp_path / "cut.dat"
    bad.write_bytes(raw[:keep])
    with pytest.raises(DataError, match=message):
        list(read_raw(bad)[1])
    assert main(["convert", str(bad), "-o", str(tmp_path / "o.h5"), "-q"]) == 1
    assert not (tmp_path / "o.h5").exists()


def test_zero_filled_vb_file_is_refused_not_looped_on(gre, tmp_path):
    """A VB-layout file (gre.dat's protocol block, then zero-filled data, as after an
    interrupted copy): twixtools' own reader loops forever on its zero-length blocks, ours
    stops with an error."""
    scan = twixtools.read_twix(str(gre), parse_data=False, verbose=False)[-1]
    bad = tmp_path / "zeros.dat"
    bad.write_bytes(scan["hdr_str"].tobytes() + bytes(128 * 50))
    with pytest.raises(DataError, match=r"corrupt twix file: data block 0 .* has length 0"):
        read_header(bad)
    assert read_measurement(gre).version == "VD/VE"


def test_garbage_missing_and_wrong_measurement(gre, tmp_path):
    junk = tmp_path / "junk.dat"
    junk.write_bytes(np.random.default_rng(0).bytes(50_000))
    with pytest.raises(DataError, match=r"junk\.dat"):
        read_header(junk)
    with pytest.raises(DataError, match="no such file"):
        read_header(tmp_path / "missing.dat")
    with pytest.raises(DataError, match="holds 1 measurement"):
        read_measurement(gre, measurement=1)
    assert read_measurement(gre, measurement=0).index == 0


# --------------------------------------------------------------------------------------------
# synthetic measurements: noise, PAT reference, several slices, 3D
# --------------------------------------------------------------------------------------------
def _hdr(nx: int, ny: int, nz: int, slices: int, accel: int) -> dict:
    """The protocol entries the mapping reads, as twixtools parses them."""
    thickness = 48.0 if nz > 1 else 3.0
    return {
        "MeasYaps": {
            "sKSpace": {
                "lBaseResolution": nx,
                "lPhaseEncodingLines": ny,
                "lPartitions": nz,
                "lImagesPerSlab": nz,
                "ucDimension": 4 if nz > 1 else 2,
                "ucTrajectory": 1,
            },
            "sSliceArray": {
                "asSlice": [{"dReadoutFOV": 220.0, "dPhaseFOV": 165.0, "dThickness": thickness}]
                * slices
            },
            "sPat": {"lAccelFactPE": accel, "lAccelFact3D": 1},
            "alTR": [2300000],
            "alTE": [2980],
            "alTI": [900000],
            "sPrepPulses": {"ucInversion": 2},
            "adFlipAngleDegree": [9.0],
            "lContrasts": 1,
        },
        "Meas": {
            "flReadoutOSFactor": 2.0,
            "iNoOfFourierColumns": 2 * nx,
            "iPEFTLength": ny,
            "ImageLines": ny,
            "alDwellTime": [7800],
            "flMagneticFieldStrength": 2.89,
            "MeasUID": 42,
        },
        "Dicom": {"Manufacturer": "SIEMENS", "lFrequency": 123250000, "tPatientPosition": "HFS"},
    }


def _mdb(data, lin=0, par=0, sli=0, flags=(), pos=(0.0, 0.0, 0.0), center_lin=0, center_par=0):
    from twixtools.mdb import Mdb_local

    m = Mdb_local(np.asarray(data, np.complex64))
    m.mdh.Counter.Lin, m.mdh.Counter.Par, m.mdh.Counter.Sli = lin, par, sli
    m.mdh.CenterCol = data.shape[-1] // 2
    m.mdh.CenterLin, m.mdh.CenterPar = center_lin, center_par
    m.mdh.SliceData.SlicePos.Sag, m.mdh.SliceData.SlicePos.Cor, m.mdh.SliceData.SlicePos.Tra = pos
    m.mdh.SliceData.Quaternion[:] = (1.0, 0.0, 0.0, 0.0) if "NOISEADJSCAN" not in flags else 0.0
    for f in flags:
        m.add_flag(f)
    return m


def _measurement(hdr: dict, mdbs: list) -> TwixMeasurement:
    return TwixMeasurement(
        path=Path("synthetic.dat"), index=0, count=1, version="VD/VE", hdr=hdr, mdbs=mdbs
    )


def _groups(meas: TwixMeasurement) -> tuple[list, list]:
    header = build_header(meas)
    acqs = list(iter_measurement_acquisitions(meas))
    buffer = AcquisitionBuffer(header)
    emitted_on_last = [ks for a in acqs for ks in buffer.add(a)]
    return acqs, emitted_on_last + buffer.flush()


def test_multislice_with_noise_and_separate_reference_block():
    """Siemens order: noise scans, then a PATREFSCAN block for every slice (its last line
    carrying Siemens' LASTSCANINSLICE), then the R = 2 imaging lines, slices interleaved."""
    rng = np.random.default_rng(1)
    c, nx, ny, n_slices = 3, 16, 12, 3
    kspace = (rng.standard_normal((n_slices, c, ny, 2 * nx)) + 0j).astype(np.complex64)
    noise = ((rng.standard_normal((2, c, 64)) + 1j * rng.standard_normal((2, c, 64))) / 2).astype(
        np.complex64
    )
    positions = [(0.0, 0.0, -6.0 + 6.0 * s) for s in range(n_slices)]
    common = dict(center_lin=ny // 2)
    mdbs = [_mdb(n, flags=("NOISEADJSCAN",)) for n in noise]
    ref_lines = range(ny // 2 - 2, ny // 2 + 2)
    for s in range(n_slices):
        for i, ky in enumerate(ref_lines):
            flags = (
                ("PATREFSCAN", "LASTSCANINSLICE") if i == len(ref_lines) - 1 else ("PATREFSCAN",)
            )
            mdbs.append(_mdb(kspace[s, :, ky], ky, sli=s, flags=flags, pos=positions[s], **common))
    for s in (0, 2, 1):
        for ky in range(0, ny, 2):
            mdbs.append(_mdb(kspace[s, :, ky], ky, sli=s, pos=positions[s], **common))
    meas = _measurement(_hdr(nx, ny, 1, n_slices, accel=2), mdbs)
    header = build_header(meas)
    enc = EncodingInfo.from_header(header)
    assert enc.encoded_matrix == (2 * nx, ny, 1) and enc.recon_matrix == (nx, ny, 1)
    assert enc.acceleration == (2, 1) and enc.calibration_mode == "separate"
    assert enc.limits["slice"].maximum == n_slices - 1
    assert header.sequenceParameters.TI == [900.0]  # non-selective inversion
    assert [classify(m) for m in mdbs[:3]] == ["noise", "noise", "calibration"]

    acqs, groups = _groups(meas)
    assert len(acqs) == len(mdbs)
    assert sum(a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT) for a in acqs) == 2
    last = [i for i, a in enumerate(acqs) if a.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE)]
    assert all(not acqs[i].is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION) for i in last)
    assert len(groups) == n_slices
    for ks in groups:
        s = ks.indices.slice
        rows = np.flatnonzero(ks.mask.any(axis=1))
        np.testing.assert_array_equal(rows, np.arange(0, ny, 2))
        np.testing.assert_array_equal(np.flatnonzero(ks.calib.any(axis=1)), list(ref_lines))
        acquired = ks.mask | ks.calib
        np.testing.assert_array_equal(ks.data[:, acquired], kspace[s][:, acquired])
        np.testing.assert_allclose(ks.reference.position, positions[s])
        np.testing.assert_allclose(ks.reference.read_dir, [0, 1, 0], atol=1e-7)
        np.testing.assert_allclose(ks.reference.phase_dir, [1, 0, 0], atol=1e-7)
        assert ks.noise is not None and ks.noise.shape == (c, 128)
        np.testing.assert_array_equal(ks.noise, np.concatenate(list(noise), axis=1))
        assert ks.dwell_us == ks.noise_dwell_us == pytest.approx(7.8)


def test_3d_partitions_with_embedded_calibration():
    rng = np.random.default_rng(2)
    c, nx, ny, nz = 2, 8, 10, 6
    vol = (rng.standard_normal((c, nz, ny, 2 * nx)) + 1j).astype(np.complex64)
    center = dict(center_lin=ny // 2, center_par=nz // 2)
    mdbs = [_mdb(rng.standard_normal((c, 32)) + 0j, flags=("NOISEADJSCAN",))]
    calib = {(kz, ky) for kz in range(2, 4) for ky in range(4, 6)}
    for kz in range(nz):
        for ky in range(ny):
            imaging = ky % 2 == 0
            flags = ("PATREFSCAN", "PATREFANDIMASCAN") if imaging else ("PATREFSCAN",)
            if (kz, ky) in calib:
                mdbs.append(_mdb(vol[:, kz, ky], ky, par=kz, flags=flags, **center))
            elif imaging:
                mdbs.append(_mdb(vol[:, kz, ky], ky, par=kz, **center))
    meas = _measurement(_hdr(nx, ny, nz, 1, accel=2), mdbs)
    enc = EncodingInfo.from_header(build_header(meas))
    assert enc.is_3d and enc.encoded_matrix == (2 * nx, ny, nz)
    assert enc.kz_center() == nz // 2 and enc.calibration_mode == "embedded"
    assert enc.encoded_fov[2] == enc.recon_fov[2] == 48.0
    acqs, groups = _groups(meas)
    both = [a for a in acqs if a.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)]
    assert len(both) == 2 and not any(
        a.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION) for a in both
    )
    (ks,) = groups
    assert ks.data.shape == (c, nz, ny, 2 * nx)
    np.testing.assert_array_equal(np.flatnonzero(ks.mask[0].any(axis=1)), np.arange(0, ny, 2))
    calib_at = {(int(z), int(y)) for z, y in zip(*np.nonzero(ks.calib.any(axis=2)), strict=True)}
    assert calib_at == calib
    acquired = ks.mask | ks.calib
    np.testing.assert_array_equal(ks.data[:, acquired], vol[:, acquired])
    assert ks.noise is not None and ks.noise.shape == (c, 32)


def test_partial_fourier_and_asymmetric_echo_are_zero_filled_in_place():
    """6/8 partial Fourier (lines 4..15 of 16, centre line 8) and an asymmetric echo (24 of 32
    samples, centre sample 8): each sample lands at its k-space position, the rest is zero."""
    rng = np.random.default_rng(3)
    c, nx, ny = 2, 16, 16
    full = (rng.standard_normal((c, ny, 2 * nx)) + 1j).astype(np.complex64)
    mdbs = []
    for ky in range(4, ny):
        m = _mdb(full[:, ky, 8:], ky, center_lin=ny // 2)  # samples kx = -8 .. 15
        m.mdh.CenterCol = 8
        mdbs.append(m)
    meas = _measurement(_hdr(nx, ny, 1, 1, accel=1), mdbs)
    enc = EncodingInfo.from_header(build_header(meas))
    assert enc.encoded_matrix == (2 * nx, ny, 1) and enc.ky_center() == ny // 2
    _, (ks,) = _groups(meas)
    expected = np.zeros_like(full)
    expected[:, 4:, 8:] = full[:, 4:, 8:]
    np.testing.assert_array_equal(ks.data, expected)
    np.testing.assert_array_equal(ks.mask, expected[0] != 0)


def test_dat_that_holds_only_noise_is_refused(tmp_path):
    mdbs = [_mdb(np.ones((2, 16)), flags=("NOISEADJSCAN",))]
    with pytest.raises(DataError, match="no imaging scans"):
        build_header(_measurement(_hdr(8, 8, 1, 1, 1), mdbs))
