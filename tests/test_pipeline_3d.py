"""3D Cartesian acquisitions through the one pipeline: buffering, bad input, plane stacks,
reconstruction, ISMRMRD geometry, NIfTI affine.

The raw files are written by tests/io/raw3d.py (a phantom volume with a marker in the
(+z, +y, +x) octant, smooth 3D coil maps, 2× readout oversampling, uniform ky × kz sampling
with a calibration box, oblique geometry).
"""

from __future__ import annotations

from pathlib import Path

import ismrmrd
import numpy as np
import pytest
import torch

from mrprior.errors import DataError
from mrprior.io.containers import Indices, KSpace
from mrprior.io.raw import AcquisitionBuffer, read_header, read_raw
from mrprior.mr.fft import ifftc
from mrprior.mr.sense import sense_operator
from mrprior.pipeline import (
    acquisition_buffer,
    coil_maps,
    images_from_series,
    load_recon_config,
    plane_geometry,
    plane_stack,
    preprocess,
    reconstruct,
    reconstruct_file,
)
from mrprior.recon.problem import ReconProblem, ReconResult, register_method
from tests.io.raw3d import GEOMETRY_3D, copy_acq, write_acquisitions, write_raw_3d
from tests.operator_checks import check_operator

SHAPE = (16, 24, 20)  # nz, ny, nx (recon matrix)


@register_method("test-rss-planes", needs_csm=False)
def _rss_planes(problem: ReconProblem, settings: dict) -> ReconResult:
    """Root-sum-of-squares of each plane (calibration-free, deterministic), with the planes'
    signal energy as an ``uncertainty`` stand-in so extra series can be checked."""
    coil_images = ifftc(problem.kspace, 2)
    rss = torch.sqrt((coil_images.abs() ** 2).sum(dim=-3))
    return ReconResult(rss.to(torch.complex64), extras={"uncertainty": 0.5 * rss}, info={"n": 1})


_WHOLE_CALLS: list[ReconProblem] = []


@register_method("test-whole-volume", needs_csm=True, batched=True, whole_volume=True)
def _whole_volume(problem: ReconProblem, settings: dict) -> ReconResult:
    """Records the problem it gets; the coil-combined zero-filled image."""
    _WHOLE_CALLS.append(problem)
    coil_images = ifftc(problem.kspace, 2)
    return ReconResult((coil_images * problem.csm.conj()).sum(dim=-3), info={"n": 1})


