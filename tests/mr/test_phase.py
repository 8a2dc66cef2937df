"""Synthetic phase maps: deterministic, smooth, non-constant; applying them keeps the magnitude."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrprior.mr.phase import apply_phase, synthetic_phase


def test_shape_dtype_and_determinism() -> None:
    a = synthetic_phase((64, 48), np.random.default_rng(3))
    b = synthetic_phase((64, 48), np.random.default_rng(3))
    c = synthetic_phase((64, 48), np.random.default_rng(4))
    assert a.shape == (64, 48) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


@pytest.mark.parametrize("seed", range(5))
def test_phase_is_smooth_but_not_constant(seed: int) -> None:
    phase = synthetic_phase((128, 128), np.random.default_rng(seed))
    grad = np.concatenate(
        [np.abs(np.diff(phase, axis=0)).ravel(), np.abs(np.diff(phase, axis=1)).ravel()]
    )
    # smooth: small mean pixel-to-pixel change (radians per pixel) ...
    assert grad.mean() < 0.15
    # ... yet non-constant: the map spans a sizeable range after removing its mean
    centred = phase - phase.mean()
    assert centred.std() > 0.05


def test_components_can_be_switched_off() -> None:
    phase = synthetic_phase(
        (32, 32), np.random.default_rng(0), poly_order=0, field_scale=0.0, b0_scale=0.0
    )
    assert np.ptp(phase) == 0.0  # only the global constant remains


def test_apply_phase_keeps_magnitude_numpy_and_torch() -> None:
    rng = np.random.default_rng(1)
    mag = rng.random((40, 40)).astype(np.float32)
    phase = synthetic_phase(mag.shape, rng)
    img = apply_phase(mag, phase)
    assert img.dtype == np.complex64
    np.testing.assert_allclose(np.abs(img), mag, rtol=2e-7, atol=2e-7)
    t = apply_phase(torch.from_numpy(mag), torch.from_numpy(phase))
    assert t.dtype == torch.complex64
    torch.testing.assert_close(t.abs(), torch.from_numpy(mag), rtol=2e-7, atol=2e-7)
    np.testing.assert_allclose(np.angle(img), np.angle(np.exp(1j * phase)), atol=1e-5)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        synthetic_phase((4, 4, 4, 4), np.random.default_rng(0))
    with pytest.raises(ValueError):
        synthetic_phase((4, 4), np.random.default_rng(0), field_scale=-1.0)


def test_3d_phase_smooth_and_seeded() -> None:
    """A 3D phase map: seeded, smooth along every axis (all terms 3D), differs between seeds,
    and its 2D maps are unchanged by the 3D generalization (same draws in the same order)."""
    a = synthetic_phase((24, 40, 36), np.random.default_rng(4))
    assert a.shape == (24, 40, 36) and a.dtype == np.float32
    np.testing.assert_array_equal(a, synthetic_phase((24, 40, 36), np.random.default_rng(4)))
    assert not np.allclose(a, synthetic_phase((24, 40, 36), np.random.default_rng(5)))
    for axis in range(3):
        step = np.abs(np.diff(a, axis=axis))
        assert np.percentile(step, 99) < 0.5, axis
    # varies along z too (not a stack of identical 2D maps)
    assert np.abs(a[0] - a[-1]).mean() > 0.05
