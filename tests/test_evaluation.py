"""The published evaluation (``mrprior bench``) end to end on a tiny configuration."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from mrprior.cli import main
from mrprior.errors import ConfigError
from mrprior.evaluation import (
    SAMPLINGS,
    BenchConfig,
    complex_image,
    heldout_names,
    load_image,
    make_case,
    quick_config,
    run_bench,
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