def _cfg(method: str = "test-rss-planes", **kw) -> object:
    return load_recon_config(overrides={"method": method, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def raw3d(tmp_path_factory: pytest.TempPathFactory):
    """Two repetitions, LAST_IN_SLICE on every partition (must not end a volume early)."""
    tmp = tmp_path_factory.mktemp("raw3d")
    return write_raw_3d(tmp / "vol.h5", shape=SHAPE, repetitions=2, last_in_slice="partition")


def _nrmse(x: np.ndarray, ref: np.ndarray) -> float:
    x, ref = np.abs(x).astype(np.float64), np.abs(ref).astype(np.float64)
    scale = (x * ref).sum() / max((x * x).sum(), 1e-30)
    return float(np.linalg.norm(scale * x - ref) / np.linalg.norm(ref))


# -- operator and plane decomposition -------------------------------------------------------
def test_sense_3d_adjointness_and_plane_decomposition(raw3d):
    """The 3D SENSE operator passes the shared operator checks, and its adjoint equals the
    pipeline's decomposition: iFFT along the readout, then one 2D SENSE adjoint per plane."""
    csm = torch.from_numpy(raw3d.maps)
    mask3 = torch.from_numpy(np.repeat(raw3d.lines[:, :, None], SHAPE[2], axis=2))
    A = sense_operator(csm, mask3)
    check_operator(A)
    check_operator(sense_operator(csm))
    g = torch.Generator().manual_seed(0)
    y = A.forward(torch.randn(SHAPE, dtype=torch.complex64, generator=g))
    ks = KSpace(
        data=y.numpy(),
        mask=mask3.numpy(),
        calib=np.zeros_like(mask3.numpy()),
        encoding=read_raw(raw3d.path)[1][0].encoding,
        reference=ismrmrd.AcquisitionHeader(),
        oversampling_removed=True,
    )
    stack = plane_stack(ks, raw3d.maps, use_calib=False, copy=True)
    assert stack.is_volume and stack.count == SHAPE[2]
    np.testing.assert_array_equal(stack.mask, raw3d.lines)
    kplanes, mplanes = stack.planes(3, 11, torch.device("cpu"))
    assert tuple(kplanes.shape) == (8, 4, SHAPE[0], SHAPE[1])
    ref = A.adjoint(y)
    for b, x in enumerate(range(3, 11)):
        plane = sense_operator(mplanes[b], torch.from_numpy(raw3d.lines)).adjoint(kplanes[b])
        torch.testing.assert_close(plane, ref[:, :, x], rtol=1e-4, atol=1e-5)
    assert np.array_equal(ks.data, y.numpy())  # copy=True left the caller's data alone


# -- buffering ------------------------------------------------------------------------------
def test_buffer_builds_whole_volumes(raw3d):
    header, groups = read_raw(raw3d.path)
    assert [g.indices for g in groups] == [Indices(repetition=r) for r in (0, 1)]
    g = groups[0]
    assert g.is_3d and g.data.shape == (4, *SHAPE[:2], 2 * SHAPE[2])
    lines = g.mask.any(axis=2)
    np.testing.assert_array_equal(lines, raw3d.lines)
    np.testing.assert_array_equal(g.calib.any(axis=2), raw3d.calib_lines)
    assert g.noise is not None and g.noise.shape[0] == 4
    # streamed: LAST_IN_SLICE on every partition does not emit partial volumes
    buf = AcquisitionBuffer(header)
    emitted = []
    for acq in raw3d.acqs:
        out = buf.add(acq)
        emitted += [(acq.idx.kspace_encode_step_2, acq.idx.repetition, o) for o in out]
    assert [(kz, rep) for kz, rep, _ in emitted] == [(14, 0), (14, 1)]  # last sampled partition
    np.testing.assert_array_equal(emitted[0][2].data, g.data)
    assert buf.flush() == [] and not buf.errors


def test_volume_waits_for_last_in_slice_of_complete_volume(raw3d):
    """Without LAST_IN_MEASUREMENT, a per-partition LAST_IN_SLICE ends the volume only at the
    last partition; with centric partition order it ends at the last acquisition."""
    header = read_header(raw3d.path)
    acqs = [copy_acq(a) for a in raw3d.acqs if a.idx.repetition == 0]
    for a in acqs:
        a.clear_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
    buf = AcquisitionBuffer(header)
    done = [i for i, a in enumerate(acqs) if buf.add(a)]
    assert done == [len(acqs) - 1]
    # centric order: partitions 8, 7, 9, 6, 10, ...; LAST_IN_SLICE only on the very last line
    imaging = acqs[1:]
    order = sorted(imaging, key=lambda a: abs(a.idx.kspace_encode_step_2 - 8.25))
    for a in order:
        a.clear_flag(ismrmrd.ACQ_LAST_IN_SLICE)
    order[-1].set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
    buf = AcquisitionBuffer(header)
    buf.add(acqs[0])
    done = [i for i, a in enumerate(order) if buf.add(a)]
    assert done == [len(order) - 1]


# -- bad 3D input: a clear error naming it, nothing lost ------------------------------------
def _three_reps(tmp_path: Path):
    return write_raw_3d(tmp_path / "three.h5", shape=SHAPE, repetitions=3, last_in_slice="volume")


def _outside_limits(acqs):
    bad = next(a for a in acqs if a.idx.repetition == 1 and a.idx.kspace_encode_step_2 == 4)
    bad.idx.kspace_encode_step_2 = 17
    return acqs


def _missing_partitions(acqs):
    keep = [
        a for a in acqs if not (a.idx.repetition == 1 and 10 <= a.idx.kspace_encode_step_2 < 15)
    ]
    last = [a for a in keep if a.idx.repetition == 1][-1]
    last.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
    return keep


def _coils_change(acqs):
    i = next(
        i for i, a in enumerate(acqs) if a.idx.repetition == 1 and a.idx.kspace_encode_step_2 == 6
    )
    a = acqs[i]
    acqs[i] = ismrmrd.Acquisition.from_array(a.data[:3].copy(), None, idx=a.idx)
    return acqs


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            _outside_limits,
            r"repetition 1: acquisition \d+: partition kspace_encoding_step_2 = 17 outside the "
            r"encoding limits \[0, 15\]",
        ),
        (
            _missing_partitions,
            r"repetition 1: missing partitions: kspace_encode_step_2 10\.\.15 of 0\.\.15",
        ),
        (_coils_change, r"repetition 1: inconsistent coil count: acquisition \d+ has 3 channels"),
    ],
    ids=["partition-outside-limits", "missing-partitions", "coils-change-within-volume"],
)
def test_bad_3d_input_fails_its_volume_only(tmp_path, edit, match):
    raw = _three_reps(tmp_path)
    acqs = edit([copy_acq(a) for a in raw.acqs])
    bad = write_acquisitions(tmp_path / "bad.h5", raw.header_xml, acqs)
    # streamed: repetitions 0 and 2 are emitted, then the error names repetition 1
    buf = AcquisitionBuffer(raw.header_xml)
    out = [ks for a in acqs for ks in buf.add(a)] + buf.flush()
    assert [ks.indices.repetition for ks in out] == [0, 2]
    with pytest.raises(DataError, match=match):
        buf.raise_errors()
    # from a file: both good volumes are reconstructed and kept with the error
    from mrprior.pipeline import IncompleteReconstruction

    with pytest.raises(IncompleteReconstruction, match=match) as info:
        reconstruct_file(bad, _cfg(), progress=False)
    assert {im.repetition for im in info.value.images} == {0, 2}
    assert len(info.value.images) == 2 * SHAPE[0]


