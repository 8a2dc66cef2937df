"""The published evaluation (``mrprior bench``) end to end on a tiny configuration."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from mrprior.cli import main
from mrprior.errors import ConfigError, DataError
from mrprior.evaluation import (
    L1_LAMBDAS,
    SAMPLINGS,
    BenchConfig,
    case_size,
    complex_image,
    gains,
    heldout_names,
    lambda_sweep,
    load_image,
    make_case,
    pick_slices,
    quick_config,
    real_slice,
    run_bench,
    slice_axis,
    summarize_gain,
)
from tests.recon.priors_for_tests import GaussianSmoothnessPrior


def test_heldout_images_are_padded_and_normalized():
    names = heldout_names()
    assert len(names) >= 3 and all(n.startswith("mni152") for n in names)
    img = load_image(names[0], 64)
    assert img.shape == (64, 64) and img.dtype == np.float32
    assert img.max() == pytest.approx(1.0) and img.min() >= 0


@pytest.mark.parametrize("sampling", list(SAMPLINGS))
def test_cases_hit_their_acceleration(sampling):
    case = make_case(heldout_names()[0], sampling, size=64)
    target = {"poisson8": 8.0, "lines5": 5.0, "uniform3x2": 6.0, "regular4": 4.0}[sampling]
    assert 0.7 * target < case.acceleration < 1.05 * target
    # ESPIRiT maps are normalized inside their support and the support is not empty
    norm = (case.problem.csm.abs() ** 2).sum(0)
    inside = norm > 0
    assert inside.float().mean() > 0.2
    assert np.allclose(norm[inside].numpy(), 1.0, atol=1e-3)


def test_quick_bench_writes_table_csv_and_figures(tmp_path):
    prior = GaussianSmoothnessPrior()
    cfg = quick_config(
        suite="template",
        samplings=["poisson8"],
        methods=["zerofill", "l1-ours", "pics-complex", "pics-magnitude"],
        prior=prior,
        magnitude_prior="/nonexistent/prior.yaml",
    )
    res = run_bench(cfg, tmp_path, progress=False)
    assert (tmp_path / "results.md").is_file() and (tmp_path / "results.csv").is_file()
    pngs = list(tmp_path.glob("*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 10_000
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["zerofill", "l1-ours", "pics-complex"]
    assert "pics-magnitude" in res.skipped  # its prior does not load: skipped, not a crash
    l1 = next(r for r in rows if r["method"] == "l1-ours")
    assert float(l1["l1_lambda"]) in cfg.l1_lambdas
    psnrs = {r["method"]: float(r["psnr_db"]) for r in rows}
    assert psnrs["l1-ours"] > psnrs["zerofill"]
    md = (tmp_path / "results.md").read_text()
    assert "PSNR" in md and "best PSNR" in md and "Skipped" in md
    gain = summarize_gain(res.rows, "l1-ours", "zerofill", "poisson8")
    assert gain == pytest.approx(psnrs["l1-ours"] - psnrs["zerofill"], abs=0.01)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="nope"):
        BenchConfig(methods=["nope"]).validate()
    with pytest.raises(ConfigError, match="poisson8"):
        BenchConfig(samplings=["radial"]).validate()


def test_cli_quick(tmp_path, capsys):
    rc = main(
        [
            "bench",
            "--quick",
            "--suite",
            "template",
            "--methods",
            "zerofill,cg-sense",
            "--samplings",
            "uniform3x2",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "zero-filled" in out and "CG-SENSE" in out
    assert (tmp_path / "results.csv").is_file()
    assert len(list(tmp_path.glob("*.png"))) == 1


def test_cli_rejects_unknown_method(tmp_path, capsys):
    rc = main(["bench", "--quick", "--methods", "magic", "--out", str(tmp_path)])
    assert rc == 1
    assert "magic" in capsys.readouterr().err


def test_phase_models():
    img = load_image(heldout_names()[0], 64)
    obj = img > 0.2
    phases = {}
    for name in ("synthetic", "strong", "none"):
        z = complex_image(img, name, seed=3)
        assert z.dtype == np.complex64
        np.testing.assert_allclose(np.abs(z), img, rtol=1e-5, atol=1e-6)  # magnitude kept
        phases[name] = np.angle(z)[obj]
    assert np.all(phases["none"] == 0)
    # "strong" is beyond the training phase model: larger local phase variation
    grad = {k: np.abs(np.diff(np.unwrap(v))).mean() for k, v in phases.items()}
    assert grad["strong"] > grad["synthetic"] > 0
    case = make_case(heldout_names()[0], "poisson8", size=64, phase="none")
    assert float(np.abs(np.angle(case.truth.numpy()))[img > 0.2].max()) < 1e-6
    with pytest.raises(ConfigError, match="phase model"):
        complex_image(img, "random", seed=0)


# -- real held-out suite ----------------------------------------------------------------------
def _fake_volume(volume):
    """A stand-in for a fetched held-out scan: template slices stacked along a thick axis."""
    planes = [load_image(n, 72) for n in heldout_names()[:3]]
    vol = np.stack([np.zeros_like(planes[0]), *planes, np.zeros_like(planes[0])], axis=-1)
    return vol.astype(np.float32), (0.9, 0.9, 5.0)


def test_slice_picking_is_reproducible_and_inside_the_object():
    vol, spacing = _fake_volume(None)
    assert slice_axis(vol.shape, spacing) == 2
    assert slice_axis((20, 256, 256), (1.0, 1.0, 1.0)) == 0
    picks = pick_slices(vol, spacing, (0.0, 0.5, 1.0))
    assert [i for i, _ in picks] == [1, 2, 3]  # the empty end slices do not count
    assert all(p.shape == (72, 72) for _, p in picks)
    assert case_size((45, 120), 256) == 120 and case_size((512, 512), 256) == 256
    img = real_slice(np.pad(picks[1][1], 3) * 7.0, 64)
    assert img.shape == (64, 64) and img.max() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="positions"):
        pick_slices(vol, spacing, (1.5,))


def test_real_suite_tables(tmp_path, monkeypatch):
    import mrprior.evaluation as ev

    monkeypatch.setattr(ev, "eval_volume_array", _fake_volume)
    cfg = quick_config(
        volumes=["tumor2-t1", "kidney01-t2"],
        samplings=["poisson8"],
        methods=["zerofill", "l1-ours", "l1-auto", "pics-complex"],
        prior=GaussianSmoothnessPrior(),
    )
    res = run_bench(cfg, tmp_path, progress=False)
    assert {r.suite for r in res.rows} == {"real"}
    assert {r.anatomy for r in res.rows} == {"brain", "abdomen"}
    assert len(list(tmp_path.glob("real_*.png"))) == 2
    md = (tmp_path / "results.md").read_text()
    assert "Real held-out scans" in md and "Template table" not in md
    assert "| brain / head | 1 |" in md and "| non-brain | 1 |" in md
    by = {(r.image.split("_")[0], r.method): r for r in res.rows}
    for vol in ("tumor2-t1", "kidney01-t2"):
        assert by[(vol, "l1-ours")].psnr > by[(vol, "zerofill")].psnr
        assert by[(vol, "l1-auto")].lam is not None and by[(vol, "l1-auto")].lam > 0
    g = gains(res.rows, "l1-ours", "zerofill")
    assert len(g) == 2 and all(v > 0 for v in g)


def test_real_suite_needs_the_fetched_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MRPRIOR_DATA", str(tmp_path / "empty-cache"))
    with pytest.raises(DataError, match="mrprior data fetch --role eval"):
        run_bench(quick_config(methods=["zerofill"]), tmp_path / "out", progress=False)


def test_lambda_sweep_walks_to_the_peak():
    calls = []

    def score(lam):
        calls.append(lam)
        return -((np.log10(lam) + 2.2) ** 2)

    best, scores = lambda_sweep(score, L1_LAMBDAS, refine=True)
    assert best == pytest.approx(np.sqrt(1e-2 * 3e-3))  # the midpoint of 0.003 and 0.01
    assert len(calls) < len(L1_LAMBDAS) + 2  # a walk, not the whole grid
    assert set(calls) == set(scores)
