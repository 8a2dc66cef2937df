"""Turn magnitude MR images (DICOM, NIfTI, PNG/TIFF, HDF5) into a 2D training dataset.

Every source is read as one or more *volumes* ``[slices, H, W]`` that belong to a *subject*. The
volumes are sliced along the chosen axis (or all three), background slices are dropped, each slice
is normalized to max 1, resampled to square pixels, padded to a square and resized to
``size × size``. Train and validation sets are split **by subject**, so slices of one subject
never appear in both.

Dataset layout (a directory):

``slices.h5``
    ``images``: ``uint16 [N, S, S]`` (value · 65535, attribute ``scale = 1/65535``) or
    ``float32 [N, S, S]`` magnitude slices; or ``images_complex``: ``complex64 [N, S, S]``
    complex slices (from :func:`mrprior.priors.langevin.langevin_phase`);
    ``volume``: ``int32 [N]`` index into ``volumes``; ``axis``, ``slice``: ``int16 [N]``;
    ``split``: ``uint8 [N]`` (0 train, 1 validation); attributes ``volumes``, ``subjects``
    (JSON lists).
``manifest.yaml``
    sources with licences, per-volume counts, the split, skipped files with reasons, the command.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
import torch.nn.functional as F
import yaml

from mrprior.errors import ConfigError, DataError
from mrprior.io.volumes import (
    dicom_slices,
    load_volume,
    mosaic_count,
    slice_position,
    volume_kind,
)

logger = logging.getLogger(__name__)

IMAGE_EXT = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".pgm")
HDF5_EXT = (".h5", ".hdf5")


@dataclass
class SourceSpec:
    """One input: a file or folder, the subject it belongs to, and its licence."""

    #: a file or folder (or empty when ``source`` names a registry source)
    path: str = ""
    #: subject id for the split; default: one subject per volume (file / DICOM series)
    subject: str | None = None
    licence: str | None = None
    #: HDF5 dataset name (default ``reconstruction_rss``, else the only 3D/2D dataset)
    h5_key: str | None = None
    #: a source of the registry (``mrprior data list``): fetched into the cache if needed;
    #: subject and licence default to the registry's
    source: str | None = None


@dataclass
class PrepareConfig:
    """Settings of ``mrprior prepare`` (YAML: ``configs/prepare_*.yaml``; CLI flags override)."""

    sources: list[SourceSpec] = field(default_factory=list)
    #: cache root of registry sources (default ``~/.cache/mrprior/data``)
    cache: str | None = None
    size: int = 256
    axis: Literal["all", "0", "1", "2"] = "all"
    #: fraction of subjects held out (at least one when there are ≥ 2 subjects and > 0)
    val_fraction: float = 0.1
    #: explicit validation subjects (overrides ``val_fraction``)
    val_subjects: list[str] = field(default_factory=list)
    seed: int = 0
    #: a pixel is foreground above ``foreground_threshold`` × the volume's 99.9th percentile
    foreground_threshold: float = 0.1
    #: slices with a smaller foreground fraction are dropped as background
    min_foreground: float = 0.05
    #: images with fewer pixels along a side are not used (through-plane views of a few slices)
    min_side: int = 8
    #: images whose two pixel spacings differ by more than this factor are not used
    #: (through-plane views of thick-slice scans: blocky, not images a scan would produce)
    max_anisotropy: float = 3.0
    dtype: Literal["uint16", "float32"] = "uint16"

    def validate(self) -> None:
        if self.size < 8:
            raise ConfigError(f"size: {self.size} must be ≥ 8")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction: {self.val_fraction} must be in [0, 1)")
        if not 0 <= self.foreground_threshold < 1 or not 0 <= self.min_foreground < 1:
            raise ConfigError("foreground_threshold and min_foreground must be in [0, 1)")
        if self.min_side < 2 or self.max_anisotropy < 1:
            raise ConfigError("min_side must be ≥ 2 and max_anisotropy ≥ 1")
        for i, src in enumerate(self.sources):
            if bool(src.path) == bool(src.source):
                raise ConfigError(f"sources[{i}]: give exactly one of 'path' and 'source'")


@dataclass
class Volume:
    """A magnitude volume ``[D, H, W]`` (float32), its voxel size and provenance."""

    data: np.ndarray
    spacing: tuple[float, float, float]
    name: str
    subject: str
    source: str


# --------------------------------------------------------------------------------------- readers


def _kind(path: Path) -> str | None:
    """``image`` (read here, any 2D image format), ``hdf5``, else :func:`volume_kind`'s
    ``nifti`` / ``nrrd`` / ``pickle`` / ``dicom`` (by name or DICOM preamble), or None."""
    name = path.name.lower()
    if name.endswith(IMAGE_EXT):
        return "image"
    if name.endswith(HDF5_EXT):
        return "hdf5"
    return volume_kind(path)


def _read_nifti(path: Path, spec: SourceSpec) -> list[Volume]:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(img.get_fdata(dtype=np.float32))
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if data.ndim == 2:
        data = data[:, :, None]
        zooms = (*zooms[:2], 1.0)
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise DataError(f"NIfTI image of shape {data.shape} is not 2D, 3D or 4D")
    base = path.name
    subject = spec.subject or base
    vols = []
    for t in range(data.shape[3]):
        name = base if data.shape[3] == 1 else f"{base}[{t}]"
        vols.append(Volume(data[..., t], zooms, name, subject, str(path)))  # type: ignore[arg-type]
    return vols


def _read_volume_file(path: Path, spec: SourceSpec) -> list[Volume]:
    """A NRRD or pickled volume through :func:`load_volume` (a 4D file: one volume per frame)."""
    data, spacing = load_volume(path)
    if data.ndim == 3:
        data = data[..., None]
    subject = spec.subject or path.name
    return [
        Volume(
            data[..., t],
            spacing,
            path.name if data.shape[3] == 1 else f"{path.name}[{t}]",
            subject,
            str(path),
        )
        for t in range(data.shape[3])
    ]


def _read_image(path: Path, spec: SourceSpec) -> list[Volume]:
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        frames = []
        for fr in ImageSequence.Iterator(im):
            if fr.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                fr = fr.convert("L")
            frames.append(np.asarray(fr, dtype=np.float32))
    if not frames:
        raise DataError("image has no frames")
    data = np.stack(frames, axis=0)  # [D, H, W]
    if data.ndim != 3:
        raise DataError(f"image frames of shape {data.shape[1:]} are not 2D")
    return [Volume(data, (1.0, 1.0, 1.0), path.name, spec.subject or path.name, str(path))]


def _read_hdf5(path: Path, spec: SourceSpec) -> list[Volume]:
    with h5py.File(path, "r") as f:
        key = spec.h5_key
        if key is None:
            if "reconstruction_rss" in f:
                key = "reconstruction_rss"
            else:
                cands: list[str] = []
                f.visititems(
                    lambda n, o: (
                        cands.append(n)
                        if isinstance(o, h5py.Dataset) and o.ndim in (2, 3)
                        else None
                    )
                )
                if len(cands) != 1:
                    raise DataError(
                        f"cannot choose an image dataset among {cands}: give h5_key "
                        "(fastMRI files hold 'reconstruction_rss')"
                    )
                key = cands[0]
        if key not in f:
            raise DataError(f"HDF5 dataset {key!r} not found")
        data = np.asarray(f[key])
    if np.iscomplexobj(data):
        data = np.abs(data)
    data = data.astype(np.float32)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise DataError(f"HDF5 dataset {key!r} of shape {data.shape} is not [slices, H, W]")
    # fastMRI-style stacks are 2D slices: only axis 0 is meaningful; spacing unknown → mark
    return [
        Volume(
            data, (math.inf, 1.0, 1.0), f"{path.name}:{key}", spec.subject or path.name, str(path)
        )
    ]


def _read_dicom_series(files: list[Path], spec: SourceSpec) -> tuple[list[Volume], list[dict]]:
    """Group DICOM files by SeriesInstanceUID and stack each series into a volume."""
    import pydicom

    series: dict[str, list[tuple[Any, Path]]] = {}
    skipped = []
    for p in files:
        try:
            ds = pydicom.dcmread(str(p))
            _ = ds.pixel_array  # decodes: fail here, not later
        except Exception as exc:
            skipped.append({"path": str(p), "reason": f"unreadable DICOM: {exc}"})
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or f"nouid:{p}")
        if mosaic_count(ds):  # a Siemens mosaic holds a whole volume: one volume per file
            uid += f"#{getattr(ds, 'InstanceNumber', p.name)}"
        series.setdefault(uid, []).append((ds, p))
    vols = []
    for uid, items in series.items():
        items.sort(key=lambda item: slice_position(item[0]))
        slices = []
        for ds, _p in items:
            slices.append(dicom_slices(ds))
        shapes = {s.shape[1:] for s in slices}
        if len(shapes) != 1:
            skipped.append(
                {"path": str(items[0][1].parent), "reason": f"series {uid}: mixed sizes {shapes}"}
            )
            continue
        data = np.concatenate(slices, axis=0)
        ds0 = items[0][0]
        ps = getattr(ds0, "PixelSpacing", None) or (1.0, 1.0)
        st = float(
            getattr(ds0, "SpacingBetweenSlices", 0) or getattr(ds0, "SliceThickness", 0) or 1.0
        )
        subject = spec.subject or str(getattr(ds0, "PatientID", "") or uid)
        name = f"dicom:{uid}"
        vols.append(Volume(data, (st, float(ps[0]), float(ps[1])), name, subject, spec.path))
    return vols, skipped


def _expand(spec: SourceSpec) -> list[Path]:
    p = Path(spec.path)
    if p.is_dir():
        return sorted(q for q in p.rglob("*") if q.is_file())
    return [p]


def registry_specs(spec: SourceSpec, cache: str | None = None) -> tuple[list[SourceSpec], dict]:
    """File specs of a registry source (fetched if needed) and its provenance record.

    Image files of known kinds become one spec each, except DICOM files, which become one spec
    per folder (so a series stays together); other files (e.g. a PAR header) are left out.
    """
    from mrprior.priors.sources import fetch_source, get_source

    assert spec.source is not None
    src = get_source(spec.source)
    files = fetch_source(src.name, cache)
    subject = spec.subject or src.subject
    licence = spec.licence or src.licence
    out: list[SourceSpec] = []
    dicom_dirs: list[Path] = []
    for f in files:
        kind = _kind(f)
        if kind == "dicom":
            if f.parent not in dicom_dirs:
                dicom_dirs.append(f.parent)
        elif kind is not None:
            out.append(
                SourceSpec(path=str(f), subject=subject, licence=licence, h5_key=spec.h5_key)
            )
    for d in dicom_dirs:
        out.append(SourceSpec(path=str(d), subject=subject, licence=licence))
    return out, src.record()


def read_sources(
    specs: Iterable[SourceSpec], cache: str | None = None
) -> tuple[list[Volume], list[dict], list[dict]]:
    """Read every source into volumes (registry sources are fetched into ``cache`` if needed).

    Returns
    -------
    volumes, skipped, source_records
        ``skipped`` lists ``{"path", "reason"}`` for files that could not be used.
    """
    volumes: list[Volume] = []
    skipped: list[dict] = []
    records: list[dict] = []
    expanded: list[tuple[SourceSpec, dict | None]] = []
    for spec in specs:
        if spec.source:
            subs, rec = registry_specs(spec, cache)
            expanded.extend((s, rec) for s in subs)
        else:
            expanded.append((spec, None))
    for spec, registry_record in expanded:
        paths = _expand(spec)
        n_before = len(volumes)
        if not paths or not Path(spec.path).exists():
            skipped.append({"path": spec.path, "reason": "does not exist"})
        dicoms: list[Path] = []
        for p in paths:
            if not p.exists():
                continue
            kind = _kind(p)
            if kind is None:
                skipped.append({"path": str(p), "reason": "unknown file type"})
                continue
            if kind == "dicom":
                dicoms.append(p)
                continue
            try:
                reader = {
                    "nifti": _read_nifti,
                    "image": _read_image,
                    "hdf5": _read_hdf5,
                    "nrrd": _read_volume_file,
                    "pickle": _read_volume_file,
                }[kind]
                volumes.extend(reader(p, spec))
            except Exception as exc:
                skipped.append({"path": str(p), "reason": f"unreadable {kind}: {exc}"})
        if dicoms:
            vols, sk = _read_dicom_series(dicoms, spec)
            volumes.extend(vols)
            skipped.extend(sk)
        rec = {
            "path": spec.path,
            "licence": spec.licence,
            "subject": spec.subject,
            "volumes": [v.name for v in volumes[n_before:]],
        }
        if registry_record is not None:
            rec["registry"] = registry_record
        records.append(rec)
    return volumes, skipped, records


# ------------------------------------------------------------------------------------- slicing


def resize_to_square(img: np.ndarray, spacing: tuple[float, float], size: int) -> np.ndarray:
    """Resample a 2D slice to square pixels, zero-pad it to a square, and resize to ``size²``.

    The aspect ratio of the physical field of view is kept; resizing is bilinear with
    anti-aliasing. Negative values are clipped to 0.
    """
    h, w = img.shape
    eh, ew = h * spacing[0], w * spacing[1]
    e = max(eh, ew)
    th = max(1, round(size * eh / e))
    tw = max(1, round(size * ew / e))
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    t = F.interpolate(t, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
    out = np.zeros((size, size), np.float32)
    y0, x0 = (size - th) // 2, (size - tw) // 2
    out[y0 : y0 + th, x0 : x0 + tw] = t[0, 0].numpy()
    return np.clip(out, 0, None)


def iter_slices(
    vol: Volume, axes: tuple[int, ...], cfg: PrepareConfig
) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """Yield ``(axis, index, slice or None)``: ``None`` marks a dropped background slice."""
    data = np.nan_to_num(vol.data, nan=0.0, posinf=0.0, neginf=0.0)
    data = np.clip(data, 0, None)
    ref = float(np.percentile(data, 99.9)) if data.size else 0.0
    thr = cfg.foreground_threshold * ref
    singleton = [i for i, n in enumerate(data.shape) if n == 1]
    if singleton:  # a single 2D image: slice across its singleton axis only
        axes = (singleton[0],)
    for ax in axes:
        sp = tuple(s for i, s in enumerate(vol.spacing) if i != ax)
        if not all(math.isfinite(s) for s in sp):
            continue  # stack of 2D slices (infinite spacing): no through-plane images
        shape = [n for i, n in enumerate(data.shape) if i != ax]
        if min(shape) < cfg.min_side or max(sp) > cfg.max_anisotropy * max(min(sp), 1e-9):
            for i in range(data.shape[ax]):  # too few pixels or too anisotropic: dropped
                yield ax, i, None
            continue
        # one contiguous copy per axis: slicing a strided (reoriented) volume is very slow
        stack = np.ascontiguousarray(np.moveaxis(data, ax, 0))
        for i in range(stack.shape[0]):
            sl = stack[i]
            if min(sl.shape) < 2 or ref <= 0 or float((sl > thr).mean()) < cfg.min_foreground:
                yield ax, i, None
                continue
            out = resize_to_square(sl, (sp[0], sp[1]), cfg.size)
            m = float(out.max())
            if m <= 0:
                yield ax, i, None
                continue
            yield ax, i, out / m


def split_subjects(subjects: list[str], cfg: PrepareConfig) -> set[str]:
    """Validation subjects: ``cfg.val_subjects`` or a seeded random fraction (≥ 1 if possible)."""
    uniq = sorted(set(subjects))
    if cfg.val_subjects:
        missing = sorted(set(cfg.val_subjects) - set(uniq))
        if missing:
            raise ConfigError(f"val_subjects {missing} not among the subjects {uniq}")
        return set(cfg.val_subjects)
    if cfg.val_fraction <= 0 or len(uniq) < 2:
        return set()
    n_val = min(len(uniq) - 1, max(1, round(cfg.val_fraction * len(uniq))))
    perm = np.random.default_rng(cfg.seed).permutation(len(uniq))
    return {uniq[i] for i in perm[:n_val]}


def code_version() -> str:
    """``git describe``-style version of the source tree (``unknown`` outside a checkout)."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except Exception:
        from mrprior import __version__

        return f"mrprior {__version__} (no git)"


