"""Batch reconstruction on a Dask LocalCluster: outputs, failures, retries, resumability."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest

from mrprior.batch import (
    REPORT_NAME,
    is_finished,
    marker_path_for,
    output_path_for,
    process_file,
    run_batch,
)
from mrprior.errors import ConfigError, DataError

distributed = pytest.importorskip("distributed")

#: a small raw file: 32x32, 4 coils, R=2 with 12 calibration lines, a noise scan
SHEPP_LOGAN_ARGS = ("-m", "32", "-c", "4", "-a", "2", "-w", "12", "-C")


# --------------------------------------------------------------------------------------------
# picklable per-file reconstructions (module level: the Dask workers import them by reference)
# --------------------------------------------------------------------------------------------
def zerofill_rss(in_path: Path, out_path: Path) -> dict:
    """Minimal real reconstruction: zero-filled k-space -> coil RSS image -> ISMRMRD file."""
    dset = ismrmrd.Dataset(str(in_path), "dataset", create_if_needed=False, mode="r")
    try:
        n = dset.number_of_acquisitions()
        acqs = [dset.read_acquisition(i) for i in range(n)]
    finally:
        dset.close()
    acqs = [a for a in acqs if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    if not acqs:
        raise DataError(f"{in_path}: no imaging acquisitions")
    ny = 1 + max(a.idx.kspace_encode_step_1 for a in acqs)
    coils, nx = acqs[0].data.shape
    kspace = np.zeros((coils, ny, nx), np.complex64)
    for a in acqs:
        kspace[:, a.idx.kspace_encode_step_1, :] = a.data
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1))), axes=(-2, -1))
    img = img[..., nx // 4 : nx // 4 + nx // 2]  # remove 2x readout oversampling
    rss = np.sqrt((np.abs(img) ** 2).sum(0)).astype(np.float32)
    image = ismrmrd.Image.from_array(rss)
    out = ismrmrd.Dataset(str(out_path), "dataset", create_if_needed=True)
    try:
        out.append_image("image_0", image)
    finally:
        out.close()
    return {"images": 1, "shape": list(rss.shape), "max": np.float32(rss.max())}


@dataclasses.dataclass
class CopySummary:
    """A summary object (not a dict) with ``to_dict()``, as ``mrprior recon`` returns."""

    output: Path
    bytes: int

    def to_dict(self) -> dict:
        return {"output": str(self.output), "bytes": self.bytes}


def copy_recon(in_path: Path, out_path: Path) -> CopySummary:
    """Trivial stand-in reconstruction: copy the input bytes."""
    shutil.copyfile(in_path, out_path)
    return CopySummary(Path(out_path), Path(out_path).stat().st_size)


def _count_attempt(counter_dir: Path, in_path: Path) -> int:
    counter = Path(counter_dir) / f"{Path(in_path).stem}.count"
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    return n


def flaky_recon(in_path: Path, out_path: Path, counter_dir: Path, fail_times: int) -> dict:
    """Fails with a transient error on the first ``fail_times`` attempts of each file."""
    attempt = _count_attempt(counter_dir, in_path)
    if attempt <= fail_times:
        raise ConnectionResetError(f"transient failure {attempt}")
    return {"attempt": attempt, **copy_recon(in_path, out_path).to_dict()}


def bad_data_recon(in_path: Path, out_path: Path, counter_dir: Path) -> dict:
    """Always fails with a DataError (a property of the input: must not be retried)."""
    attempt = _count_attempt(counter_dir, in_path)
    raise DataError(f"header without encoding (attempt {attempt})")


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster_address():
    """One 2-worker LocalCluster shared by the tests that pass a scheduler address."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def phantom_raw(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("raw") / "shepp_logan.h5"
    subprocess.run(
        ["ismrmrd_generate_cartesian_shepp_logan", *SHEPP_LOGAN_ARGS, "-o", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def _small_files(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"file_{i}.bin"
        p.write_bytes(bytes([i]) * (100 + i))
        paths.append(p)
    return paths


# --------------------------------------------------------------------------------------------
# the acceptance test: 8 raw files, one corrupt, embedded 2-worker LocalCluster, rerun
# --------------------------------------------------------------------------------------------
@pytest.mark.ismrmrd_tools
def test_batch_of_eight_with_one_corrupt_file_and_resume(phantom_raw: Path, tmp_path: Path):
    """The issue's acceptance test, on the real pipeline (SENSE) and an embedded LocalCluster."""
    from mrprior.pipeline import load_recon_config

    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    inputs = []
    for i in range(8):
        dst = raw_dir / f"scan_{i:02d}.h5"
        shutil.copyfile(phantom_raw, dst)
        inputs.append(dst)
    corrupt = inputs[5]
    corrupt.write_bytes(phantom_raw.read_bytes()[:4096])  # truncated HDF5
    out_dir = tmp_path / "images"
    cfg = load_recon_config(overrides={"method": "sense", "device": "cpu"})

    report = run_batch(inputs, out_dir, cfg, n_workers=2, retries=1, progress=False)

    assert report.scheduler == "local" and report.n_workers == 2
    assert len(report.done) == 7 and not report.skipped
    assert [f.input for f in report.failed] == [corrupt.resolve()]
    assert "scan_05.h5" in report.failed[0].error  # the pipeline's DataError names the file
    written = sorted(out_dir.glob("*_recon.h5"))
    assert [p.name for p in written] == [f"scan_{i:02d}_recon.h5" for i in range(8) if i != 5]
    assert not list(out_dir.glob(".*partial*")), "temporary outputs left behind"
    # the images are real reconstructions of the phantom stored in the raw file
    with h5py.File(phantom_raw, "r") as fh:
        truth = fh["dataset/phantom"][()]
    truth = np.abs(truth["real"] + 1j * truth["imag"]).squeeze()
    for path in written:
        with ismrmrd.Dataset(str(path), "dataset", create_if_needed=False, mode="r") as ds:
            images = [ds.read_image("image_1", i) for i in range(ds.number_of_images("image_1"))]
        assert images
        for image in images:
            data = image.data.squeeze()
            assert data.shape == truth.shape == (32, 32)
            assert np.corrcoef(data.ravel(), truth.ravel())[0, 1] > 0.9
        assert marker_path_for(path).is_file()
    saved = json.loads((out_dir / REPORT_NAME).read_text())
    assert saved["counts"] == {"total": 8, "done": 7, "skipped": 0, "failed": 1}
    failed = [f for f in saved["files"] if f["status"] == "failed"]
    assert failed[0]["input"] == str(corrupt.resolve()) and failed[0]["error"]
    done = [f for f in saved["files"] if f["status"] == "done"]
    assert all(f["summary"]["method"] == "sense" and f["summary"]["images"] for f in done)

    mtimes = {p: p.stat().st_mtime_ns for p in written}
    rerun = run_batch(inputs, out_dir, cfg, n_workers=2, retries=0, progress=False)
    assert len(rerun.skipped) == 7 and not rerun.done
    assert [f.input for f in rerun.failed] == [corrupt.resolve()]
    assert {p: p.stat().st_mtime_ns for p in written} == mtimes, "finished files were redone"
    assert json.loads((out_dir / REPORT_NAME).read_text())["counts"]["skipped"] == 7


@pytest.mark.ismrmrd_tools
def test_stand_in_recon_on_a_cluster_address(cluster_address: str, phantom_raw: Path, tmp_path):
    """A user-supplied module-level function also works, on a scheduler given by address."""
    inputs = []
    for i in range(2):
        dst = tmp_path / f"p{i}.h5"
        shutil.copyfile(phantom_raw, dst)
        inputs.append(dst)
    report = run_batch(inputs, tmp_path / "out", zerofill_rss, scheduler=cluster_address)
    assert len(report.done) == 2 and report.n_workers == 2
    with h5py.File(report.done[0].output, "r") as fh:
        assert np.asarray(fh["dataset/image_0/data"]).squeeze().shape == (32, 32)


# --------------------------------------------------------------------------------------------
# retries, permanent errors, resumability rules (on a cluster given by address)
# --------------------------------------------------------------------------------------------
def test_transient_errors_are_retried(cluster_address: str, tmp_path: Path):
    inputs = _small_files(tmp_path / "in", 3)
    counters = tmp_path / "counters"
    counters.mkdir()
    recon = functools.partial(flaky_recon, counter_dir=counters, fail_times=2)

    report = run_batch(
        inputs, tmp_path / "out", recon, scheduler=cluster_address, retries=2, progress=False
    )

    assert report.scheduler == cluster_address
    assert len(report.done) == 3 and report.ok
    assert all(f.summary["attempt"] == 3 for f in report.done)


def test_retries_exhausted_reports_last_error(cluster_address: str, tmp_path: Path):
    inputs = _small_files(tmp_path / "in", 2)
    counters = tmp_path / "counters"
    counters.mkdir()
    recon = functools.partial(flaky_recon, counter_dir=counters, fail_times=5)

    report = run_batch(
        inputs, tmp_path / "out", recon, scheduler=cluster_address, retries=1, progress=False
    )

    assert len(report.failed) == 2
    assert all(f.error == "ConnectionResetError: transient failure 2" for f in report.failed)
    assert not list((tmp_path / "out").glob("file_*"))


def test_data_errors_are_not_retried(cluster_address: str, tmp_path: Path):
    inputs = _small_files(tmp_path / "in", 2)
    counters = tmp_path / "counters"
    counters.mkdir()
    recon = functools.partial(bad_data_recon, counter_dir=counters)

    report = run_batch(
        inputs, tmp_path / "out", recon, scheduler=cluster_address, retries=3, progress=False
    )

    assert [f.error for f in report.failed] == [
        "DataError: header without encoding (attempt 1)"
    ] * 2
    assert sorted(p.read_text() for p in counters.iterdir()) == ["1", "1"]


def test_changed_input_incomplete_output_and_new_recon_are_redone(
    cluster_address: str, tmp_path: Path
):
    inputs = _small_files(tmp_path / "in", 6)
    out_dir = tmp_path / "out"
    first = run_batch(inputs, out_dir, copy_recon, scheduler=cluster_address, progress=False)
    assert len(first.done) == 6

    inputs[0].write_bytes(b"new contents")  # input changed (size)
    inputs[1].write_bytes(b"\xff" * inputs[1].stat().st_size)  # same size, other bytes
    marker_path_for(output_path_for(inputs[2], out_dir)).unlink()  # crashed before the marker
    with open(output_path_for(inputs[3], out_dir), "ab") as fh:  # output tampered with
        fh.write(b"x")
    os.utime(inputs[4], ns=(1, 1))  # only the time changed (a read-write open does that)
    second = run_batch(inputs, out_dir, copy_recon, scheduler=cluster_address, progress=False)
    assert {f.input.name for f in second.done} == {f"file_{i}.bin" for i in range(4)}
    assert {f.input.name for f in second.skipped} == {"file_4.bin", "file_5.bin"}
    assert output_path_for(inputs[0], out_dir).read_bytes() == b"new contents"
    assert output_path_for(inputs[1], out_dir).read_bytes() == inputs[1].read_bytes()
    refreshed = json.loads(marker_path_for(output_path_for(inputs[4], out_dir)).read_text())
    assert refreshed["input_mtime_ns"] == 1

    other = functools.partial(flaky_recon, counter_dir=tmp_path, fail_times=0)
    third = run_batch(inputs, out_dir, other, scheduler=cluster_address, progress=False)
    assert len(third.done) == 6, "a different reconstruction must not reuse old outputs"


# --------------------------------------------------------------------------------------------
# checks that need no cluster
# --------------------------------------------------------------------------------------------
def test_process_file_is_atomic_and_writes_marker(tmp_path: Path):
    (src,) = _small_files(tmp_path / "in", 1)
    out = output_path_for(src, tmp_path)
    res = process_file(src, out, copy_recon, "key-1")
    assert res["status"] == "done" and out.read_bytes() == src.read_bytes()
    marker = json.loads(marker_path_for(out).read_text())
    assert marker["recon"] == "key-1" and marker["output_bytes"] == out.stat().st_size
    # the summary names the final file, not the temporary one the task wrote first
    assert marker["summary"] == res["summary"] == {"output": str(out), "bytes": 100}
    assert is_finished(src, out, "key-1") is not None
    assert is_finished(src, out, "key-2") is None

    with pytest.raises(ConnectionResetError):
        process_file(src, out.with_name("x_recon.h5"), _always_transient, "k")
    assert not out.with_name("x_recon.h5").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["in", out.name, marker_path_for(out).name]
    )


def _always_transient(in_path: Path, out_path: Path) -> dict:
    Path(out_path).write_bytes(b"half written")
    raise ConnectionResetError("worker network hiccup")


def test_bad_arguments_fail_early(tmp_path: Path):
    a = tmp_path / "a" / "scan.h5"
    b = tmp_path / "b" / "scan.h5"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"would both write scan_recon\.h5"):
        run_batch([a, b], tmp_path / "out", copy_recon, progress=False)
    with pytest.raises(ConfigError, match="picklable"):
        run_batch([a], tmp_path / "out", lambda i, o: {}, progress=False)
    with pytest.raises(ConfigError, match="no input files"):
        run_batch([], tmp_path / "out", copy_recon, progress=False)


def test_missing_input_is_reported_without_starting_a_cluster(tmp_path: Path):
    report = run_batch([tmp_path / "nope.h5"], tmp_path / "out", copy_recon, progress=False)
    assert [f.status for f in report.files] == ["failed"]
    assert "FileNotFoundError" in report.failed[0].error
    assert report.n_workers == 0
    assert json.loads((tmp_path / "out" / REPORT_NAME).read_text())["counts"]["failed"] == 1


@pytest.mark.ismrmrd_tools
@pytest.mark.filterwarnings("ignore:image has no orientation")  # the phantom has no geometry
def test_pipeline_recon_writes_images_and_exports(phantom_raw: Path, tmp_path: Path):
    from mrprior.batch import PipelineRecon
    from mrprior.pipeline import load_recon_config

    cfg = load_recon_config(overrides={"method": "zerofill", "device": "cpu"})
    recon = PipelineRecon(cfg, png_dir=tmp_path / "png", nifti_dir=tmp_path / "nii")
    out = tmp_path / "out.h5"
    summary = recon(phantom_raw, out)
    assert summary["method"] == "zerofill" and summary["images"] >= 1
    assert {Path(p).parent for p in summary["png"]} == {tmp_path / "png" / phantom_raw.stem}
    assert all(Path(p).is_file() for p in summary["png"]) and Path(summary["nifti"]).is_file()
    with ismrmrd.Dataset(str(out), "dataset", create_if_needed=False, mode="r") as ds:
        assert ds.number_of_images("image_1") == summary["images"]
        assert "encoding" in ds.read_xml_header().decode()  # the raw header travels along
    other = load_recon_config(overrides={"method": "sense", "device": "cpu"})
    assert recon.key == PipelineRecon(cfg).key != PipelineRecon(other).key


@pytest.mark.ismrmrd_tools
def test_batch_with_a_3d_file(cluster_address: str, phantom_raw: Path, tmp_path: Path):
    """A 2D and a 3D raw file in one batch: each goes through the one pipeline; the 3D one comes
    back as one image per partition, with its NIfTI volume and montage."""
    import nibabel as nib

    from mrprior.batch import PipelineRecon
    from mrprior.pipeline import load_recon_config
    from tests.io.raw3d import write_raw_3d

    vol = write_raw_3d(tmp_path / "raw" / "vol3d.h5", shape=(16, 24, 20), calib=(12, 12))
    flat = tmp_path / "raw" / "slice2d.h5"
    shutil.copyfile(phantom_raw, flat)
    cfg = load_recon_config(overrides={"method": "sense", "device": "cpu", "kernel_size": 5})
    recon = PipelineRecon(cfg, png_dir=tmp_path / "png", nifti_dir=tmp_path / "nii")
    report = run_batch(
        [flat, vol.path], tmp_path / "out", recon, scheduler=cluster_address, progress=False
    )
    assert report.ok and len(report.done) == 2, report.format_summary()
    summary = {Path(f.input).stem: f.summary for f in report.done}
    assert summary["vol3d"]["is_3d"] and summary["vol3d"]["images"] == 16
    assert not summary["slice2d"]["is_3d"]
    with ismrmrd.Dataset(str(tmp_path / "out" / "vol3d_recon.h5"), "dataset", mode="r") as ds:
        slices = [ds.read_image("image_1", i).slice for i in range(ds.number_of_images("image_1"))]
    assert slices == list(range(16))
    assert nib.load(summary["vol3d"]["nifti"]).shape == (20, 24, 16)
    assert len(summary["vol3d"]["png"]) == 1  # one montage
