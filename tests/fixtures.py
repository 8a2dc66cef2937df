"""Shared test fixtures and helpers for raw ISMRMRD files.

Import the fixtures into a test module (``from tests.fixtures import shepp_logan  # noqa: F401``)
to use them. ``shepp_logan`` is a session-scoped factory that runs Debian's
``ismrmrd_generate_cartesian_shepp_logan`` once per option set.

Facts about that generator (checked with h5py): ``-r R -a A`` writes ``R * A`` repetitions, the
sampling pattern shifting by one line per repetition; ``-w W`` acquires the central ``W`` lines
of every repetition, those off the pattern flagged ``PARALLEL_CALIBRATION``, those on it
``PARALLEL_CALIBRATION_AND_IMAGING``; ``-C`` adds one noise acquisition first; the readout is
2× oversampled (``-O``); ``/dataset/phantom`` ``[1, ny, nx]`` is at the recon matrix size;
all geometry vectors are zero. It *appends* to an existing output file, so always write to a
fresh path.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

GENERATOR = "ismrmrd_generate_cartesian_shepp_logan"

#: Oblique test geometry written into copied files (LPS, mm; unit, orthogonal directions).
GEOMETRY = {
    "position": (12.5, -7.25, 30.0),
    "read_dir": (0.8, 0.6, 0.0),
    "phase_dir": (-0.6, 0.8, 0.0),
    "slice_dir": (0.0, 0.0, 1.0),
    "patient_table_position": (0.0, 0.0, -1250.0),
}


def generate_shepp_logan(
    path: Path,
    matrix: int = 64,
    coils: int = 4,
    acceleration: int = 2,
    calibration_width: int = 16,
    repetitions: int = 1,
    noise_level: float = 0.05,
    noise_calibration: bool = True,
    oversampling: int = 2,
) -> Path:
    """Run the Debian generator; returns ``path``."""
    if shutil.which(GENERATOR) is None:
        pytest.skip("Debian ismrmrd-tools not installed")
    cmd = [
        GENERATOR,
        "-m",
        str(matrix),
        "-c",
        str(coils),
        "-a",
        str(acceleration),
        "-w",
        str(calibration_width),
        "-r",
        str(repetitions),
        "-n",
        str(noise_level),
        "-O",
        str(oversampling),
        "-o",
        str(path),
    ]
    if noise_calibration:
        cmd.append("-C")
    path.unlink(missing_ok=True)  # the generator appends to an existing file
    subprocess.run(cmd, check=True, capture_output=True, cwd=path.parent)
    return path


@pytest.fixture(scope="session")
def shepp_logan(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory ``shepp_logan(**options) -> Path`` (options of :func:`generate_shepp_logan`);
    each option set is generated once per session. Do not modify the returned file."""
    cache: dict[tuple[tuple[str, Any], ...], Path] = {}
    root = tmp_path_factory.mktemp("shepp_logan")

    def make(**options: Any) -> Path:
        key = tuple(sorted(options.items()))
        if key not in cache:
            name = "_".join(f"{k}{v}" for k, v in key) or "default"
            cache[key] = generate_shepp_logan(root / f"sl_{name}.h5", **options)
        return cache[key]

    return make


def read_phantom(path: Path) -> np.ndarray:
    """The ground-truth phantom ``[ny, nx]`` (complex) stored by the generator."""
    with h5py.File(path, "r") as f:
        ph = f["dataset/phantom"][0]
    return ph["real"] + 1j * ph["imag"]


def read_csm(path: Path) -> np.ndarray:
    """The ground-truth coil maps ``[C, ny, nx]`` stored by the generator."""
    with h5py.File(path, "r") as f:
        csm = f["dataset/csm"][0]
    return csm["real"] + 1j * csm["imag"]


def rewrite_raw(
    src: Path,
    dst: Path,
    edit_xml: Callable[[str], str] | None = None,
    edit_rows: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Path:
    """Copy a raw file, editing its XML header text and/or its acquisition table.

    ``edit_rows`` gets the structured ``/dataset/data`` array (fields ``head``, ``traj``,
    ``data``; ``data`` rows are float32 vlen arrays of interleaved real/imag) and returns the
    array to write (possibly with a different length).
    """
    with h5py.File(src, "r") as f:
        xml = f["dataset/xml"][0]
        rows = f["dataset/data"][()]
        dtype = f["dataset/data"].dtype
    text = xml.decode() if isinstance(xml, bytes) else str(xml)
    if edit_xml is not None:
        text = edit_xml(text)
    if edit_rows is not None:
        rows = edit_rows(rows)
    with h5py.File(dst, "w") as f:
        grp = f.create_group("dataset")
        grp.create_dataset("xml", data=[text.encode()], dtype=h5py.special_dtype(vlen=bytes))
        grp.create_dataset("data", data=rows, dtype=dtype, maxshape=(None,))
    return dst


def set_geometry(rows: np.ndarray) -> np.ndarray:
    """``edit_rows`` helper: write :data:`GEOMETRY` into every acquisition header."""
    for name, value in GEOMETRY.items():
        rows["head"][name] = np.asarray(value, np.float32)
    return rows
