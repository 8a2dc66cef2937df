"""BART ``.cfl``/``.hdr`` files and running the ``bart`` command-line tool.

File format (as BART writes it)
-------------------------------
``NAME.hdr`` is text: a line ``# Dimensions`` followed by a line of space-separated integers
``d0 d1 ... dK`` (BART may add further ``# ...`` sections, which are ignored). ``NAME.cfl`` holds
``prod(d)`` little-endian complex64 values in **column-major** order (dimension 0 varies fastest).

Arrays returned by :func:`readcfl` and taken by :func:`writecfl` are in **BART dimension order**:
``a.shape == (d0, d1, ...)`` and ``a[i0, i1, ...]`` is BART's element ``(i0, i1, ...)``.

Mapping to mrprior's conventions
--------------------------------
BART's dimensions are ``[READ(x), PHS1(y), PHS2(z), COIL, MAPS, ...]``. mrprior stores k-space
as ``[C, ky, kx]`` (readout last, C-order). We map **our kx = BART dim 0 (readout)** and **our ky
= BART dim 1**, so a C-ordered ``[C, ky, kx]`` array has exactly the memory layout of BART's
``[kx, ky, 1, C]`` file: the conversion is a transpose, no data reordering on disk.
:func:`kspace_to_bart`/:func:`kspace_from_bart` and :func:`image_to_bart`/:func:`image_from_bart`
do it. BART's centered FFT (``fftmod`` + FFT) equals our :func:`mrprior.mr.fft.fftc` for even
sizes, so images from BART and from mrprior line up pixel for pixel after this mapping.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mrprior.errors import DataError, MRPriorError

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class BartError(MRPriorError, RuntimeError):
    """``bart`` is not installed, or a ``bart`` command failed (the message holds its stderr)."""


def _base(base: str | os.PathLike[str]) -> Path:
    p = Path(base)
    if p.suffix in (".cfl", ".hdr"):
        p = p.with_suffix("")
    return p


def read_header(base: str | os.PathLike[str]) -> tuple[int, ...]:
    """Dimensions stored in ``base.hdr`` (BART order, as written)."""
    hdr = _base(base).with_suffix(".hdr")
    if not hdr.is_file():
        raise DataError(f"BART header {hdr} does not exist")
    lines = hdr.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "# Dimensions":
            if i + 1 >= len(lines):
                break
            try:
                dims = tuple(int(t) for t in lines[i + 1].split())
            except ValueError:
                raise DataError(f"{hdr}: bad dimensions line {lines[i + 1]!r}") from None
            if not dims or any(d < 0 for d in dims):
                raise DataError(f"{hdr}: bad dimensions {dims}")
            return dims
    raise DataError(f"{hdr}: no '# Dimensions' line; not a BART header")


def readcfl(base: str | os.PathLike[str]) -> np.ndarray:
    """Read ``base.cfl``/``base.hdr`` as a complex64 array in BART dimension order.

    Parameters
    ----------
    base : path without extension (``.cfl``/``.hdr`` suffixes are accepted and stripped).

    Returns
    -------
    numpy.ndarray
        complex64, shape = the header's dimensions (trailing singletons kept as written),
        Fortran-ordered so that memory order matches the file.

    Raises
    ------
    DataError
        A file is missing, the header is malformed, or the data size does not match the header.
    """
    b = _base(base)
    dims = read_header(b)
    cfl = b.with_suffix(".cfl")
    if not cfl.is_file():
        raise DataError(f"BART data file {cfl} does not exist")
    n = int(np.prod(dims, dtype=np.int64))
    size = cfl.stat().st_size
    if size != 8 * n:
        what = "truncated" if size < 8 * n else "larger than its header says"
        raise DataError(
            f"{cfl} is {what}: {size} bytes, header dims {dims} need {8 * n} bytes (complex64)"
        )
    data = np.fromfile(cfl, dtype="<c8", count=n)
    return data.astype(np.complex64, copy=False).reshape(dims, order="F")


def writecfl(base: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` (BART dimension order) as ``base.cfl`` (complex64, column-major) + ``.hdr``.

    A 0-d array is written with dims ``[1]``. Real input is converted to complex64.
    """
    b = _base(base)
    a = np.asarray(array)
    if a.ndim == 0:
        a = a.reshape(1)
    if not (np.iscomplexobj(a) or np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise DataError(f"cannot write {a.dtype} array as BART cfl")
    dims = a.shape
    b.parent.mkdir(parents=True, exist_ok=True)
    with open(b.with_suffix(".hdr"), "w") as f:
        f.write("# Dimensions\n")
        f.write(" ".join(str(int(d)) for d in dims) + " \n")
    a.astype("<c8", copy=False).ravel(order="F").tofile(b.with_suffix(".cfl"))


# -- axis mapping ------------------------------------------------------------------------------
def kspace_to_bart(kspace: np.ndarray) -> np.ndarray:
    """mrprior k-space or coil maps ``[C, ky, kx]`` -> BART ``[kx, ky, 1, C]``, or 3D
    ``[C, kz, ky, kx]`` -> ``[kx, ky, kz, C]``."""
    if kspace.ndim == 3:
        return np.transpose(kspace, (2, 1, 0))[:, :, None, :]
    if kspace.ndim == 4:
        return np.transpose(kspace, (3, 2, 1, 0))
    raise DataError(f"expected [C, ky, kx] or [C, kz, ky, kx]: {kspace.shape=}")


def kspace_from_bart(array: np.ndarray, ndim: int = 2) -> np.ndarray:
    """BART ``[kx, ky, kz, C, (1...)]`` -> mrprior ``[C, ky, kx]`` (``ndim=2``, needs ``kz = 1``)
    or ``[C, kz, ky, kx]`` (``ndim=3``); a C-contiguous copy."""
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3: {ndim=}")
    a = _squeeze_trailing(array, 4)
    if a.ndim < 4:  # one coil and/or a single partition
        a = a.reshape(a.shape + (1,) * (4 - a.ndim), order="F")
    if a.ndim != 4 or (ndim == 2 and a.shape[2] != 1):
        want = "[kx, ky, 1, C]" if ndim == 2 else "[kx, ky, kz, C]"
        raise DataError(f"expected BART {want}: {array.shape=}")
    out = np.transpose(a, (3, 2, 1, 0))
    return np.ascontiguousarray(out[:, 0] if ndim == 2 else out)


def image_to_bart(image: np.ndarray) -> np.ndarray:
    """mrprior image ``[ky, kx]`` -> BART ``[kx, ky]`` or volume ``[z, y, x]`` -> ``[x, y, z]``;
    also a mask of the same shape."""
    if image.ndim not in (2, 3):
        raise DataError(f"expected [ky, kx] or [z, y, x]: {image.shape=}")
    return np.transpose(image)


def image_from_bart(array: np.ndarray, ndim: int = 2) -> np.ndarray:
    """BART image ``[x, y, (z), (1...)]`` -> mrprior ``[y, x]`` (``ndim=2``) or ``[z, y, x]``
    (``ndim=3``), a C-contiguous copy."""
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3: {ndim=}")
    a = _squeeze_trailing(array, ndim)
    if a.ndim != ndim:
        raise DataError(
            f"expected a {ndim}D BART image [x, y{', z' * (ndim == 3)}, 1, ...]: {array.shape=}"
        )
    return np.ascontiguousarray(a.T)


def _squeeze_trailing(a: np.ndarray, keep: int) -> np.ndarray:
    shape = list(a.shape)
    while len(shape) > keep and shape[-1] == 1:
        shape.pop()
    return a.reshape(shape, order="F") if len(shape) != a.ndim else a


# -- running bart ------------------------------------------------------------------------------
def bart_available() -> bool:
    """True when the ``bart`` executable is on ``PATH``."""
    return shutil.which("bart") is not None


@dataclass
class BartRun:
    """Result of :func:`run_bart_detailed`: the outputs read back, the text printed, wall time."""

    outputs: dict[str, np.ndarray]
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    args: list[str] = field(default_factory=list)


def run_bart_detailed(
    args: list[str],
    inputs: dict[str, np.ndarray] | None = None,
    outputs: list[str] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    timeout: float | None = None,
) -> BartRun:
    """Run ``bart *args`` in a working directory with named cfl inputs and outputs.

    Parameters
    ----------
    args : the command line after ``bart``, e.g. ``["pics", "-l1", "-r", "0.01", "k", "s", "x"]``;
        file arguments are plain names resolved inside the working directory.
    inputs : name -> array (BART dimension order), written as ``name.cfl/.hdr`` first.
    outputs : names read back after the command succeeds.
    workdir : directory to run in (kept); default a temporary directory removed afterwards.
    threads : sets ``OMP_NUM_THREADS`` for the child.
    timeout : seconds before the child is killed.

    Raises
    ------
    BartError
        ``bart`` is missing, exits non-zero (stderr in the message), times out, or an output
        file was not written.
    """
    exe = shutil.which("bart")
    if exe is None:
        raise BartError("the 'bart' executable is not on PATH (Debian: apt-get install bart)")
    names = list(inputs or {}) + list(outputs or [])
    for name in names:
        if not _NAME_RE.match(name):
            raise ValueError(f"bart file name {name!r} must be a plain name (no path)")
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(int(threads))
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mrprior-bart-")
        wd = Path(tmp.name)
    else:
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
    try:
        for name, arr in (inputs or {}).items():
            writecfl(wd / name, arr)
        cmd = [exe, *[str(a) for a in args]]
        logger.debug("running %s in %s", " ".join(cmd), wd)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, cwd=wd, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise BartError(
                f"'bart {' '.join(map(str, args))}' timed out after {timeout}s"
            ) from exc
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise BartError(
                f"'bart {' '.join(map(str, args))}' failed with exit code {proc.returncode}:\n"
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        result: dict[str, np.ndarray] = {}
        for name in outputs or []:
            try:
                result[name] = readcfl(wd / name)
            except DataError as exc:
                raise BartError(
                    f"'bart {' '.join(map(str, args))}' did not write output {name!r}: {exc}"
                ) from exc
        return BartRun(result, proc.stdout, proc.stderr, wall, [str(a) for a in args])
    finally:
        if tmp is not None:
            tmp.cleanup()


def run_bart(
    args: list[str],
    inputs: dict[str, np.ndarray] | None = None,
    outputs: list[str] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Run ``bart *args`` with named cfl ``inputs`` and return the named ``outputs``.

    See :func:`run_bart_detailed` (which also returns stdout/stderr and the wall time);
    ``threads`` sets ``OMP_NUM_THREADS`` (BART's OpenMP threads spin-wait, so on a busy machine
    ``threads=1`` is often several times faster than the default).

    Examples
    --------
    >>> out = run_bart(["phantom", "-x", "64", "ph"], outputs=["ph"])  # doctest: +SKIP
    >>> out["ph"].shape  # BART writes all 16 dims  # doctest: +SKIP
    (64, 64, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
    """
    return run_bart_detailed(args, inputs, outputs, workdir, threads=threads).outputs
