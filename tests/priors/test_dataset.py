"""Training samples: phase augmentation keeps |x|, streams are deterministic and rank-disjoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrprior.errors import DataError
from mrprior.priors.dataset import AugmentConfig, BatchStream, SliceStore, augment


def test_store_split_sizes(tiny_dataset: Path) -> None:
    train, val, both = (SliceStore(tiny_dataset, s) for s in ("train", "val", "all"))
    assert len(train) + len(val) == len(both) and len(val) > 0
    img = train.image(0)
    assert img.dtype == np.float32 and img.shape == (32, 32) and np.isclose(img.max(), 1.0)
    assert set(np.unique(val.volume)).isdisjoint(np.unique(train.volume))


def test_synthetic_phase_keeps_magnitude(tiny_dataset: Path) -> None:
    store = SliceStore(tiny_dataset, "train")
    cfg = AugmentConfig(crop=0, flips=False, intensity_min=1.0)
    img = store.image(3)
    x = augment(img, np.random.default_rng(0), cfg, channels=2)
    mag = np.hypot(x[0], x[1])
    np.testing.assert_allclose(mag, img, rtol=3e-7, atol=1e-7)
    phase = np.angle(x[0] + 1j * x[1])
    fg = img > 0.2
    # smooth: neighbouring foreground pixels differ little (wrapped difference) ...
    d = np.angle(np.exp(1j * (phase[:, 1:] - phase[:, :-1])))[fg[:, 1:] & fg[:, :-1]]
    assert np.abs(d).mean() < 0.3
    # ... yet not constant, and a different draw gives a different phase
    assert np.abs(np.exp(1j * phase[fg]) - np.exp(1j * phase[fg]).mean()).mean() > 0.05
    x2 = augment(img, np.random.default_rng(1), cfg, channels=2)
    assert np.abs(x2 - x).max() > 0.1


def test_augment_geometry_and_channels(tiny_dataset: Path) -> None:
    store = SliceStore(tiny_dataset, "train")
    img = store.image(0)
    cfg = AugmentConfig(crop=16, flips=True, intensity_min=0.5)
    x = augment(img, np.random.default_rng(5), cfg, channels=1)
    assert x.shape == (1, 16, 16) and x.dtype == np.float32 and x.min() >= 0
    assert x.max() <= 1.0 + 1e-6
    none = augment(img, np.random.default_rng(5), AugmentConfig(crop=16, phase="none"), 2)
    assert np.all(none[1] == 0)
    with pytest.raises(DataError):
        augment(img, np.random.default_rng(0), AugmentConfig(crop=64), 2)


def test_stream_deterministic_and_rank_disjoint(tiny_dataset: Path) -> None:
    store = SliceStore(tiny_dataset, "train")
    cfg = AugmentConfig(crop=16)
    a = BatchStream(store, cfg, 2, batch_size=3, seed=7)
    b = BatchStream(store, cfg, 2, batch_size=3, seed=7)
    np.testing.assert_array_equal(a.batch(5).numpy(), b.batch(5).numpy())
    assert not np.array_equal(a.batch(5).numpy(), a.batch(6).numpy())
    # two ranks cover one epoch's permutation without overlap
    n = len(store)
    r0 = BatchStream(store, cfg, 2, batch_size=1, seed=7, rank=0, world=2)
    r1 = BatchStream(store, cfg, 2, batch_size=1, seed=7, rank=1, world=2)
    idx0 = {int(r0._perm(0)[(k * 2 + 0) % n]) for k in range(n // 2)}
    idx1 = {int(r1._perm(0)[(k * 2 + 1) % n]) for k in range(n // 2)}
    assert idx0.isdisjoint(idx1) and len(idx0 | idx1) == 2 * (n // 2)


def test_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="mrprior prepare"):
        SliceStore(tmp_path / "nothing")