def test_inconsistent_partitions_across_repetitions(tmp_path):
    """Fully sampled partitions (header R = 1): a repetition whose partitions stop two short of
    the first repetition's is named, not silently reconstructed with a different extent."""
    raw = write_raw_3d(tmp_path / "full.h5", shape=SHAPE, accel=(1, 1), repetitions=2)
    acqs = [
        copy_acq(a)
        for a in raw.acqs
        if not (a.idx.repetition == 1 and a.idx.kspace_encode_step_2 >= 14)
    ]
    buf = AcquisitionBuffer(raw.header_xml)
    out = [ks for a in acqs for ks in buf.add(a)] + buf.flush()
    assert [ks.indices.repetition for ks in out] == [0]
    with pytest.raises(DataError, match=r"repetition 1: .*partitions.*0\.\.13.*0\.\.15"):
        buf.raise_errors()


def test_3d_limits_with_2d_matrix_is_a_header_error(raw3d):
    xml = raw3d.header_xml.replace("<z>16</z>", "<z>1</z>", 1)
    with pytest.raises(DataError, match=r"kspace_encoding_step_2 limits .* encoded matrix size z"):
        AcquisitionBuffer(xml)


# -- reconstruction --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full3d(tmp_path_factory: pytest.TempPathFactory):
    """Fully sampled, so a root-sum-of-squares recon is the phantom's magnitude."""
    return write_raw_3d(tmp_path_factory.mktemp("full3d") / "full.h5", shape=SHAPE, accel=(1, 1))


def test_volume_reconstruction_orientation_and_batches(full3d):
    _, groups = read_raw(full3d.path)
    series = reconstruct(groups[0], _cfg(planes_per_batch=7))
    assert series.is_volume and series.image.shape == SHAPE
    assert series.info["planes"] == SHAPE[2] and series.info["planes_solved"] == SHAPE[2]
    assert series.extras["uncertainty"].shape == SHAPE
    # the volume is the phantom, with no axis flipped (the marker sits in one octant only)
    truth = np.abs(full3d.volume)
    assert _nrmse(series.image, truth) < 0.03
    for axis in range(3):
        assert _nrmse(series.image, np.flip(truth, axis)) > 0.2
    # the batch size changes nothing
    one = reconstruct(groups[0], _cfg(planes_per_batch=1))
    np.testing.assert_allclose(one.image, series.image, rtol=1e-5, atol=1e-6)


