"""Training data for score priors: prepared slices → augmented (complex) crops, reproducibly.

Every sample is a pure function of ``(seed, epoch-permutation position)``: the slice, crop,
flips/rot90, intensity scale and the synthetic phase draw are all seeded from the sample's global
position in the stream, so a run resumed at step ``k`` sees exactly the batches it would have
seen, and ranks of a distributed run see disjoint slices of one global permutation per epoch
(what ``DistributedSampler`` does) without any sampler state to save.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch

from mrprior.errors import DataError
from mrprior.mr.phase import synthetic_phase
from mrprior.priors.augment import FewSubjectsConfig, augment_slice


@dataclass
class PhaseConfig:
    """Parameters of :func:`mrprior.mr.phase.synthetic_phase` used for augmentation."""

    poly_order: int = 3
    poly_scale: float = 3.141592653589793
    field_scale: float = 0.5
    field_correlation: float = 0.08
    b0_scale: float = 1.0


@dataclass
class AugmentConfig:
    """Random crop / geometry / intensity augmentation."""

    #: crop size (pixels); 0 = whole slice
    crop: int = 128
    flips: bool = True
    #: intensity factor drawn uniformly from [intensity_min, 1] (priors see max|x| ≤ 1)
    intensity_min: float = 0.6
    #: ``synthetic``: a fresh synthetic phase per sample; ``none``: real (phase 0) images;
    #: ``stored``: complex images from the dataset are used as they are
    phase: Literal["synthetic", "none", "stored"] = "synthetic"
    synthetic: PhaseConfig = field(default_factory=PhaseConfig)
    #: multi-scale crops, affine/elastic warps, contrast remapping, resolution changes
    #: (:mod:`mrprior.priors.augment`), replacing the plain crop when enabled
    few_subjects: FewSubjectsConfig = field(default_factory=FewSubjectsConfig)


class SliceStore:
    """The slices of a prepared dataset (``slices.h5``) held in memory, compactly.

    Parameters
    ----------
    path
        dataset directory (or the ``slices.h5`` file).
    split
        ``"train"``, ``"val"`` or ``"all"``.
    """

    def __init__(self, path: str | Path, split: Literal["train", "val", "all"] = "train") -> None:
        p = Path(path)
        if p.is_dir():
            p = p / "slices.h5"
        if not p.exists():
            raise DataError(f"dataset file {p} does not exist (run `mrprior prepare` first)")
        with h5py.File(p, "r") as f:
            sel = np.ones(f["split"].shape[0], bool)
            if split != "all":
                sel = f["split"][:] == (1 if split == "val" else 0)
            idx = np.nonzero(sel)[0]
            if "images_complex" in f:
                self.kind = "complex"
                self.data = f["images_complex"][:][idx]
                self.scale = 1.0
            else:
                self.kind = "magnitude"
                ds = f["images"]
                self.data = ds[:][idx]
                self.scale = float(ds.attrs.get("scale", 1.0))
            self.volume = f["volume"][:][idx]
            self.volumes = json.loads(f.attrs.get("volumes", "[]"))
        self.path = p
        self.split = split

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def image(self, i: int) -> np.ndarray:
        """Slice ``i`` as float32 magnitude ``[S, S]`` or complex64 ``[S, S]``."""
        a = self.data[i]
        if self.kind == "complex":
            return a.astype(np.complex64)
        return a.astype(np.float32) * np.float32(self.scale)


def sample_rng(seed: int, *key: int) -> np.random.Generator:
    """A numpy generator seeded by ``(seed, *key)`` (independent streams per key)."""
    return np.random.default_rng([int(seed), *(int(k) for k in key)])


def augment(
    img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, channels: int
) -> np.ndarray:
    """One augmented training image: real channels ``[channels, crop, crop]`` float32.

    Crop (or, with ``cfg.few_subjects.enabled``, :func:`~mrprior.priors.augment.augment_slice`:
    multi-scale crop, warps, contrast and resolution changes) → flips/rot90 → intensity scale →
    phase (``channels == 2``), with ``|x|`` equal to the scaled, cropped magnitude (the synthetic
    phase multiplies by ``exp(iφ)`` only).
    """
    h, w = img.shape
    c = cfg.crop or min(h, w)
    if c > min(h, w):
        raise DataError(f"crop {c} larger than the slices ({h}×{w})")
    if cfg.few_subjects.enabled:
        x = augment_slice(img, c, rng, cfg.few_subjects)
    else:
        y0 = int(rng.integers(0, h - c + 1))
        x0 = int(rng.integers(0, w - c + 1))
        x = img[y0 : y0 + c, x0 : x0 + c]
    if cfg.flips:
        k = int(rng.integers(0, 4))
        x = np.rot90(x, k)
        if rng.random() < 0.5:
            x = x[:, ::-1]
    scale = float(rng.uniform(cfg.intensity_min, 1.0))
    if np.iscomplexobj(x):
        z = x.astype(np.complex64) * np.float32(scale)
        if channels == 1:
            return np.abs(z)[None].astype(np.float32)
        return np.stack([z.real, z.imag]).astype(np.float32)
    mag = np.ascontiguousarray(x, dtype=np.float32) * np.float32(scale)
    if channels == 1:
        return mag[None]
    if cfg.phase == "none":
        return np.stack([mag, np.zeros_like(mag)])
    p = cfg.synthetic
    ph = synthetic_phase(
        mag.shape,
        rng,
        poly_order=p.poly_order,
        poly_scale=p.poly_scale,
        field_scale=p.field_scale,
        field_correlation=p.field_correlation,
        b0_scale=p.b0_scale,
    )
    return np.stack([mag * np.cos(ph), mag * np.sin(ph)]).astype(np.float32)


class BatchStream:
    """Deterministic batches for step ``k`` of a (possibly distributed) run.

    The global sample position ``q = (k·world + rank)·batch + j`` maps to epoch ``q // N`` and
    to the slice ``perm_epoch[q % N]`` of a per-epoch permutation seeded by ``(seed, epoch)``;
    the augmentation of that sample is seeded by ``(seed, 1, q)``.
    """

    def __init__(
        self,
        store: SliceStore,
        cfg: AugmentConfig,
        channels: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if len(store) == 0:
            raise DataError(f"no {store.split} slices in {store.path}")
        self.store, self.cfg, self.channels = store, cfg, channels
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: sample_rng(self.seed, 0, epoch).permutation(len(self.store))}
        return self._perm_cache[epoch]

    def batch(self, step: int) -> torch.Tensor:
        """Real-channel batch ``[batch, channels, crop, crop]`` for ``step``."""
        n = len(self.store)
        out = []
        for j in range(self.batch_size):
            q = (step * self.world + self.rank) * self.batch_size + j
            idx = int(self._perm(q // n)[q % n])
            rng = sample_rng(self.seed, 1, q)
            out.append(augment(self.store.image(idx), rng, self.cfg, self.channels))
        return torch.from_numpy(np.stack(out))
