"""Batch reconstruction of many raw files on Dask distributed.

Each raw file becomes one Dask task that reconstructs it into ``out_dir``. The output folder is
resumable: a task writes its image file under a temporary name, renames it into place when it is
complete, and only then writes a small JSON *done-marker* next to it (also atomically). A rerun
skips every file whose marker matches its input (path, size, contents: modification time, else
SHA-256), its output (size) and the reconstruction (a key derived from the config or the
callable); anything else is reconstructed again. A failed file is reported with its error text
and does not stop the others; the summary goes to ``out_dir / "batch_report.json"``. Files named
``.<stem>_recon.partial-*.h5`` are temporaries of a worker that died mid-task; they are never
taken for results and may be deleted.

By default the tasks run on an embedded :class:`distributed.LocalCluster` (``n_workers``
processes, one thread each, ``threads`` intra-op threads per worker for torch / BLAS); pass a
scheduler address such as ``tcp://host:8786`` to use a real cluster. With a remote cluster the
input files and ``out_dir`` must live on a filesystem every worker can see, under the same paths,
and the workers need mrprior installed (``pip install "mrprior[cluster]"``).

The embedded cluster starts worker *processes* (multiprocessing "spawn"): a script that calls
:func:`run_batch` needs the usual ``if __name__ == "__main__":`` guard. The per-file function is
pickled by reference, so it must be a module-level function (or a :func:`functools.partial` of
one, or a recon config, which becomes a :class:`PipelineRecon`), never a lambda.

Examples
--------
>>> from mrprior.batch import run_batch
>>> from mrprior.pipeline import load_recon_config
>>> cfg = load_recon_config(overrides={"method": "sense"})
>>> report = run_batch(sorted(Path("raw").glob("*.h5")), Path("images"), cfg)  # doctest: +SKIP
>>> print(report.format_summary())  # doctest: +SKIP
8 files: 7 reconstructed, 0 already done, 1 failed (21.4 s, scheduler local, 2 workers)
  FAILED /data/raw/scan_5.h5: DataError: ... truncated or corrupt HDF5 file ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from mrprior.errors import CheckpointError, ConfigError, DataError

logger = logging.getLogger(__name__)

#: file name of the batch summary written into the output folder
REPORT_NAME = "batch_report.json"
#: suffix of an output file name (``<input stem><OUTPUT_SUFFIX>``)
OUTPUT_SUFFIX = "_recon.h5"
#: suffix of the done-marker that sits next to a finished output
MARKER_SUFFIX = ".done.json"
#: version of the marker layout; markers of another version are not trusted
MARKER_VERSION = 1

# errors that are a property of the input or the settings: a retry cannot fix them
_PERMANENT_ERRORS: tuple[type[BaseException], ...] = (DataError, ConfigError, CheckpointError)

ReconOne = Callable[[Path, Path], dict]
Status = Literal["done", "skipped", "failed"]


# --------------------------------------------------------------------------------------------
# result containers
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class FileOutcome:
    """What happened to one input file.

    Attributes
    ----------
    input : Path
        The raw file.
    output : Path
        Where its images are (or would have been) written.
    status : {"done", "skipped", "failed"}
        ``done``: reconstructed in this run; ``skipped``: a valid done-marker from an earlier
        run was found; ``failed``: see ``error``.
    seconds : float or None
        Wall time of the successful task (of the earlier run, for a skipped file).
    error : str or None
        ``"<ExceptionType>: <message>"`` of the last attempt, for a failed file.
    summary : dict
        The dictionary the per-file reconstruction returned (JSON-safe).
    worker : str or None
        ``host:pid`` of the worker process that produced the output (or failed).
    traceback : str or None
        Where the last attempt failed (the innermost frames), for a failed file.
    """

    input: Path
    output: Path
    status: Status
    seconds: float | None = None
    error: str | None = None
    summary: dict = dataclasses.field(default_factory=dict)
    worker: str | None = None
    traceback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (paths as strings)."""
        out = dataclasses.asdict(self)
        out["input"] = str(self.input)
        out["output"] = str(self.output)
        return out


