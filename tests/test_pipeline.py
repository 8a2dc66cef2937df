"""The reconstruction pipeline: config, preprocessing, end-to-end quality against the phantom."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ismrmrd
import numpy as np
import pytest
import torch

from mrprior.errors import ConfigError, DataError
from mrprior.io.containers import EncodingInfo, KSpace
from mrprior.io.raw import read_raw
from mrprior.metrics import nrmse
from mrprior.mr.fft import ifftc
from mrprior.pipeline import (
    ReconConfig,
    default_config_path,
    fit_matrix,
    images_from_series,
    load_recon_config,
    method_settings,
    preprocess,
    reconstruct,
    reconstruct_file,
    reconstruct_stream,
)
from mrprior.recon.problem import ReconProblem, ReconResult, register_method
from tests.fixtures import (  # noqa: F401
    GEOMETRY,
    read_csm,
    read_phantom,
    rewrite_raw,
    set_geometry,
    shepp_logan,
)

REPO = Path(__file__).resolve().parents[1]


# -- a calibration-free test method that returns extras -------------------------------------
@register_method("test-rss-extras", needs_csm=False)
def _rss_extras(problem: ReconProblem, settings: dict) -> ReconResult:
    assert problem.csm is None
    coil = ifftc(problem.kspace * problem.mask)
    rss = torch.sqrt((coil.abs() ** 2).sum(0))
    return ReconResult(
        image=rss.to(torch.complex64),
        extras={"uncertainty": 0.5 * rss, "csm": coil / rss.clamp_min(1e-12)},
        info={"seen_settings": sorted(settings), "lines": int(problem.mask.any(1).sum())},
    )


@register_method("prior-test-echo", needs_csm=False)
def _echo(problem: ReconProblem, settings: dict) -> ReconResult:
    return ReconResult(image=problem.kspace[0], info={"settings": dict(settings)})


def _cpu(method: str = "sense", **kw) -> ReconConfig:
    return load_recon_config(overrides={"method": method, "device": "cpu", **kw})


# -- config ---------------------------------------------------------------------------------
def test_bundled_config_is_the_repo_config():
    assert default_config_path().is_file()
    assert (REPO / "configs" / "recon.yaml").read_text() == default_config_path().read_text()
    cfg = load_recon_config()
    assert cfg == ReconConfig()  # YAML defaults and dataclass defaults agree


def test_config_overrides_and_errors(tmp_path):
    cfg = load_recon_config(
        overrides={"calib_size": 32, "output.dtype": "uint16", "settings.lam": 0.01}
    )
    assert cfg.coil_maps.calib_size == 32
    assert cfg.output.dtype == "uint16"
    assert cfg.settings == {"lam": 0.01}
    assert cfg.calib_as_data == "auto"
    assert load_recon_config(overrides={"calib_as_data": "true"}).calib_as_data is True
    with pytest.raises(ConfigError, match="calib_as_data"):
        load_recon_config(overrides={"calib_as_data": "sometimes"})
    assert method_settings(cfg) == {"lam": 0.01}  # sense takes no seed / prior
    # the prior-* family gets the top-level seed and prior unless the settings set them
    prior_cfg = load_recon_config(
        overrides={"method": "prior-test-echo", "seed": 3, "name": "magn", "settings.x": 1}
    )
    assert method_settings(prior_cfg) == {"x": 1, "seed": 3, "prior": "magn"}
    prior_cfg = load_recon_config(
        overrides={"method": "prior-test-echo", "path": "/p.card", "settings.seed": 5}
    )
    assert method_settings(prior_cfg) == {"seed": 5, "prior": "/p.card"}
    user = tmp_path / "user.yaml"
    user.write_text("method: zerofill\ncoil_maps:\n  crop: 0.5\n")
    cfg = load_recon_config(user)
    assert cfg.method == "zerofill" and cfg.coil_maps.crop == 0.5
    assert cfg.coil_maps.kernel_size == 6  # untouched default
    with pytest.raises(ConfigError, match="unknown setting 'bogus'"):
        load_recon_config(overrides={"bogus": 1})
    with pytest.raises(ConfigError, match=r"unknown method 'nope'.*sense"):
        load_recon_config(overrides={"method": "nope"})
    with pytest.raises(ConfigError, match="extra_series"):
        load_recon_config(overrides={"extra_series": ["magic"]})
    with pytest.raises(ConfigError, match="'fp64' is not one of"):
        load_recon_config(overrides={"output.dtype": "fp64"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("coil_maps:\n  kernal: 5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*coil_maps\.kernal"):
        load_recon_config(bad)


# -- preprocessing --------------------------------------------------------------------------
def _encoding(nx_enc: int, nx: int, ny: int = 32) -> EncodingInfo:
    return EncodingInfo(
        encoded_matrix=(nx_enc, ny, 1),
        encoded_fov=(200.0 * nx_enc / nx, 200.0, 5.0),
        recon_matrix=(nx, ny, 1),
        recon_fov=(200.0, 200.0, 5.0),
        limits={},
        trajectory="cartesian",
    )


def test_prewhitening_gives_unit_covariance():
    rng = np.random.default_rng(0)
    c = 4
    mix = rng.normal(size=(c, c)) + 1j * rng.normal(size=(c, c))
    mix = (mix + 3 * np.eye(c)).astype(np.complex64)

    def correlated(n: int) -> np.ndarray:
        w = (rng.normal(size=(c, n)) + 1j * rng.normal(size=(c, n))) / np.sqrt(2)
        return (mix @ w).astype(np.complex64)

    noise = correlated(20000)
    data = correlated(32 * 64).reshape(c, 32, 64)
    # noise sampled at half the imaging dwell time -> twice the bandwidth, twice the variance
    ks = KSpace(
        data=data,
        mask=np.ones((32, 64), bool),
        calib=np.zeros((32, 64), bool),
        encoding=_encoding(64, 64),
        reference=ismrmrd.AcquisitionHeader(),
        noise=np.sqrt(2) * noise,
        noise_dwell_us=2.5,
        dwell_us=5.0,
    )
    out = preprocess(ks, _cpu())
    assert out.prewhitened
    flat = out.data.reshape(c, -1)
    cov = flat @ flat.conj().T / flat.shape[1]
    np.testing.assert_allclose(cov, np.eye(c), atol=0.1)
    assert preprocess(out, _cpu()) is out  # idempotent
    off = preprocess(ks, _cpu(prewhiten=False))
    assert not off.prewhitened


def test_oversampling_removal_keeps_mask_and_image(shepp_logan):  # noqa: F811
    raw = shepp_logan(matrix=64, coils=4, acceleration=2, calibration_width=16)
    _, groups = read_raw(raw)
    ks = preprocess(groups[0], _cpu(prewhiten=False))
    assert ks.data.shape == (4, 64, 64) and ks.mask.shape == ks.calib.shape == (64, 64)
    assert ks.oversampling_removed
    assert ks.acceleration == pytest.approx(2.0)
    np.testing.assert_array_equal(ks.mask.any(1), groups[0].mask.any(1))
    np.testing.assert_array_equal(ks.calib.any(1), groups[0].calib.any(1))
    # same coil images as cropping the oversampled ones in image space
    ref = fit_matrix(ifftc(torch.from_numpy(groups[0].data)), 64, 64).numpy()
    np.testing.assert_allclose(ifftc(ks.data), ref, atol=1e-4 * np.abs(ref).max())


def test_fit_matrix_crop_and_pad():
    x = torch.zeros(6, 8, dtype=torch.complex64)
    x[3, 4] = 1
    assert fit_matrix(x, 4, 4)[2, 2] == 1
    big = fit_matrix(torch.ones(4, 4, dtype=torch.complex64), 8, 4)
    assert big.shape == (8, 4)
    # sinc interpolation of a constant image keeps its value
    np.testing.assert_allclose(big.abs().numpy(), 1.0, rtol=1e-5)


# -- end to end -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_r2(shepp_logan):  # noqa: F811
    # noise scan, 16 calibration lines, R = 2, 2 x 2 = 4 repetitions, 2x readout oversampling
    return shepp_logan(matrix=64, coils=4, acceleration=2, calibration_width=16, repetitions=2)


def _true_map_sense(ks: KSpace, csm_true: np.ndarray) -> np.ndarray:
    """CG-SENSE of the same (whitened, oversampling-removed) data with the true coil maps."""
    from mrprior.recon.problem import get_method

    csm = torch.from_numpy(csm_true.astype(np.complex64))
    csm = csm / torch.sqrt((csm.abs() ** 2).sum(0)).clamp_min(1e-12)
    data, mask = torch.from_numpy(ks.data), torch.from_numpy(ks.mask)
    return get_method("sense")(ReconProblem(data * mask, mask, csm), {}).image.numpy()


@pytest.mark.ismrmrd_tools
def test_sense_quality_against_phantom(shepp_logan):  # noqa: F811
    # 8 coils, noise 0.01, R = 2 with 16 interleaved calibration lines, noise scan
    raw = shepp_logan(
        matrix=64, coils=8, acceleration=2, calibration_width=16, repetitions=2, noise_level=0.01
    )
    _, groups = read_raw(raw)
    phantom = read_phantom(raw)
    cfg = _cpu("sense")
    series = reconstruct(groups[0], cfg)
    assert series.image.shape == phantom.shape == (64, 64)
    assert series.image.dtype == np.complex64
    assert series.info["prewhitened"] and series.info["acceleration"] == pytest.approx(2.0)
    assert series.extras["csm"].shape == (8, 64, 64)
    zf = reconstruct(groups[0], dataclasses.replace(cfg, method="zerofill"))
    true_maps = _true_map_sense(preprocess(groups[0], cfg), read_csm(raw))
    e_sense, e_zf, e_true = (nrmse(x, phantom) for x in (series.image, zf.image, true_maps))
    # measured: sense 0.079 (PSNR 34.3 dB), true maps 0.075, zerofill 0.47
    assert e_sense < 0.10
    assert e_sense < 1.2 * e_true  # ESPIRiT maps cost little against the true maps
    assert e_zf > 3 * e_sense
    # the other repetitions (shifted sampling pattern) reconstruct as well
    for ks in groups[1:]:
        assert nrmse(reconstruct(ks, cfg).image, phantom) < 0.10


@pytest.mark.ismrmrd_tools
def test_method_without_coil_maps_and_extras(raw_r2):
    _, groups = read_raw(raw_r2)
    cfg = _cpu("test-rss-extras", **{"settings.alpha": 2})
    series = reconstruct(groups[1], cfg)
    assert series.image.shape == (64, 64)
    assert series.extras["uncertainty"].shape == (64, 64)
    assert series.extras["uncertainty"].dtype == np.float32
    assert series.extras["csm"].shape == (4, 64, 64)
    assert series.info["seen_settings"] == ["alpha"]
    # calib_as_data "auto": a method without coil maps also gets the 8 calibration-only lines
    assert series.info["lines"] == 32 + 8
    no_calib = reconstruct(groups[1], dataclasses.replace(cfg, calib_as_data=False))
    assert no_calib.info["lines"] == 32
    cfg = dataclasses.replace(
        cfg, output=dataclasses.replace(cfg.output, extra_series=["uncertainty"])
    )
    mag, unc = images_from_series(series, cfg)
    assert unc.image_series_index == mag.image_series_index + 2
    np.testing.assert_allclose(unc.data[0, 0], 0.5 * mag.data[0, 0], rtol=1e-5)


@pytest.mark.ismrmrd_tools
def test_reconstruct_file_geometry_and_indices(raw_r2, tmp_path):
    raw = rewrite_raw(raw_r2, tmp_path / "geo.h5", edit_rows=set_geometry)
    images = reconstruct_file(raw, _cpu("zerofill"), progress=False)
    assert len(images) == 4
    assert [im.repetition for im in images] == [0, 1, 2, 3]
    assert [im.image_index for im in images] == [1, 2, 3, 4]
    for im in images:
        assert im.image_series_index == 1
        assert im.data.dtype == np.float32 and im.matrix_size == (64, 64, 1)
        for name, value in GEOMETRY.items():
            np.testing.assert_allclose(getattr(im, name), value, atol=1e-6)
        np.testing.assert_allclose(im.field_of_view, (300.0, 300.0, 6.0))
        assert im.meta["ImageProcessingHistory"] == ["MRPRIOR", "ZEROFILL"]


@pytest.mark.ismrmrd_tools
def test_recon_matrix_smaller_than_encoded_in_y(raw_r2, tmp_path):
    """Phase oversampling: encoded y 64, recon y 48 -> images cropped to 48 rows."""

    def recon_y48(xml: str) -> str:
        head, tail = xml.split("<reconSpace>")
        tail = tail.replace("<y>64</y>", "<y>48</y>", 1).replace(
            "<y>300.000000</y>", "<y>225.000000</y>", 1
        )
        return head + "<reconSpace>" + tail

    raw = rewrite_raw(raw_r2, tmp_path / "y48.h5", edit_xml=recon_y48)
    full = reconstruct_file(raw_r2, _cpu("zerofill"), progress=False)[0]
    crop = reconstruct_file(raw, _cpu("zerofill"), progress=False)[0]
    assert crop.matrix_size == (64, 48, 1)
    np.testing.assert_allclose(crop.field_of_view, (300.0, 225.0, 6.0))
    np.testing.assert_allclose(crop.data[0, 0], full.data[0, 0, 8:56], rtol=1e-5, atol=1e-6)


@pytest.mark.ismrmrd_tools
def test_stream_equals_file(raw_r2):
    from mrprior.io.raw import iter_acquisitions, read_header

    cfg = _cpu("zerofill")
    by_file = reconstruct_file(raw_r2, cfg, progress=False)
    by_stream = [
        im
        for batch in reconstruct_stream(read_header(raw_r2), iter_acquisitions(raw_r2), cfg)
        for im in batch
    ]
    assert len(by_stream) == len(by_file)
    for a, b in zip(by_file, by_stream, strict=True):
        assert a.getHead() == b.getHead()
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.ismrmrd_tools
def test_no_calibration_region_names_file_and_group(shepp_logan):  # noqa: F811
    raw = shepp_logan(matrix=32, coils=4, acceleration=2, calibration_width=0)
    with pytest.raises(DataError, match=r"sl_.*\.h5: group \(slice 0\): .*(centre|calibrat)"):
        reconstruct_file(raw, _cpu("sense"), progress=False)