def test_whole_volume_method_gets_every_plane_at_once(full3d):
    """A method registered with whole_volume gets the volume in one call, whatever
    planes_per_batch says, with ``problem.volume`` marking its planes; other methods get
    batches without it."""
    _, groups = read_raw(full3d.path)
    _WHOLE_CALLS.clear()
    series = reconstruct(groups[0], _cfg("test-whole-volume", planes_per_batch=3))
    assert len(_WHOLE_CALLS) == 1
    (problem,) = _WHOLE_CALLS
    assert problem.volume is not None and problem.volume.shape == (SHAPE[2],)
    assert int(problem.volume.sum()) == problem.num_planes == series.info["planes_solved"]
    batched = reconstruct(groups[0], _cfg("zerofill", planes_per_batch=3))
    np.testing.assert_allclose(series.image, batched.image, rtol=1e-4, atol=1e-5)


def test_preprocess_3d_in_chunks_matches_whole(raw3d):
    from mrprior import pipeline

    _, groups = read_raw(raw3d.path)
    cfg = _cfg()
    whole = preprocess(groups[0], cfg)
    old = pipeline.PREPROCESS_CHUNK
    try:
        pipeline.PREPROCESS_CHUNK = 3
        chunked = preprocess(groups[0], cfg)
    finally:
        pipeline.PREPROCESS_CHUNK = old
    assert whole.prewhitened and whole.oversampling_removed
    assert whole.data.shape == (4, *SHAPE)
    # equal to float32 rounding of the data's scale (FFTs of other batch sizes may round
    # differently: a relative tolerance per element fails on small values near a large one)
    scale = float(np.abs(whole.data).max())
    np.testing.assert_allclose(chunked.data, whole.data, rtol=0, atol=1e-5 * scale)
    assert whole.data is not groups[0].data


def test_buffer_removes_oversampling_line_by_line_like_preprocess(raw3d):
    """The pipeline's buffer (oversampling removed as lines arrive, half the memory) holds
    exactly what preprocessing the encoded-size volume gives."""
    header, groups = read_raw(raw3d.path)
    cfg = _cfg(prewhiten=False)
    buf = acquisition_buffer(header, cfg)
    streamed = [ks for a in raw3d.acqs for ks in buf.add(a)]
    assert streamed[0].oversampling_removed and streamed[0].data.shape == (4, *SHAPE)
    whole = preprocess(groups[0], cfg)
    np.testing.assert_allclose(streamed[0].data, whole.data, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(streamed[0].mask, whole.mask)
    np.testing.assert_array_equal(streamed[0].calib, whole.calib)
    assert preprocess(streamed[0], cfg) is streamed[0]  # nothing left to do
    # the k-space centre kept at the encoded readout for the coil maps: the same either way
    a, b = streamed[0].encoded_centre, whole.encoded_centre
    assert a is not None and b is not None and a.start == b.start
    assert a.data.shape[-1] == groups[0].data.shape[-1]
    np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        coil_maps(streamed[0], cfg, torch.device("cpu")),
        coil_maps(whole, cfg, torch.device("cpu")),
        atol=1e-4,
    )