@dataclasses.dataclass
class BatchReport:
    """Outcome of :func:`run_batch`, also written to ``out_dir / "batch_report.json"``.

    Attributes
    ----------
    out_dir : Path
        The output folder.
    files : list of FileOutcome
        One entry per input, in input order.
    wall_seconds : float
        Wall time of the whole call, cluster start-up included.
    scheduler : str
        ``"local"`` for the embedded LocalCluster, else the address used.
    n_workers : int
        Workers used (as reported by the scheduler when the batch started).
    retries : int
        Retries allowed per file for transient errors.
    recon : str
        Key identifying the reconstruction (config hash or callable name).
    """

    out_dir: Path
    files: list[FileOutcome]
    wall_seconds: float
    scheduler: str
    n_workers: int
    retries: int
    recon: str

    def _with(self, status: Status) -> list[FileOutcome]:
        return [f for f in self.files if f.status == status]

    @property
    def done(self) -> list[FileOutcome]:
        """Files reconstructed in this run."""
        return self._with("done")

    @property
    def skipped(self) -> list[FileOutcome]:
        """Files already finished by an earlier run."""
        return self._with("skipped")

    @property
    def failed(self) -> list[FileOutcome]:
        """Files whose reconstruction failed (after retries)."""
        return self._with("failed")

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary with counts and one record per file."""
        return {
            "out_dir": str(self.out_dir),
            "scheduler": self.scheduler,
            "n_workers": self.n_workers,
            "retries": self.retries,
            "recon": self.recon,
            "wall_seconds": round(self.wall_seconds, 3),
            "counts": {
                "total": len(self.files),
                "done": len(self.done),
                "skipped": len(self.skipped),
                "failed": len(self.failed),
            },
            "finished_at": _now(),
            "files": [f.to_dict() for f in self.files],
        }

    def format_summary(self) -> str:
        """Plain-text summary: one line per failed file and the counts."""
        lines = [
            f"{len(self.files)} files: {len(self.done)} reconstructed, "
            f"{len(self.skipped)} already done, {len(self.failed)} failed "
            f"({self.wall_seconds:.1f} s, scheduler {self.scheduler}, {self.n_workers} workers)"
        ]
        lines += [f"  FAILED {f.input}: {f.error}" for f in self.failed]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# reconstruction by config
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ReconSummary:
    """What :func:`recon_one_file` did."""

    input: Path
    output: Path
    method: str
    groups: int
    images: int
    seconds: float
    png: list[Path] = dataclasses.field(default_factory=list)
    nifti: Path | None = None
    is_3d: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": str(self.input),
            "output": str(self.output),
            "method": self.method,
            "groups": self.groups,
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "png": [str(p) for p in self.png],
            "nifti": str(self.nifti) if self.nifti else None,
            "is_3d": self.is_3d,
        }


def recon_one_file(
    in_path: str | Path,
    out_path: str | Path,
    cfg: Any,
    png_dir: str | Path | None = None,
    nifti_path: str | Path | None = None,
    progress: bool = True,
) -> ReconSummary:
    """Reconstruct one raw file with ``cfg`` (a ``ReconConfig``) and write its images.

    The raw header is stored in the output file too. When ``png_dir`` is given, PNGs go there:
    one per image for 2D data, one montage per volume (and series) for 3D data. A NIfTI volume
    of the magnitude series goes to ``nifti_path`` (3D: the volume with its affine).

    Raises
    ------
    IncompleteReconstruction
        Some groups had bad data: the images of all other groups are written (and exported)
        first, then the error naming the bad groups is raised.
    """
    from mrprior.io.containers import EncodingInfo
    from mrprior.io.export import export_montage, export_nifti, export_png
    from mrprior.io.images import write_images
    from mrprior.io.raw import read_header
    from mrprior.pipeline import IncompleteReconstruction, reconstruct_file

    t0 = time.perf_counter()
    in_path, out_path = Path(in_path), Path(out_path)
    header = read_header(in_path)
    is_3d = EncodingInfo.from_header(header).is_3d
    incomplete: IncompleteReconstruction | None = None
    try:
        images = reconstruct_file(in_path, cfg, progress=progress)
    except IncompleteReconstruction as exc:
        images, incomplete = exc.images, exc
    write_images(images, out_path, header=header)
    start = cfg.output.series_index_start
    first = [im for im in images if im.image_series_index == start]
    groups = len({(im.repetition, im.contrast, im.phase, im.set, im.average) for im in first})
    groups = groups if is_3d else len(first)
    summary = ReconSummary(
        input=in_path,
        output=out_path,
        method=cfg.method,
        groups=groups,
        images=len(images),
        seconds=time.perf_counter() - t0,
        is_3d=is_3d,
    )
    if png_dir is not None:
        export = export_montage if is_3d else export_png
        summary.png = export(images, png_dir, prefix=in_path.stem)
    if nifti_path is not None:
        summary.nifti = export_nifti(images, nifti_path, series_index=start)
    summary.seconds = time.perf_counter() - t0
    if incomplete is not None:
        raise incomplete
    return summary


@dataclasses.dataclass(frozen=True)
class PipelineRecon:
    """Picklable per-file reconstruction ``(in_path, out_path) -> summary`` from a recon config.

    :func:`recon_one_file`: the same steps as ``mrprior recon`` for one file (2D or 3D).
    Imports happen on the worker at call time.

    Parameters
    ----------
    config : ReconConfig
        The recon config (from :func:`mrprior.pipeline.load_recon_config`).
    png_dir : Path, optional
        Also write windowed PNGs (3D: montages) to ``png_dir / <input stem>/``.
    nifti_dir : Path, optional
        Also write the magnitude series as ``nifti_dir / <input stem>.nii.gz``.
    """

    config: Any
    png_dir: Path | None = None
    nifti_dir: Path | None = None

    def __call__(self, in_path: Path, out_path: Path) -> dict:
        in_path = Path(in_path)
        png = None if self.png_dir is None else Path(self.png_dir) / in_path.stem
        nifti = None if self.nifti_dir is None else Path(self.nifti_dir) / f"{in_path.stem}.nii.gz"
        summary = recon_one_file(
            in_path, out_path, self.config, png_dir=png, nifti_path=nifti, progress=False
        ).to_dict()
        summary["recon_seconds"] = summary.pop("seconds")
        if self.png_dir is None:
            summary.pop("png")
        if self.nifti_dir is None:
            summary.pop("nifti")
        return summary

    @property
    def key(self) -> str:
        """Hash of the config, so that a changed config reconstructs again."""
        from mrprior.config import to_dict

        try:
            text = json.dumps(to_dict(self.config), sort_keys=True, default=str)
        except (TypeError, ValueError):
            text = repr(self.config)
        return "config:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _recon_key(recon_one: Callable[..., dict]) -> str:
    """Stable identifier of a reconstruction callable, stored in the done-markers."""
    key = getattr(recon_one, "key", None)
    if isinstance(key, str):
        return key
    if isinstance(recon_one, functools.partial):
        args = json.dumps(
            [repr(a) for a in recon_one.args]
            + [f"{k}={v!r}" for k, v in sorted(recon_one.keywords.items())]
        )
        digest = hashlib.sha256(args.encode()).hexdigest()[:16]
        return f"{_recon_key(recon_one.func)}:{digest}"
    module = getattr(recon_one, "__module__", None) or type(recon_one).__module__
    name = getattr(recon_one, "__qualname__", None) or type(recon_one).__qualname__
    return f"{module}.{name}"


def _as_callable(recon_one: ReconOne | Any) -> ReconOne:
    if callable(recon_one):
        if getattr(recon_one, "__name__", "") == "<lambda>" or "<locals>" in getattr(
            recon_one, "__qualname__", ""
        ):
            raise ConfigError(
                "recon_one must be picklable by reference for Dask workers: "
                "use a module-level function, a functools.partial of one, or a recon config"
            )
        return recon_one
    return PipelineRecon(recon_one)


# --------------------------------------------------------------------------------------------
# files, markers, atomic writes
# --------------------------------------------------------------------------------------------
def output_path_for(input_path: Path, out_dir: Path) -> Path:
    """Image file that :func:`run_batch` writes for ``input_path``: ``<stem>_recon.h5``."""
    return Path(out_dir) / f"{Path(input_path).stem}{OUTPUT_SUFFIX}"


def marker_path_for(output_path: Path) -> Path:
    """Done-marker of an output file: ``<output name>.done.json`` in the same folder."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.name + MARKER_SUFFIX)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON under a temporary name, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def read_marker(output_path: Path) -> dict[str, Any] | None:
    """The done-marker of ``output_path`` as a dict, or None when absent or unreadable."""
    marker = marker_path_for(output_path)
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_finished(input_path: Path, output_path: Path, recon_key: str) -> dict[str, Any] | None:
    """The done-marker when ``output_path`` is a complete result of ``input_path``, else None.

    Complete means: the marker exists with this layout version and reconstruction key; it names
    this input, with the input's current size and contents; and the output exists with the size
    recorded in the marker. Contents are compared by modification time first and, when that
    differs, by SHA-256 (readers such as ``ismrmrd.Dataset`` open files read-write, which
    touches the modification time without changing a byte); a matching hash refreshes the
    marker's time, so later checks are cheap again.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    marker = read_marker(output_path)
    if marker is None or marker.get("version") != MARKER_VERSION:
        return None
    if marker.get("recon") != recon_key:
        logger.info("%s: finished with another reconstruction, redoing it", output_path)
        return None
    try:
        st = input_path.stat()
        out_bytes = output_path.stat().st_size
    except FileNotFoundError:
        return None
    if (
        marker.get("input") != str(input_path)
        or marker.get("input_bytes") != st.st_size
        or marker.get("output_bytes") != out_bytes
    ):
        logger.info("%s: input or output changed since it was finished, redoing it", output_path)
        return None
    if marker.get("input_mtime_ns") != st.st_mtime_ns:
        if marker.get("input_sha256") != file_sha256(input_path):
            logger.info("%s: input contents changed since it was finished, redoing it", input_path)
            return None
        marker = {**marker, "input_mtime_ns": st.st_mtime_ns}
        _write_json_atomic(marker_path_for(output_path), marker)
    return marker


def _json_safe(obj: Any) -> Any:
    """Round-trip through JSON so that numpy scalars, paths etc. become plain values."""
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item") and callable(obj.item):
        with contextlib.suppress(Exception):
            return obj.item()
    return str(obj)


def _replace_strings(obj: Any, old: str, new: str) -> Any:
    """``obj`` (JSON values) with ``old`` replaced by ``new`` in every string."""
    if isinstance(obj, str):
        return obj.replace(old, new)
    if isinstance(obj, list):
        return [_replace_strings(v, old, new) for v in obj]
    if isinstance(obj, dict):
        return {k: _replace_strings(v, old, new) for k, v in obj.items()}
    return obj


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# the task (runs on a worker)
# --------------------------------------------------------------------------------------------
def process_file(
    input_path: Path, output_path: Path, recon_one: ReconOne, recon_key: str
) -> dict[str, Any]:
    """Reconstruct one file into ``output_path`` atomically and write its done-marker.

    This is the Dask task. The reconstruction writes to a temporary file in the output folder
    (same suffix, so writers that choose a format by suffix still work), which is renamed to
    ``output_path`` once complete; the done-marker follows. Errors that retrying cannot fix
    (:class:`~mrprior.errors.DataError`, :class:`~mrprior.errors.ConfigError`,
    :class:`~mrprior.errors.CheckpointError`) are returned as a ``failed`` record; any other
    exception propagates so that Dask retries the task.

    Parameters
    ----------
    input_path : Path
        Raw ISMRMRD file.
    output_path : Path
        Final image file.
    recon_one : callable
        ``recon_one(input_path, tmp_output_path) -> dict`` that writes the images.
    recon_key : str
        Identifier of the reconstruction, stored in the marker.

    Returns
    -------
    dict
        ``{"status": "done" | "failed", "seconds", "summary", "worker", "error"}``.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    tmp = output_path.with_name(
        f".{output_path.stem}.partial-{uuid.uuid4().hex[:8]}{output_path.suffix}"
    )
    t0 = time.perf_counter()
    try:
        input_sha256 = file_sha256(input_path)
        summary = recon_one(input_path, tmp)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise DataError(f"the reconstruction wrote no output for {input_path}")
        _fsync_file(tmp)
        with contextlib.suppress(FileNotFoundError):
            marker_path_for(output_path).unlink()  # a marker of an earlier result goes first
        os.replace(tmp, output_path)
    except _PERMANENT_ERRORS as exc:
        logger.info("%s failed: %s", input_path, exc)
        return {
            "status": "failed",
            "error": _error_text(exc),
            "traceback": _traceback_text(exc.__traceback__),
            "worker": worker,
        }
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    seconds = time.perf_counter() - t0
    if not isinstance(summary, dict):
        to_dict = getattr(summary, "to_dict", None)
        summary = to_dict() if callable(to_dict) else {"result": summary}
    summary = _replace_strings(_json_safe(summary), str(tmp), str(output_path))
    st = input_path.stat()  # after the reconstruction: a reader may have touched its mtime
    _write_json_atomic(
        marker_path_for(output_path),
        {
            "version": MARKER_VERSION,
            "input": str(input_path),
            "input_bytes": st.st_size,
            "input_mtime_ns": st.st_mtime_ns,
            "input_sha256": input_sha256,
            "output": output_path.name,
            "output_bytes": output_path.stat().st_size,
            "recon": recon_key,
            "seconds": round(seconds, 3),
            "worker": worker,
            "finished_at": _now(),
            "summary": summary,
        },
    )
    return {"status": "done", "seconds": seconds, "summary": summary, "worker": worker}


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {text}"


