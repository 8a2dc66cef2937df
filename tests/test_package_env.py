"""``import mrprior`` shortens the OpenMP spin of torch's threads unless the user chose one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = "import os, mrprior; print(os.environ.get('GOMP_SPINCOUNT', 'unset'))"


def _spin_count(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**base, **env}, capture_output=True, text=True,
        check=True, timeout=120,
    )  # fmt: skip
    return out.stdout.strip()


def test_short_spin_by_default() -> None:
    import mrprior

    assert _spin_count() == mrprior.OMP_SPIN_COUNT == "10000"


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"GOMP_SPINCOUNT": "5"}, "5"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "unset")],
)
def test_user_choice_wins(env: dict[str, str], expected: str) -> None:
    assert _spin_count(**env) == expected
