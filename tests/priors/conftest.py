"""Small shared fixtures for the prior tests: a tiny prepared dataset and a tiny training config."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrprior.priors.dataset import AugmentConfig
from mrprior.priors.prepare import PrepareConfig, SourceSpec, prepare_dataset
from mrprior.priors.training import TrainConfig
from mrprior.priors.unet import UNetConfig


def phantom_volume(seed: int, shape: tuple[int, int, int] = (10, 36, 32)) -> np.ndarray:
    """A blob-shaped 'head' with internal structure, zero background."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    cz, cy, cx = (np.asarray(shape) - 1) / 2
    r = ((z - cz) / (0.45 * shape[0])) ** 2 + ((y - cy) / (0.42 * shape[1])) ** 2
    r = r + ((x - cx) / (0.42 * shape[2])) ** 2
    inside = r < 1
    texture = 0.6 + 0.4 * np.sin(x / (2 + seed)) * np.cos(y / 3)
    vol = inside * (texture + 0.1 * rng.random(shape))
    return vol.astype(np.float32)


def write_nifti(path: Path, vol: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three subjects of 10×36×32 voxels, sliced along all axes at 32², subject s2 held out."""
    root = tmp_path_factory.mktemp("tinyds")
    specs = []
    for s in range(3):
        p = write_nifti(root / f"s{s}.nii.gz", phantom_volume(s))
        specs.append(SourceSpec(path=str(p), subject=f"s{s}", licence="test"))
    cfg = PrepareConfig(sources=specs, size=32, val_subjects=["s2"])
    prepare_dataset(cfg, root / "ds", progress=False)
    return root / "ds"


def tiny_config(dataset: Path, out_dir: Path, channels: int = 2, **kw: object) -> TrainConfig:
    """A training job that runs in well under a second per step on one CPU thread."""
    base: dict = dict(
        dataset=str(dataset),
        out_dir=str(out_dir),
        name="tiny",
        model=UNetConfig(
            in_channels=channels,
            channels=[8, 16],
            blocks_per_level=1,
            emb_dim=16,
            fourier_features=4,
        ),
        augment=AugmentConfig(crop=16),
        batch_size=4,
        lr=2e-3,
        warmup_steps=1,
        max_steps=10,
        log_every=5,
        val_every=0,
        val_images=4,
        val_sigmas=[0.1, 0.5],
        threads=1,
        device="cpu",
        ckpt_every_minutes=60.0,
        ckpt_every_steps=1000,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)