def _traceback_text(tb: TracebackType | None, frames: int = 6) -> str | None:
    """The innermost ``frames`` frames of a traceback as text."""
    if tb is None:
        return None
    return "".join(traceback.format_tb(tb)[-frames:]).rstrip() or None


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """Keep Dask's INFO chatter (cluster start/stop, connections) out of the user's terminal
    unless mrprior itself logs at DEBUG; failures are reported per file anyway."""
    dask_logger = logging.getLogger("distributed")
    old = dask_logger.level
    if logging.getLogger("mrprior").getEffectiveLevel() > logging.DEBUG:
        dask_logger.setLevel(max(old, logging.WARNING))
    try:
        yield
    finally:
        dask_logger.setLevel(old)


@contextlib.contextmanager
def _client(scheduler: str | None, n_workers: int, threads: int) -> Iterator[Any]:
    """A connected ``distributed.Client``: embedded LocalCluster or a scheduler address."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - dev extra installs it
        raise ConfigError(
            'batch reconstruction needs Dask distributed: pip install "mrprior[cluster]"'
        ) from exc
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    limits = {
        name: str(threads)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,  # failures are reported per file, with traceback
            env=limits,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def run_batch(
    inputs: Sequence[Path | str],
    out_dir: Path | str,
    recon_one: ReconOne | Any,
    scheduler: str | None = None,
    n_workers: int = 2,
    retries: int = 2,
    progress: bool = True,
    *,
    threads: int = 1,
    overwrite: bool = False,
) -> BatchReport:
    """Reconstruct many raw files on Dask distributed into a resumable output folder.

    Parameters
    ----------
    inputs : sequence of Path
        Raw ISMRMRD HDF5 files; their stems must be unique (outputs are
        ``out_dir / "<stem>_recon.h5"``).
    out_dir : Path
        Output folder (created). Holds the image files, their ``.done.json`` markers and
        ``batch_report.json``.
    recon_one : callable or recon config
        ``recon_one(in_path, out_path) -> summary`` writing the images of one file (the summary
        is a dict, or an object with ``to_dict()``), picklable by reference (a module-level
        function or a :func:`functools.partial` of one); or a recon config object,
        reconstructed through :class:`PipelineRecon`.
    scheduler : str, optional
        Dask scheduler address (``tcp://host:8786``); None starts an embedded LocalCluster with
        ``n_workers`` worker processes of one thread each.
    n_workers : int
        Workers of the embedded cluster (ignored with ``scheduler``).
    retries : int
        Extra attempts per file after an unexpected error (worker lost, I/O hiccup). Errors of
        the input itself (:class:`~mrprior.errors.DataError` and friends) are not retried.
    progress : bool
        Show a tqdm bar over completed files.
    threads : int
        Intra-op threads (OMP/MKL/OpenBLAS) of each embedded worker.
    overwrite : bool
        Reconstruct again even the files that have a valid done-marker.

    Returns
    -------
    BatchReport
        Per-file outcomes; also written to ``out_dir / "batch_report.json"``.

    Raises
    ------
    ConfigError
        No inputs, duplicate input stems, a non-picklable ``recon_one``, or bad counts.
    """
    t_start = time.perf_counter()
    if not inputs:
        raise ConfigError("run_batch: no input files")
    if n_workers < 1 or retries < 0 or threads < 1:
        raise ConfigError(f"run_batch: {n_workers=} must be >= 1, {retries=} >= 0, {threads=} >= 1")
    paths = [Path(p).expanduser().resolve() for p in inputs]
    out_dir = Path(out_dir).expanduser().resolve()
    outputs = [output_path_for(p, out_dir) for p in paths]
    seen: dict[Path, Path] = {}
    for p, o in zip(paths, outputs, strict=True):
        if o in seen:
            raise ConfigError(f"run_batch: {seen[o]} and {p} would both write {o.name}")
        seen[o] = p
    recon = _as_callable(recon_one)
    key = _recon_key(recon)
    out_dir.mkdir(parents=True, exist_ok=True)

    outcomes: list[FileOutcome | None] = [None] * len(paths)
    todo: list[int] = []
    for i, (p, o) in enumerate(zip(paths, outputs, strict=True)):
        if not p.is_file():
            outcomes[i] = FileOutcome(p, o, "failed", error=f"FileNotFoundError: {p}")
            continue
        marker = None if overwrite else is_finished(p, o, key)
        if marker is not None:
            outcomes[i] = FileOutcome(
                p,
                o,
                "skipped",
                seconds=marker.get("seconds"),
                summary=marker.get("summary", {}),
                worker=marker.get("worker"),
            )
        else:
            todo.append(i)
    n_skipped = sum(o is not None and o.status == "skipped" for o in outcomes)
    logger.info(
        "batch: %d files, %d already done, %d to reconstruct", len(paths), n_skipped, len(todo)
    )

    workers_seen = 0
    if todo:
        workers_seen = _run_tasks(
            todo, paths, outputs, recon, key, outcomes, scheduler, n_workers, retries,
            threads, progress, n_skipped,
        )  # fmt: skip
    report = BatchReport(
        out_dir=out_dir,
        files=[o for o in outcomes if o is not None],
        wall_seconds=time.perf_counter() - t_start,
        scheduler=scheduler or "local",
        n_workers=workers_seen,
        retries=retries,
        recon=key,
    )
    _write_json_atomic(out_dir / REPORT_NAME, report.to_dict())
    for f in report.failed:
        logger.warning("batch: %s failed: %s", f.input, f.error)
    return report


def _run_tasks(
    todo: list[int],
    paths: list[Path],
    outputs: list[Path],
    recon: ReconOne,
    key: str,
    outcomes: list[FileOutcome | None],
    scheduler: str | None,
    n_workers: int,
    retries: int,
    threads: int,
    progress: bool,
    n_skipped: int,
) -> int:
    """Submit one task per file, collect results as they complete; returns the worker count."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    batch_id = uuid.uuid4().hex[:8]
    with _quiet_distributed(), _client(scheduler, n_workers, threads) as client:
        if scheduler is None:
            client.wait_for_workers(n_workers)
        workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        futures = {}
        for i in todo:
            fut = client.submit(
                process_file,
                paths[i],
                outputs[i],
                recon,
                key,
                key=f"mrprior-recon-{batch_id}-{i}-{paths[i].stem}",
                retries=retries,
                pure=False,
            )
            futures[fut] = i
        bar = tqdm(
            total=len(paths),
            initial=n_skipped,
            unit="file",
            desc="reconstructing",
            disable=not progress,
        )
        n_failed = 0
        with bar:
            for fut in as_completed(futures):
                i = futures[fut]
                outcomes[i] = _outcome(fut, paths[i], outputs[i])
                n_failed += outcomes[i].status == "failed"
                bar.set_postfix(failed=n_failed, refresh=False)
                bar.update(1)
                fut.release()
    return workers


def _outcome(fut: Any, input_path: Path, output_path: Path) -> FileOutcome:
    """FileOutcome of a finished future (error status means retries were exhausted)."""
    if fut.status != "finished":
        try:
            exc, tb = fut.exception(), fut.traceback()
        except Exception as lookup_error:  # a cancelled future raises here
            exc, tb = lookup_error, None
        return FileOutcome(
            input_path,
            output_path,
            "failed",
            error=_error_text(exc),
            traceback=_traceback_text(tb),
        )
    res = fut.result()
    if res["status"] == "failed":
        return FileOutcome(
            input_path,
            output_path,
            "failed",
            error=res["error"],
            worker=res.get("worker"),
            traceback=res.get("traceback"),
        )
    return FileOutcome(
        input_path,
        output_path,
        "done",
        seconds=res["seconds"],
        summary=res["summary"],
        worker=res["worker"],
    )


__all__ = [
    "MARKER_SUFFIX",
    "OUTPUT_SUFFIX",
    "REPORT_NAME",
    "BatchReport",
    "FileOutcome",
    "PipelineRecon",
    "file_sha256",
    "is_finished",
    "marker_path_for",
    "output_path_for",
    "process_file",
    "read_marker",
    "run_batch",
]
