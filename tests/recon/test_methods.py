import pytest
import torch

from mrprior.errors import ConfigError
from mrprior.metrics import psnr
from mrprior.recon.problem import get_method, method_names, method_needs_csm
from tests.recon.test_cg import synthetic_problem


def test_registered_baselines():
    assert {"zerofill", "sense", "l1"} <= set(method_names())
    assert method_needs_csm("zerofill") and method_needs_csm("sense") and method_needs_csm("l1")


def test_methods_run_and_rank():
    prob, img = synthetic_problem(n=48)
    zf = get_method("zerofill")(prob, {})
    se = get_method("sense")(prob, {"lam": 0.0, "max_iterations": 10})
    l1 = get_method("l1")(prob, {"lam": 0.002, "max_iterations": 30, "seed": 1})
    assert zf.image.shape == se.image.shape == l1.image.shape == img.shape
    assert psnr(se.image, img) > psnr(zf.image, img)
    assert psnr(l1.image, img) > psnr(zf.image, img)
    assert l1.info["scale"] > 0 and l1.info["seed"] == 1
    rss = get_method("zerofill")(prob, {"combine": "rss"})
    assert torch.all(rss.image.imag == 0)


def test_unknown_or_bad_settings_name_the_key():
    prob, _ = synthetic_problem(n=16)
    with pytest.raises(ConfigError, match="lamda"):
        get_method("l1")(prob, {"lamda": 0.1})
    with pytest.raises(ConfigError, match="iterations"):
        get_method("sense")(prob, {"iterations": 3})
    with pytest.raises(ConfigError, match="lam"):
        get_method("sense")(prob, {"lam": -1.0})
    with pytest.raises(ConfigError, match="orthogonal"):
        get_method("l1")(prob, {"wavelet": "bior2.2"})
    prob.csm = None
    with pytest.raises(ConfigError, match="coil maps"):
        get_method("l1")(prob, {})
