"""``l1`` on a 3D raw volume through the pipeline: the method gets the whole volume at once
(background planes left out) and solves it with 3D wavelets over the grid of readout planes,
the same as on every plane of the volume. (``lam: auto`` on a volume through the pipeline:
tests/test_pipeline_3d.py; the 3D cross-validation and ``volume_wavelet: false``:
tests/recon/test_l1_volume.py.)"""

from __future__ import annotations

import pytest
import torch

from mrprior.io.raw import read_raw
from mrprior.pipeline import (
    coil_maps,
    load_recon_config,
    method_settings,
    plane_stack,
    preprocess,
    reconstruct,
    use_calib_as_data,
)
from mrprior.recon.problem import ReconProblem, ReconResult, get_method, register_method
from tests.io.raw3d import write_raw_3d

SHAPE = (16, 24, 20)  # nz, ny, nx
_CALLS: list[tuple[ReconProblem, ReconResult]] = []


@register_method("test-l1-volume-capture", needs_csm=True, batched=True, whole_volume=True)
def _capture(problem: ReconProblem, settings: dict) -> ReconResult:
    """``l1``, recording the problem and the result."""
    result = get_method("l1")(problem, settings)
    _CALLS.append((problem, result))
    return result


def _cfg(method: str, **kw: object) -> object:
    # maps over the recon FOV: their tight support leaves background planes out
    over = {"coil_maps.encoded_fov": False, "settings.lam": 0.01}
    return load_recon_config(
        overrides={
            "method": method,
            "device": "cpu",
            "kernel_size": 5,
            "calib_as_data": True,
            **over,
            **kw,
        }
    )


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory):
    return write_raw_3d(
        tmp_path_factory.mktemp("l1vol") / "cal.h5", shape=SHAPE, coils=6, calib=(12, 12)
    )


def test_l1_volume_through_the_pipeline_is_the_whole_volume_solve(raw):
    _, groups = read_raw(raw.path)
    _CALLS.clear()
    series = reconstruct(groups[0], _cfg("test-l1-volume-capture", planes_per_batch=4))
    assert len(_CALLS) == 1  # one call with every plane, whatever planes_per_batch says
    (problem, result), n = _CALLS[0], SHAPE[2]
    assert problem.volume is not None and problem.volume.shape == (n,)
    assert 0 < int(problem.volume.sum()) < n  # background planes left out
    assert series.info["planes_solved"] == int(problem.volume.sum())
    # the same volume with every plane (the background ones: zero maps, no data term)
    cfg = _cfg("l1")
    ks = preprocess(groups[0], cfg)
    maps = coil_maps(ks, cfg, torch.device("cpu"))
    stack = plane_stack(ks, maps, use_calib_as_data(cfg, ks), copy=True)
    kdata, kmaps = stack.planes(0, n, torch.device("cpu"))
    mask = torch.as_tensor(stack.mask)
    every = ReconProblem(
        kdata, mask, kmaps, data_scale=stack.data_scale, volume=torch.ones(n, dtype=torch.bool)
    )
    whole = get_method("l1")(every, method_settings(cfg))
    active = problem.volume.cpu()
    peak = float(whole.image.abs().max())
    torch.testing.assert_close(result.image, whole.image[active], rtol=0, atol=2e-5 * peak)
    assert result.info["scale"] == pytest.approx(stack.data_scale)
