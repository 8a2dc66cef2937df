"""Langevin phase: exact magnitude, seeded, varied phase; the dataset option writes complex images."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from mrprior.priors.dataset import SliceStore
from mrprior.priors.langevin import add_langevin_phase, langevin_phase
from mrprior.priors.network import NetworkPrior
from mrprior.priors.unet import EDMDenoiser, UNetConfig


class SmoothPhasePrior:
    """An analytic 'complex prior' whose denoiser smooths the image (a low-pass complex field).

    Stands in for a trained network: Langevin only needs ``score`` (and ``channels``).
    """

    channels = 2
    sigma_min = 0.01
    sigma_max = 1.0
    size_multiple = 1
    device = torch.device("cpu")

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        k = torch.ones(1, 1, 5, 5) / 25
        xr = torch.stack([x.real, x.imag], 1).reshape(-1, 1, *x.shape[-2:])
        sm = torch.nn.functional.conv2d(xr, k, padding=2).reshape(x.shape[0], 2, *x.shape[-2:])
        return torch.complex(sm[:, 0], sm[:, 1])

    def score(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return (self.denoise(x, sigma) - x) / sigma**2

    def to(self, device: str) -> SmoothPhasePrior:
        return self


def test_magnitude_exact_and_seeded() -> None:
    mag = torch.rand(2, 24, 20) * 3
    prior = SmoothPhasePrior()
    z = langevin_phase(mag, prior, steps_per_sigma=2, seed=1)
    assert z.dtype == torch.complex64 and z.shape == mag.shape
    torch.testing.assert_close(z.abs(), mag, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(langevin_phase(mag, prior, steps_per_sigma=2, seed=1), z)
    z2 = langevin_phase(mag, prior, steps_per_sigma=2, seed=2)
    assert (torch.angle(z2) - torch.angle(z)).abs().max() > 0.1


def test_phase_from_smoothing_prior_is_smooth() -> None:
    mag = torch.ones(1, 32, 32)
    z = langevin_phase(mag, SmoothPhasePrior(), steps_per_sigma=3, seed=0)
    u = z / z.abs()
    neighbour = (u[:, :, 1:] * u[:, :, :-1].conj()).angle().abs().mean()
    rough = langevin_phase(mag, SmoothPhasePrior(), sigmas=[0.5], steps_per_sigma=1, seed=0)
    ur = rough / rough.abs()
    assert neighbour < 0.5 * (ur[:, :, 1:] * ur[:, :, :-1].conj()).angle().abs().mean()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        langevin_phase(torch.ones(4, 4), SmoothPhasePrior())
    with pytest.raises(ValueError):
        langevin_phase(torch.ones(1, 4, 4), SmoothPhasePrior(), sigmas=[0.1, 0.5])
    mag_prior = NetworkPrior(EDMDenoiser(UNetConfig(in_channels=1, channels=[4, 8])), 0.01, 1)
    with pytest.raises(ValueError, match="complex"):
        langevin_phase(torch.ones(1, 4, 4), mag_prior)


def test_dataset_gets_complex_draws(tiny_dataset: Path, tmp_path: Path) -> None:
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds)
    before = SliceStore(ds, "all")
    n = add_langevin_phase(
        ds, SmoothPhasePrior(), draws=2, steps_per_sigma=1, sigmas=[0.5, 0.1], progress=False
    )
    assert n == 2 * len(before)
    after = SliceStore(ds, "all")
    assert after.kind == "complex" and len(after) == n
    for i in (0, len(before) + 3):
        np.testing.assert_allclose(np.abs(after.image(i)), before.image(i % len(before)), atol=2e-5)
    with h5py.File(ds / "slices.h5") as f:
        split = f["split"][:]
    assert (split[: len(before)] == split[len(before) :]).all()
    man = yaml.safe_load((ds / "manifest.yaml").read_text())
    assert man["kind"] == "complex" and man["phase"]["draws"] == 2
    assert SliceStore(ds, "val").kind == "complex"


def test_training_on_stored_complex_images(tiny_dataset: Path, tmp_path: Path) -> None:
    import shutil

    from mrprior.priors.dataset import AugmentConfig
    from mrprior.priors.training import train

    from .conftest import tiny_config

    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds)
    add_langevin_phase(ds, SmoothPhasePrior(), steps_per_sigma=1, sigmas=[0.3], progress=False)
    cfg = tiny_config(
        ds, tmp_path / "run", max_steps=2, augment=AugmentConfig(crop=16, phase="stored")
    )
    assert train(cfg)["step"] == 2


def test_prepare_cli_with_langevin_phase(tiny_dataset: Path, tmp_path: Path) -> None:
    from mrprior.cli import main
    from mrprior.priors.cards import export_prior
    from mrprior.priors.training import train

    from .conftest import phantom_volume, tiny_config, write_nifti

    train(tiny_config(tiny_dataset, tmp_path / "run", max_steps=2))
    card = export_prior(tmp_path / "run", tmp_path / "w", name="tinyc", validate=False)
    src = write_nifti(tmp_path / "v.nii.gz", phantom_volume(5))
    args = [
        "prepare",
        str(src),
        "-o",
        str(tmp_path / "ds"),
        "--size",
        "16",
        "--axis",
        "0",
        "--val-fraction",
        "0",
        "--phase",
        "langevin",
        "--phase-prior",
        str(card),
        "--draws",
        "2",
        "--langevin-steps",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(args) == 0
    store = SliceStore(tmp_path / "ds", "all")
    man = yaml.safe_load((tmp_path / "ds" / "manifest.yaml").read_text())
    assert store.kind == "complex" and man["phase"]["prior"] == "tinyc"
    assert len(store) == 2 * 10 - 2 * man["volumes"][0]["slices_dropped"]
    img = store.image(0)
    np.testing.assert_allclose(np.abs(img).max(), 1.0, atol=1e-5)
    assert "--phase langevin" in man["command"]
