"""Grayscale PNG / TIFF slices through load_volume."""

from __future__ import annotations

import numpy as np
import pytest

from mrprior.errors import DataError
from mrprior.io.volumes import load_volume


def test_png_and_tiff_slices(tmp_path):
    from PIL import Image

    gray = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "g.png")
    data, spacing = load_volume(tmp_path / "g.png")
    assert data.shape == (1, 6, 8) and spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(data[0], gray)
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 1] = 200
    frames = [Image.fromarray(rgb), Image.fromarray(rgb // 2)]
    frames[0].save(tmp_path / "m.tif", save_all=True, append_images=frames[1:])
    data, _ = load_volume(tmp_path / "m.tif")
    assert data.shape == (2, 5, 7) and data[0, 0, 0] > data[1, 0, 0] > 0
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="unreadable image"):
        load_volume(tmp_path / "bad.png")
