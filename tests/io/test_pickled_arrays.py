"""Pickled numpy dicts are read by walking opcodes, never by unpickling."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from mrprior.errors import DataError
from mrprior.io.pickled_arrays import read_pickled_arrays
from mrprior.io.volumes import load_volume, volume_kind


@pytest.mark.parametrize("protocol", [3, 4, 5])
@pytest.mark.parametrize("dtype", ["<f4", ">i2", "<u2", "<f8"])
def test_dict_of_arrays_round_trip(tmp_path, protocol, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.random((5, 6, 3, 2)) * 1000).astype(dtype)
    obj = {
        "array": arr,
        "FA": np.array([2, 5, 10], dtype="<i4"),
        "spacing": [1.5, 1.5, np.float64(4.0)],
        "note": "x",
    }
    path = tmp_path / "v.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    got = read_pickled_arrays(path)
    assert set(got) == set(obj)
    np.testing.assert_array_equal(got["array"], arr)
    assert got["array"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got["FA"], obj["FA"])
    assert [float(v) for v in got["spacing"]] == [1.5, 1.5, 4.0]
    data, spacing = load_volume(path)
    assert volume_kind(path) == "pickle"
    assert data.dtype == np.float32 and data.shape == arr.shape
    np.testing.assert_allclose(data, arr.astype(np.float32))
    assert spacing == (1.5, 1.5, 4.0)


def test_fortran_order_array(tmp_path):
    arr = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    path = tmp_path / "f.pkl"
    path.write_bytes(pickle.dumps({"array": arr}, protocol=5))
    got = read_pickled_arrays(path)["array"]
    np.testing.assert_array_equal(got, arr)
    data, spacing = load_volume(path)
    np.testing.assert_array_equal(data, arr)
    assert spacing == (1.0, 1.0, 1.0)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_refuses_other_callables(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"array": _Evil()}, protocol=4))
    with pytest.raises(DataError, match="system"):
        read_pickled_arrays(path)


def test_pixel_spacing_only(tmp_path):
    path = tmp_path / "p.pkl"
    arr = np.arange(32, dtype=np.int16).reshape(4, 4, 2)
    path.write_bytes(pickle.dumps({"array": arr, "pixel_spacing": [1.5, 1.25]}, protocol=4))
    data, spacing = load_volume(path)
    np.testing.assert_array_equal(data, arr)
    assert spacing == (1.5, 1.25, 1.5)


class Volume3D:
    """Stands in for ``vreg.vol.Volume3D`` (pickled under that name below)."""

    def __init__(self, values, affine):
        self._values = values
        self._affine = affine


Volume3D.__module__ = "vreg.vol"


def test_vreg_volume_record(tmp_path, monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "vreg", types.ModuleType("vreg"))
    mod = types.ModuleType("vreg.vol")
    mod.Volume3D = Volume3D
    monkeypatch.setitem(sys.modules, "vreg.vol", mod)
    values = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    affine = np.array([[1.25, 0, 0, 1], [0, 0, 1.5, 2], [0, -1.25, 0, 3], [0, 0, 0, 1]])
    path = tmp_path / "vol.pkl"
    path.write_bytes(pickle.dumps(Volume3D(values, affine), protocol=4))
    got = read_pickled_arrays(path)
    assert got["__class__"] == "vreg.vol.Volume3D"
    np.testing.assert_array_equal(got["_values"], values)
    data, spacing = load_volume(path)
    np.testing.assert_array_equal(data, values)
    assert spacing == (1.25, 1.25, 1.5)
    listed = tmp_path / "list.pkl"
    v = Volume3D(values, affine)
    listed.write_bytes(pickle.dumps([v, v], protocol=4))  # a shared reference (memo)
    both = read_pickled_arrays(listed)
    assert both[0] is both[1] and both[0]["_values"].shape == (3, 4, 5)


def test_bad_pickles(tmp_path):
    trunc = tmp_path / "t.pkl"
    trunc.write_bytes(pickle.dumps({"array": np.zeros((2, 2, 2))}, protocol=5)[:-20])
    with pytest.raises(DataError):
        read_pickled_arrays(trunc)
    no_array = tmp_path / "n.pkl"
    no_array.write_bytes(pickle.dumps({"image": np.zeros((2, 2, 2))}, protocol=5))
    with pytest.raises(DataError, match="'array'"):
        load_volume(no_array)
    bad_spacing = tmp_path / "s.pkl"
    bad_spacing.write_bytes(pickle.dumps({"array": np.zeros((2, 2, 2)), "spacing": [1, 0]}))
    with pytest.raises(DataError, match="spacing"):
        load_volume(bad_spacing)
