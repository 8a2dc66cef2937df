"""Augmentation for few subjects: deterministic with a seed, shapes kept, sane ranges."""

from __future__ import annotations

import numpy as np
import pytest

from mrprior.errors import ConfigError
from mrprior.priors.augment import (
    FewSubjectsConfig,
    augment_slice,
    lower_resolution,
    remap_contrast,
    sample_geometry,
)
from mrprior.priors.dataset import AugmentConfig, augment


def _slice(n: int = 64, seed: int = 0) -> np.ndarray:
    """A disc 'head' with a brighter inner disc and texture; background 0; max 1."""
    y, x = np.mgrid[:n, :n] / n - 0.5
    r = np.hypot(y, x)
    img = (r < 0.4) * (0.5 + 0.3 * np.sin(20 * x) ** 2) + (r < 0.15) * 0.2
    img = img + (r < 0.4) * 0.05 * np.random.default_rng(seed).random((n, n))
    return (img / img.max()).astype(np.float32)


ALL_ON = FewSubjectsConfig(
    enabled=True, p_affine=1, p_elastic=1, p_gamma=1, p_bias=1, p_invert=1, p_resolution=1
)


@pytest.mark.parametrize("cfg", [FewSubjectsConfig(enabled=True), ALL_ON])
def test_deterministic_shapes_and_ranges(cfg: FewSubjectsConfig) -> None:
    img = _slice()
    outs = [augment_slice(img, 32, np.random.default_rng([7, q]), cfg) for q in range(20)]
    again = [augment_slice(img, 32, np.random.default_rng([7, q]), cfg) for q in range(20)]
    for a, b in zip(outs, again, strict=True):
        assert a.shape == (32, 32) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
        assert np.isfinite(a).all() and a.min() >= 0 and a.max() == pytest.approx(1.0)
    # different seeds give different images
    assert len({o.tobytes() for o in outs}) == len(outs)


def test_geometry_identity_and_zoom() -> None:
    img = _slice(48)
    ident = FewSubjectsConfig(enabled=True, zoom=[1, 1], p_affine=0, p_elastic=0)
    out = sample_geometry(img, 48, np.random.default_rng(0), ident)
    np.testing.assert_allclose(out, img, atol=1e-5)  # no zoom, no warp: the slice itself
    wide = FewSubjectsConfig(enabled=True, zoom=[2, 2], p_affine=0, p_elastic=0)
    small = sample_geometry(_slice(96), 48, np.random.default_rng(0), wide)
    # a 2× larger field of view shows the whole object at half size
    assert abs((small > 0.3).mean() - (_slice(96) > 0.3).mean()) < 0.05


def test_complex_geometry_keeps_phase() -> None:
    img = _slice(48) * np.exp(1j * 0.7).astype(np.complex64)
    cfg = FewSubjectsConfig(enabled=True, p_resolution=0)
    out = augment_slice(img, 32, np.random.default_rng(3), cfg)
    assert out.dtype == np.complex64 and out.shape == (32, 32)
    big = np.abs(out) > 0.2
    np.testing.assert_allclose(np.angle(out[big]), 0.7, atol=1e-4)


def test_contrast_inversion_makes_background_dark_and_tissue_flip() -> None:
    img = _slice(64)
    cfg = FewSubjectsConfig(enabled=True, p_invert=1, p_gamma=0, p_bias=0)
    out = remap_contrast(img, np.random.default_rng(0), cfg)
    y, x = np.mgrid[:64, :64] / 64 - 0.5
    r = np.hypot(y, x)
    assert out[r > 0.48].max() < 0.05  # background stays dark
    # the bright inner disc is now darker than the outer ring
    assert out[r < 0.1].mean() < out[(r > 0.2) & (r < 0.3)].mean()
    assert img[r < 0.1].mean() > img[(r > 0.2) & (r < 0.3)].mean()


def test_bias_field_is_smooth_and_bounded() -> None:
    img = np.ones((64, 64), np.float32)
    cfg = FewSubjectsConfig(enabled=True, p_invert=0, p_gamma=0, p_bias=1, bias_strength=0.3)
    out = remap_contrast(img, np.random.default_rng(1), cfg)
    assert out.max() == pytest.approx(1.0) and out.min() > np.exp(-4 * 0.3) / np.exp(4 * 0.3)
    assert np.abs(np.diff(out, axis=0)).max() < 0.1  # smooth: small pixel-to-pixel change


def test_lower_resolution_removes_high_frequencies() -> None:
    img = _slice(64)
    cfg = FewSubjectsConfig(enabled=True, resolution=[0.5, 0.5])
    out = lower_resolution(img, np.random.default_rng(2), cfg)
    k = np.abs(np.fft.fftshift(np.fft.fft2(out)))
    assert out.shape == img.shape
    # magnitude of a band-limited image: energy near the k-space edge is far below the input's
    edge_in = np.abs(np.fft.fftshift(np.fft.fft2(img)))[:, :4].sum()
    edge_out = k[:, :4].sum() + k[:4, :].sum()
    assert edge_out < 0.6 * (edge_in + np.abs(np.fft.fftshift(np.fft.fft2(img)))[:4, :].sum())


def test_dataset_augment_uses_it_and_stays_bounded() -> None:
    img = _slice(64)
    cfg = AugmentConfig(crop=32, few_subjects=FewSubjectsConfig(enabled=True))
    a = augment(img, np.random.default_rng([0, 1, 5]), cfg, channels=2)
    b = augment(img, np.random.default_rng([0, 1, 5]), cfg, channels=2)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 32, 32) and np.hypot(a[0], a[1]).max() <= 1 + 1e-6
    off = augment(img, np.random.default_rng([0, 1, 5]), AugmentConfig(crop=32), channels=2)
    assert not np.array_equal(a, off)


def test_config_validation() -> None:
    from mrprior.config import from_dict

    with pytest.raises(ConfigError, match="p_gamma"):
        from_dict(FewSubjectsConfig, {"p_gamma": 2})
    with pytest.raises(ConfigError, match="zoom"):
        from_dict(FewSubjectsConfig, {"zoom": [2, 1]})