# -- ISMRMRD images, NIfTI -----------------------------------------------------------------
def _expected_positions(nz: int, dz: float) -> np.ndarray:
    pos = np.asarray(GEOMETRY_3D["position"])
    sd = np.asarray(GEOMETRY_3D["slice_dir"])
    return np.array([pos + (k - nz // 2) * dz * sd for k in range(nz)])


def test_volume_images_geometry_indices_and_series(raw3d):
    _, groups = read_raw(raw3d.path)
    cfg = _cfg(**{"output.extra_series": ["phase", "uncertainty"]})
    images = []
    for g in groups:
        images += images_from_series(reconstruct(g, cfg), cfg)
    nz, ny, nx = SHAPE
    dz = raw3d.fov[2] / nz
    assert len(images) == 2 * 3 * nz
    for series_index in (1, 2, 3):
        sel = [im for im in images if im.image_series_index == series_index]
        assert len(sel) == 2 * nz
        assert [im.image_index for im in sel] == list(range(1, 2 * nz + 1))
        assert [im.slice for im in sel] == list(range(nz)) * 2
        assert [im.repetition for im in sel] == [0] * nz + [1] * nz
    expected = _expected_positions(nz, dz)
    for im in images:
        assert tuple(im.matrix_size) == (nx, ny, 1)
        np.testing.assert_allclose(im.field_of_view, (raw3d.fov[0], raw3d.fov[1], dz))
        np.testing.assert_allclose(im.position, expected[im.slice], atol=1e-4)
        for name in ("read_dir", "phase_dir", "slice_dir", "patient_table_position"):
            np.testing.assert_allclose(getattr(im, name), GEOMETRY_3D[name], atol=1e-6)
    mags = [im for im in images if im.image_series_index == 1 and im.repetition == 0]
    meta = [ismrmrd.Meta.deserialize(im.attribute_string) for im in mags]
    assert len({(m["WindowCenter"], m["WindowWidth"]) for m in meta}) == 1  # one per volume
    assert all(im.image_type == ismrmrd.IMTYPE_PHASE for im in images if im.image_series_index == 2)
    # the series' geometry helper says the same
    geo = plane_geometry(reconstruct(groups[1], _cfg()))
    assert [g.image_index for g in geo] == list(range(nz + 1, 2 * nz + 1))


def test_nifti_affine_of_a_volume(raw3d, tmp_path):
    import nibabel as nib

    from mrprior.io.export import export_montage, export_nifti

    _, groups = read_raw(raw3d.path)
    cfg = _cfg()
    series = reconstruct(groups[0], cfg)
    images = images_from_series(series, cfg)
    path = export_nifti(images[::-1], tmp_path / "vol.nii.gz")  # any order in, sorted out
    nii = nib.load(path)
    nz, ny, nx = SHAPE
    assert nii.shape == (nx, ny, nz)
    np.testing.assert_allclose(
        nii.get_fdata(), np.abs(series.image).transpose(2, 1, 0), rtol=1e-5, atol=1e-6
    )
    read = np.asarray(GEOMETRY_3D["read_dir"])
    phase = np.asarray(GEOMETRY_3D["phase_dir"])
    slc = np.asarray(GEOMETRY_3D["slice_dir"])
    dx, dy, dz = raw3d.fov[0] / nx, raw3d.fov[1] / ny, raw3d.fov[2] / nz
    centre = np.asarray(GEOMETRY_3D["position"])
    lps = np.eye(4)
    lps[:3, :3] = np.stack([read * dx, phase * dy, slc * dz], axis=1)
    lps[:3, 3] = centre - read * dx * (nx // 2) - phase * dy * (ny // 2) - slc * dz * (nz // 2)
    np.testing.assert_allclose(nii.affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-4)
    # voxel (nx//2, ny//2, nz//2) is the slab centre, in RAS
    ras = nii.affine @ np.array([nx // 2, ny // 2, nz // 2, 1.0])
    np.testing.assert_allclose(ras[:3], centre * [-1, -1, 1], atol=1e-4)
    pngs = export_montage(images, tmp_path / "png", prefix="vol")
    assert len(pngs) == 1 and pngs[0].stat().st_size > 0


# -- coil-map methods on a volume (3D ESPIRiT) -----------------------------------------------
@pytest.fixture(scope="module")
def calib3d(tmp_path_factory: pytest.TempPathFactory):
    """R = 2 × 2 with a 12 × 12 calibration box, 6 coils."""
    return write_raw_3d(
        tmp_path_factory.mktemp("cal3d") / "cal.h5", shape=SHAPE, coils=6, calib=(12, 12)
    )


def test_sense_on_a_volume_with_3d_espirit_maps(calib3d):
    _, groups = read_raw(calib3d.path)
    truth = np.abs(calib3d.volume)
    sense = reconstruct(groups[0], _cfg("sense", kernel_size=5, planes_per_batch=6))
    zero = reconstruct(groups[0], _cfg("zerofill", kernel_size=5))
    assert sense.image.shape == zero.image.shape == SHAPE
    assert "csm" not in sense.extras  # volumes do not carry their maps along
    e_sense, e_zero = _nrmse(sense.image, truth), _nrmse(zero.image, truth)
    assert e_sense < 0.2 < e_zero, (e_sense, e_zero)
    # readout positions outside the ESPIRiT support are not solved (maps over the recon FOV
    # have the tighter support: the default maps over the 2x encoded FOV are smoother there)
    tight = _cfg("sense", kernel_size=5, planes_per_batch=6, **{"coil_maps.encoded_fov": False})
    recon_fov = reconstruct(groups[0], tight)
    assert recon_fov.info["planes_solved"] < recon_fov.info["planes"] == SHAPE[2]
    assert _nrmse(sense.image, truth) <= _nrmse(recon_fov.image, truth) + 0.005


def test_l1_on_a_volume_uses_one_bart_scale_for_all_planes(calib3d):
    """A fixed λ means ``bart pics -r λ`` on the 3D k-space: every plane is divided by the one
    BART scaling of the whole volume (not by its own), whatever the batches and with the
    background planes skipped, so the batching changes nothing."""
    from mrprior.backend import to_torch
    from mrprior.recon.fista import bart_scaling

    _, groups = read_raw(calib3d.path)

    def l1(**kw: object) -> object:  # the calibration box joins the data (BART sees it too)
        # maps over the recon FOV: their tight support leaves background planes out
        tight = {"coil_maps.encoded_fov": False}
        return _cfg("l1", kernel_size=5, calib_as_data=True, **tight, **kw)

    split = reconstruct(groups[0], l1(planes_per_batch=5, **{"settings.lam": 0.01}))
    whole = reconstruct(groups[0], l1(planes_per_batch=64, **{"settings.lam": 0.01}))
    assert split.info["planes_solved"] < split.info["planes"]  # background planes skipped
    ks = preprocess(groups[0], l1())
    sampled = ks.mask | ks.calib
    expect = bart_scaling(to_torch(ks.data), to_torch(sampled))
    assert expect != 1.0  # a real estimate from the 12 × 12 × 20 calibration block
    assert split.info["scale"] == pytest.approx(expect, rel=1e-6)
    assert whole.info["scale"] == pytest.approx(expect, rel=1e-6)
    assert split.info["lam_used"] == 0.01
    peak = float(np.abs(whole.image).max())
    np.testing.assert_allclose(split.image, whole.image, rtol=1e-4, atol=1e-5 * peak)
    # a plane's own estimate is not the volume's: the planes were not scaled one by one
    stack = plane_stack(ks, None, use_calib=True, copy=True)
    kplane, _ = stack.planes(SHAPE[2] // 2, SHAPE[2] // 2 + 1, torch.device("cpu"))
    own = bart_scaling(kplane[0], to_torch(stack.mask))
    assert abs(own / expect - 1) > 0.05, (own, expect)
    auto = reconstruct(groups[0], l1(**{"settings.lam": "auto"}))
    assert auto.info["lam_used"] > 0  # one λ in BART's units for the volume


def test_coil_maps_zero_everywhere_is_a_clear_error(calib3d):
    _, groups = read_raw(calib3d.path)
    with pytest.raises(DataError, match="coil maps are zero everywhere"):
        cfg = _cfg("sense", calib_size=8, kernel_size=6, **{"coil_maps.encoded_fov": False})
        reconstruct(groups[0], cfg)


def test_slab_oversampling_is_cropped_around_the_slab_centre(full3d, tmp_path):
    """Encoded 16 partitions over 64 mm, recon space 12 partitions over 48 mm (slab
    oversampling): the central 12 partitions come back, 4 mm apart, centred on the slab."""
    xml = full3d.header_xml
    recon = xml.index("<reconSpace>")
    tail = xml[recon:].replace("<z>16</z>", "<z>12</z>", 1).replace("<z>64.0</z>", "<z>48.0</z>", 1)
    xml = xml[:recon] + tail
    path = write_acquisitions(tmp_path / "slab.h5", xml, full3d.acqs)
    cfg = _cfg()
    images = reconstruct_file(path, cfg, progress=False)
    assert len(images) == 12
    np.testing.assert_allclose([im.field_of_view[2] for im in images], 4.0)
    np.testing.assert_allclose(images[0].position, _expected_positions(12, 4.0)[0], atol=1e-4)
    vol = np.stack([np.asarray(im.data)[0, 0] for im in images])
    assert _nrmse(vol, np.abs(full3d.volume)[2:14]) < 0.03