def prepare_dataset(
    cfg: PrepareConfig, out_dir: str | Path, *, progress: bool = True, command: str | None = None
) -> dict:
    """Build a dataset directory from ``cfg.sources``; return the manifest (also written)."""
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # one small resize per slice: a single thread is fastest (and far faster on a busy machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _prepare(cfg, out, progress, command, tqdm)
    finally:
        torch.set_num_threads(threads)


def _prepare(cfg: PrepareConfig, out: Path, progress: bool, command: str | None, tqdm: Any) -> dict:
    volumes, skipped, records = read_sources(cfg.sources, cfg.cache)
    if not volumes:
        raise DataError(
            "no readable images among the sources"
            + (f"; skipped: {[s['path'] for s in skipped]}" if skipped else "")
        )
    val_subjects = split_subjects([v.subject for v in volumes], cfg)
    axes = (0, 1, 2) if cfg.axis == "all" else (int(cfg.axis),)
    s = cfg.size
    tmp = out / "slices.h5.tmp"
    vol_stats = []
    n = 0
    with h5py.File(tmp, "w") as f:
        dt = np.uint16 if cfg.dtype == "uint16" else np.float32
        ds_img = f.create_dataset(
            "images",
            (0, s, s),
            maxshape=(None, s, s),
            dtype=dt,
            chunks=(1, s, s),
            compression="gzip",
            compression_opts=1,
        )
        cols = {k: [] for k in ("volume", "axis", "slice", "split")}
        total = sum(v.data.shape[a] for v in volumes for a in axes if a < v.data.ndim)
        bar = tqdm(total=total, desc="prepare", unit="slice", disable=not progress)
        for vi, vol in enumerate(volumes):
            kept = dropped = 0
            pending: list[np.ndarray] = []
            is_val = vol.subject in val_subjects
            for ax, idx, img in iter_slices(vol, axes, cfg):
                bar.update(1)
                if img is None:
                    dropped += 1
                    continue
                if dt is np.uint16:
                    q = np.round(img * 65535.0).astype(np.uint16)
                else:
                    q = img.astype(np.float32)
                pending.append(q)
                cols["volume"].append(vi)
                cols["axis"].append(ax)
                cols["slice"].append(idx)
                cols["split"].append(1 if is_val else 0)
                kept += 1
            if pending:
                ds_img.resize(n + len(pending), axis=0)
                ds_img[n : n + len(pending)] = np.stack(pending)
                n += len(pending)
            vol_stats.append(
                {
                    "name": vol.name,
                    "subject": vol.subject,
                    "source": vol.source,
                    "shape": list(vol.data.shape),
                    "spacing": [float(x) if math.isfinite(x) else None for x in vol.spacing],
                    "slices_kept": kept,
                    "slices_dropped": dropped,
                    "split": "val" if is_val else "train",
                }
            )
        bar.close()
        if n == 0:
            raise DataError("every slice was dropped as background: check min_foreground")
        ds_img.attrs["scale"] = 1.0 / 65535.0 if dt is np.uint16 else 1.0
        f.create_dataset("volume", data=np.asarray(cols["volume"], np.int32))
        f.create_dataset("axis", data=np.asarray(cols["axis"], np.int16))
        f.create_dataset("slice", data=np.asarray(cols["slice"], np.int16))
        f.create_dataset("split", data=np.asarray(cols["split"], np.uint8))
        f.attrs["volumes"] = json.dumps([v.name for v in volumes])
        f.attrs["subjects"] = json.dumps([v.subject for v in volumes])
        f.attrs["size"] = s
    tmp.replace(out / "slices.h5")
    split = np.asarray(cols["split"])
    manifest = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command or " ".join(sys.argv),
        "code_version": code_version(),
        "kind": "magnitude",
        "size": s,
        "axis": cfg.axis,
        "dtype": cfg.dtype,
        "seed": cfg.seed,
        "counts": {
            "total": int(n),
            "train": int((split == 0).sum()),
            "val": int((split == 1).sum()),
        },
        "val_subjects": sorted(val_subjects),
        "train_subjects": sorted({v.subject for v in volumes} - val_subjects),
        "sources": records,
        "volumes": vol_stats,
        "skipped": skipped,
        "settings": {
            "foreground_threshold": cfg.foreground_threshold,
            "min_foreground": cfg.min_foreground,
            "min_side": cfg.min_side,
            "max_anisotropy": cfg.max_anisotropy,
            "val_fraction": cfg.val_fraction,
        },
    }
    write_manifest(out / "manifest.yaml", manifest)
    if skipped:
        lines = "\n".join(f"  {s['path']}: {s['reason']}" for s in skipped)
        warnings.warn(f"{len(skipped)} input(s) skipped:\n{lines}", stacklevel=2)
    logger.info("wrote %d slices (%s) to %s", n, manifest["counts"], out)
    return manifest


def write_manifest(path: Path, manifest: dict) -> None:
    """Write a manifest YAML atomically."""
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True))
    tmp.replace(path)


def read_manifest(dataset: str | Path) -> dict:
    """The manifest of a dataset directory (empty dict when it has none)."""
    p = Path(dataset) / "manifest.yaml"
    if not p.exists():
        return {}
    return yaml.safe_load(p.read_text()) or {}
