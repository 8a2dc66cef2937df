"""``mrprior recon``: outputs, options, and one-line errors with exit code 1 for bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mrprior.cli import main
from mrprior.cli.recon import parse_set, recon_one_file
from mrprior.errors import ConfigError
from mrprior.io.images import read_images
from mrprior.io.raw import read_header
from mrprior.pipeline import load_recon_config
from tests.fixtures import shepp_logan  # noqa: F401


@pytest.fixture(scope="module")
def raw(shepp_logan):  # noqa: F811
    return shepp_logan(matrix=32, coils=4, acceleration=2, calibration_width=12, repetitions=1)


@pytest.mark.ismrmrd_tools
def test_recon_writes_images_and_png(raw, tmp_path, capsys):
    out = tmp_path / "img.h5"
    rc = main(
        [
            "recon",
            str(raw),
            "--method",
            "zerofill",
            "-o",
            str(out),
            "--png",
            str(tmp_path / "png"),
            "--extra",
            "phase",
            "--set",
            "calib_size=16",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    assert "2 slice(s), 4 image(s), method zerofill" in capsys.readouterr().out
    images = read_images(out)
    assert [(im.image_series_index, im.repetition) for im in images] == [
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
    ]
    assert images[0].matrix_size == (32, 32, 1)
    assert read_header(out).encoding[0].reconSpace.matrixSize.x == 32  # raw header kept
    assert len(list((tmp_path / "png").glob("*.png"))) == 4


@pytest.mark.ismrmrd_tools
def test_recon_several_inputs_into_directory(raw, tmp_path):
    second = tmp_path / "second.h5"
    second.write_bytes(raw.read_bytes())
    out_dir = tmp_path / "out"
    rc = main(["recon", str(raw), str(second), "--method", "zerofill", "-o", str(out_dir), "-q"])
    assert rc == 0
    assert sorted(p.name for p in out_dir.glob("*.h5")) == sorted(
        [f"{raw.stem}_recon.h5", "second_recon.h5"]
    )
    # several inputs go through the batch runner: a report and one done-marker per output
    assert (out_dir / "batch_report.json").is_file()
    assert len(list(out_dir.glob("*.done.json"))) == 2


@pytest.mark.ismrmrd_tools
def test_recon_one_file_summary(raw, tmp_path):
    cfg = load_recon_config(overrides={"method": "zerofill", "device": "cpu", "dtype": "uint16"})
    with pytest.warns(UserWarning, match="no orientation"):  # the generator writes no geometry
        summary = recon_one_file(raw, tmp_path / "o.h5", cfg, nifti_path=tmp_path / "v.nii.gz")
    assert summary.groups == 2 and summary.images == 2
    assert summary.nifti is not None and summary.nifti.is_file()
    images = read_images(summary.output)
    assert images[0].data.dtype == np.uint16
    assert summary.to_dict()["method"] == "zerofill"


def test_not_ismrmrd_file(tmp_path, capsys):
    bad = tmp_path / "notes.h5"
    bad.write_text("hello\n")
    rc = main(["recon", str(bad), "-o", str(tmp_path / "o.h5"), "--device", "cpu"])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err == f"mrprior recon: error: {bad}: not an HDF5 file, so not ISMRMRD raw data"
    assert not (tmp_path / "o.h5").exists()


def test_hdf5_that_is_not_raw_data(tmp_path, capsys):
    import h5py

    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.zeros(3)
    assert main(["recon", str(p), "-o", str(tmp_path / "o.h5"), "--device", "cpu"]) == 1
    assert "not ISMRMRD raw data: no /dataset group" in capsys.readouterr().err


def test_bad_setting_and_method(tmp_path, capsys):
    p = tmp_path / "x.h5"
    assert main(["recon", str(p), "-o", str(tmp_path / "o.h5"), "--set", "nope=1"]) == 1
    assert "unknown setting 'nope'" in capsys.readouterr().err
    assert main(["recon", str(p), "-o", str(tmp_path / "o.h5"), "--method", "magic"]) == 1
    assert "unknown method 'magic'" in capsys.readouterr().err


def test_parse_set():
    assert parse_set(["a=1", "b=0.5", "c=true", "d=hello", "e=[phase]"]) == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": "hello",
        "e": ["phase"],
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["novalue"])


def test_exit_code_in_a_real_process(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)  # HDF5 signature, then nothing
    proc = subprocess.run(
        [sys.executable, "-m", "mrprior", "recon", str(bad), "-o", str(tmp_path / "o.h5")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, no traceback
    assert "truncated or corrupt HDF5 file" in proc.stderr
