import re
import shutil

import numpy as np
import pytest
import torch

from mrprior.errors import DataError
from mrprior.io import cfl
from mrprior.io.cfl import (
    BartError,
    image_from_bart,
    image_to_bart,
    kspace_from_bart,
    kspace_to_bart,
    readcfl,
    run_bart,
    run_bart_detailed,
    writecfl,
)
from mrprior.mr.fft import fftc


def _arr(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def test_roundtrip_and_exact_layout(tmp_path):
    a = _arr((3, 4, 1, 2))
    writecfl(tmp_path / "a", a)
    assert (tmp_path / "a.hdr").read_text() == "# Dimensions\n3 4 1 2 \n"
    raw = np.fromfile(tmp_path / "a.cfl", dtype="<c8")
    # column-major: dimension 0 varies fastest
    assert raw[0] == a[0, 0, 0, 0] and raw[1] == a[1, 0, 0, 0] and raw[3] == a[0, 1, 0, 0]
    b = readcfl(tmp_path / "a")
    assert b.dtype == np.complex64 and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    # suffixes accepted, real input converted
    writecfl(tmp_path / "r.cfl", np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(readcfl(tmp_path / "r.hdr").real, np.arange(6.0).reshape(2, 3))


def test_header_with_extra_sections(tmp_path):
    (tmp_path / "x.hdr").write_text("# Dimensions\n2 2 1 \n# Command\nphantom\n# Creator\nBART\n")
    np.arange(4, dtype="<c8").tofile(tmp_path / "x.cfl")
    x = readcfl(tmp_path / "x")
    assert x.shape == (2, 2, 1) and x[1, 0, 0] == 1 and x[0, 1, 0] == 2


def test_errors_missing_truncated_mismatched(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        readcfl(tmp_path / "nope")
    writecfl(tmp_path / "a", _arr((4, 4)))
    (tmp_path / "a.cfl").write_bytes((tmp_path / "a.cfl").read_bytes()[:-8])
    with pytest.raises(DataError, match="truncated"):
        readcfl(tmp_path / "a")
    writecfl(tmp_path / "b", _arr((4, 4)))
    (tmp_path / "b.hdr").write_text("# Dimensions\n2 2 \n")
    with pytest.raises(DataError, match="larger than its header"):
        readcfl(tmp_path / "b")
    (tmp_path / "c.hdr").write_text("hello\n")
    with pytest.raises(DataError, match="Dimensions"):
        readcfl(tmp_path / "c")
    (tmp_path / "d.hdr").write_text("# Dimensions\n2 x\n")
    with pytest.raises(DataError, match="bad dimensions"):
        readcfl(tmp_path / "d")
    writecfl(tmp_path / "e", _arr((2,)))
    (tmp_path / "e.cfl").unlink()
    with pytest.raises(DataError, match="does not exist"):
        readcfl(tmp_path / "e")


def test_axis_mapping_roundtrip():
    k = _arr((3, 5, 7))
    b = kspace_to_bart(k)
    assert b.shape == (7, 5, 1, 3)
    assert b[6, 4, 0, 2] == k[2, 4, 6]  # our kx = BART dim 0, ky = dim 1
    np.testing.assert_array_equal(kspace_from_bart(b), k)
    full = np.asfortranarray(b.reshape(7, 5, 1, 3, 1, 1))
    np.testing.assert_array_equal(kspace_from_bart(full), k)
    im = _arr((5, 7))
    np.testing.assert_array_equal(image_from_bart(image_to_bart(im)[:, :, None]), im)
    with pytest.raises(DataError):
        kspace_to_bart(im)


def test_run_bart_missing_executable(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert not cfl.bart_available()
    with pytest.raises(BartError, match="not on PATH"):
        run_bart(["version"])


def test_run_bart_rejects_paths():
    with pytest.raises(ValueError, match="plain name"):
        run_bart(["scale", "2", "a", "b"], inputs={"../a": _arr((2,))}, outputs=["b"])


@pytest.mark.bart
def test_run_bart_roundtrip_and_errors(tmp_path):
    a = _arr((6, 4, 1, 2))
    out = run_bart(["scale", "2", "a", "b"], inputs={"a": a}, outputs=["b"], workdir=tmp_path)
    assert (tmp_path / "b.cfl").exists()
    np.testing.assert_allclose(out["b"].reshape(a.shape, order="F"), 2 * a, rtol=1e-6)
    with pytest.raises(BartError, match=r"(?s)failed with exit code.*\S"):
        run_bart(["scale", "2", "missing", "b"], outputs=["b"])
    with pytest.raises(BartError, match="did not write output"):
        run_bart(["scale", "2", "a", "b"], inputs={"a": a}, outputs=["c"])
    r = run_bart_detailed(["version"])
    assert re.search(r"\d+\.\d+", r.stdout) and r.wall_s > 0


@pytest.mark.bart
def test_bart_fft_matches_fftc_in_our_orientation():
    """BART's centered unitary FFT of [kx, ky] equals our fftc of [ky, kx] after the mapping."""
    im = _arr((16, 12))  # [ky, kx], deliberately non-square
    out = run_bart(["fft", "-u", "3", "i", "k"], inputs={"i": image_to_bart(im)}, outputs=["k"])
    ours = fftc(torch.from_numpy(im)).numpy()
    np.testing.assert_allclose(image_from_bart(out["k"]), ours, rtol=1e-4, atol=1e-5)


@pytest.mark.bart
def test_phantom_kspace_orientation():
    """ifftc of BART's analytic phantom k-space looks like BART's image phantom."""
    k = kspace_from_bart(run_bart(["phantom", "-x", "64", "-k", "k"], outputs=["k"])["k"])
    img = image_from_bart(run_bart(["phantom", "-x", "64", "i"], outputs=["i"])["i"])
    rec = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k[0]), norm="ortho")))
    corr = np.corrcoef(rec.ravel(), np.abs(img).ravel())[0, 1]
    corr_t = np.corrcoef(rec.T.ravel(), np.abs(img).ravel())[0, 1]
    assert corr > 0.9 and corr > corr_t


def test_axis_mapping_3d_roundtrip():
    k = _arr((3, 4, 5, 7))
    b = kspace_to_bart(k)
    assert b.shape == (7, 5, 4, 3)
    assert b[6, 4, 3, 2] == k[2, 3, 4, 6]  # BART [x, y, z, C]
    np.testing.assert_array_equal(kspace_from_bart(b, ndim=3), k)
    with pytest.raises(DataError, match=r"\[kx, ky, 1, C\]"):
        kspace_from_bart(b)  # a volume is not a 2D slice
    vol = _arr((4, 5, 7))
    np.testing.assert_array_equal(image_from_bart(image_to_bart(vol)[..., None], ndim=3), vol)
