"""The demo in a reduced size (what the README's first command runs, smaller): simulated raw
file → gadget launched as Gadgetron does → images, table and figure."""

import math

import h5py
import numpy as np
import pytest

from mrprior.config import from_dict, load_yaml
from mrprior.demo import DemoConfig, default_config_path, run_demo, simulate_scan
from mrprior.errors import ConfigError
from mrprior.io.images import read_images
from mrprior.io.raw import read_raw


def test_demo_quick_end_to_end(tmp_path):
    cfg = load_yaml(DemoConfig, default_config_path(quick=True))
    result = run_demo(tmp_path, cfg, progress=False)
    rows = {r.label: r for r in result.rows}
    assert list(rows) == [r.label for r in cfg.recons]
    assert all(math.isfinite(r.psnr) for r in result.rows)
    # every reconstruction improves on zero-filling
    zf = rows["zero-filled"].psnr
    assert rows["l1-wavelet"].psnr > zf + 1.0
    assert rows["prior (PICS)"].psnr > zf + 1.0
    images = read_images(result.images_path)
    series = sorted({im.image_series_index for im in images})
    # one series per recon, plus the uncertainty series of the sampling recon
    assert len(series) == len(cfg.recons) + 1
    assert all(im.data.dtype == np.float32 for im in images)
    assert result.figure_path.stat().st_size > 10_000
    assert "| prior (PICS) |" in result.table_path.read_text()


def test_demo_raw_file_is_real_ismrmrd(tmp_path):
    cfg = load_yaml(DemoConfig, default_config_path(quick=True))
    data = simulate_scan(cfg, tmp_path)
    header, groups = read_raw(data.raw_path)
    assert len(groups) == 1
    ks = groups[0]
    assert ks.noise is not None and ks.noise.shape[0] == cfg.coils
    assert header.encoding[0].encodedSpace.matrixSize.x == 2 * cfg.size  # readout oversampling
    assert abs(data.acceleration - cfg.acceleration) / cfg.acceleration < 0.05
    with h5py.File(data.raw_path) as f:
        assert "xml" in f["dataset"]


def test_demo_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(DemoConfig, {"acceleraton": 4})
    with pytest.raises(ConfigError, match="acceleration"):
        from_dict(DemoConfig, {"acceleration": 0.5, "recons": [{"label": "a", "config": "x"}]})
