"""The two real Siemens scanner files that twixtools 0.24's source distribution ships.

``example_data/gre.dat`` (2D gradient echo, 160 × 160, 2× readout oversampling) and
``example_data/epi.dat`` (2D EPI, 80 × 80, ramp sampling, 3 phase-correction navigators) of a
phantom, 2 body-coil channels, Skyra VE11C. They are never committed: :func:`twix_example`
downloads the sdist once with pip into ``~/.cache/mrprior/packages`` (``MRPRIOR_CACHE``
overrides ``~/.cache/mrprior``), checks its SHA-256, and extracts the two files next to it.
Offline and not cached: the calling test is skipped, with the reason.

``python -m tests.io.twix_data`` fetches them ahead of time (``make test-data``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

SDIST = "twixtools-0.24.tar.gz"
SDIST_SHA256 = "d9ee05cc9cdf5287d6e331e5aa693b8bd15c33bdb4d4e73e4f2f259aeaedfdaa"
FILES = ("gre.dat", "epi.dat")


def cache_dir() -> Path:
    root = os.environ.get("MRPRIOR_CACHE") or Path.home() / ".cache" / "mrprior"
    return Path(root) / "packages"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch() -> Path:
    """Download (if needed), verify and extract; return the folder holding the ``.dat`` files.

    Raises
    ------
    RuntimeError
        pip could not download the sdist, or its checksum is wrong.
    """
    cache = cache_dir()
    out = cache / "twixtools-0.24-example_data"
    if all((out / name).is_file() for name in FILES):
        return out
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / SDIST
    if not sdist.is_file():
        # build isolation lets pip read the sdist's metadata (its version comes from PKG-INFO)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += ["--disable-pip-version-check", "-q", "--retries", "2", "--timeout", "30"]
        cmd += ["twixtools==0.24", "-d", str(cache)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0 or not sdist.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"pip download twixtools==0.24 failed: {' | '.join(tail)}")
    digest = _sha256(sdist)
    if digest != SDIST_SHA256:
        sdist.unlink()
        raise RuntimeError(f"{SDIST}: SHA-256 {digest} is not the published {SDIST_SHA256}")
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "r:gz") as tar:
        for name in FILES:
            member = tar.getmember(f"twixtools-0.24/example_data/{name}")
            src = tar.extractfile(member)
            if src is None:
                raise RuntimeError(f"{SDIST}: {member.name} is not a file")
            tmp = out / f".{name}.partial"
            tmp.write_bytes(src.read())
            tmp.replace(out / name)
    return out


def twix_example(name: str) -> Path:
    """Path of ``gre.dat`` or ``epi.dat``; skips the calling test if it cannot be fetched."""
    import pytest

    if name not in FILES:
        raise ValueError(f"{name!r}: twixtools 0.24 ships {FILES}")
    try:
        return fetch() / name
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"twixtools 0.24 example data unavailable (registry unreachable?): {exc}")


if __name__ == "__main__":
    try:
        where = fetch()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"warning: twix test data not fetched, their tests will be skipped: {exc}")
    else:
        print(f"twix test data: {where}")
