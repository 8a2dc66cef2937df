"""The source registry and ``mrprior data fetch``: no network (a fake downloader / local pip)."""

from __future__ import annotations

import hashlib
import io
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from mrprior.errors import DataError
from mrprior.priors import sources as S


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


NII = b"fake image bytes " * 50
DCM = b"another member"
TBZ_INNER = b"inside the tarball"


def _sdist(path: Path, members: dict[str, bytes], top: str = "pkg-1.0") -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def _tbz2(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:bz2") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    name, version = path.name.split("-")[:2]
    with zipfile.ZipFile(path, "w") as z:
        for m, data in members.items():
            z.writestr(m, data)
        di = f"{name}-{version}.dist-info"
        z.writestr(f"{di}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{di}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{di}/RECORD", "")
    return path


@pytest.fixture()
def index(tmp_path: Path) -> tuple[Path, Path]:
    """A local package folder with one sdist and one wheel, and a registry describing them."""
    links = tmp_path / "links"
    links.mkdir()
    tbz = _tbz2({"series/MR0": TBZ_INNER})
    sd = _sdist(links / "pkg-1.0.tar.gz", {"data/a.nii.gz": NII, "data/b.dcm": DCM})
    wh = _wheel(links / "fakewheel-2.0-py3-none-any.whl", {"fakewheel/t/x.tbz2": tbz})
    reg = {
        "sources": {
            "src-a": {
                "package": "pkg",
                "version": "1.0",
                "registry": "pypi-sdist",
                "archive": sd.name,
                "archive_sha256": _sha(sd.read_bytes()),
                "members": {"data/a.nii.gz": _sha(NII)},
                "licence": "MIT",
                "role": "train",
                "subject": "a",
            },
            "src-b": {
                "package": "pkg",
                "version": "1.0",
                "registry": "pypi-sdist",
                "archive": sd.name,
                "archive_sha256": _sha(sd.read_bytes()),
                "members": {"data/b.dcm": _sha(DCM)},
                "licence": "MIT",
                "role": "eval",
                "subject": "b",
            },
            "src-w": {
                "package": "fakewheel",
                "version": "2.0",
                "registry": "pypi-wheel",
                "archive": wh.name,
                "archive_sha256": _sha(wh.read_bytes()),
                "members": {"fakewheel/t/x.tbz2": _sha(tbz)},
                "unpack": ["fakewheel/t/x.tbz2"],
                "licence": "BSD-3-Clause",
                "role": "train",
                "subject": "w",
            },
        }
    }
    rpath = tmp_path / "sources.yaml"
    rpath.write_text(yaml.safe_dump(reg))
    return links, rpath


def copying_downloader(links: Path, calls: list[str]):
    def download(src: S.Source, dest: Path) -> Path:
        calls.append(src.archive)
        p = links / src.archive
        if not p.exists():
            raise DataError(f"package {src.package}=={src.version} not found")
        shutil.copy2(p, dest / src.archive)
        return dest / src.archive

    return download


def _leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


def test_shipped_registry_is_complete():
    reg = S.load_registry()
    assert {s.role for s in reg.values()} == {"train", "eval"}
    for s in reg.values():
        assert s.archive_sha256 and all(s.members.values()), s.name
        assert s.licence and s.subject
    # GPL data never trains shipped weights
    assert all(s.role == "eval" for s in reg.values() if "GPL" in s.licence)
    assert {s.name for s in S.sources(role="eval")} >= {"mni152", "renalsegmentor-sub01"}


def test_fetch_extracts_members_and_is_idempotent(index, tmp_path):
    links, rpath = index
    reg = S.load_registry(rpath)
    cache = tmp_path / "cache"
    calls: list[str] = []
    dl = copying_downloader(links, calls)
    got = S.fetch_sources(["src-a", "src-b", "src-w"], cache, registry=reg, download=dl)
    # one download per package file, only the listed members, archives unpacked
    assert calls == ["pkg-1.0.tar.gz", "fakewheel-2.0-py3-none-any.whl"]
    assert [p.read_bytes() for p in got["src-a"]] == [NII]
    assert [p.read_bytes() for p in got["src-b"]] == [DCM]
    assert [p.read_bytes() for p in got["src-w"]] == [TBZ_INNER]
    assert not (cache / "src-a" / "data" / "b.dcm").exists()
    marker = yaml.safe_load((cache / "src-a" / S.MARKER).read_text())
    assert marker["licence"] == "MIT" and marker["members"] == {"data/a.nii.gz": _sha(NII)}
    assert not [p for p in cache.iterdir() if p.name.startswith(".fetch")]
    # second call: nothing downloaded
    again = S.fetch_source("src-a", cache, registry=reg, download=dl)
    assert again == got["src-a"] and len(calls) == 2
    assert S.is_fetched("src-w", cache, registry=reg)
    # a corrupted member is detected and fetched again
    got["src-a"][0].write_bytes(b"tampered")
    assert not S.is_fetched("src-a", cache, registry=reg)
    S.fetch_source("src-a", cache, registry=reg, download=dl)
    assert got["src-a"][0].read_bytes() == NII and len(calls) == 3


def test_missing_package_leaves_nothing(index, tmp_path):
    links, rpath = index
    reg = S.load_registry(rpath)
    (links / "pkg-1.0.tar.gz").unlink()
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="not found"):
        S.fetch_source("src-a", cache, registry=reg, download=copying_downloader(links, []))
    assert _leftovers(cache) == []


def test_missing_member_leaves_nothing(index, tmp_path):
    links, rpath = index
    raw = yaml.safe_load(rpath.read_text())
    raw["sources"]["src-a"]["members"]["data/absent.nii.gz"] = None
    rpath.write_text(yaml.safe_dump(raw))
    reg = S.load_registry(rpath)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"lacks member\(s\) \['data/absent.nii.gz'\]"):
        S.fetch_source("src-a", cache, registry=reg, download=copying_downloader(links, []))
    assert _leftovers(cache) == []


def test_sha256_mismatch_keeps_the_old_copy(index, tmp_path):
    links, rpath = index
    reg = S.load_registry(rpath)
    cache = tmp_path / "cache"
    dl = copying_downloader(links, [])
    S.fetch_source("src-a", cache, registry=reg, download=dl)
    before = _leftovers(cache)
    (cache / "src-a" / S.MARKER).unlink()  # force a new fetch
    _sdist(links / "pkg-1.0.tar.gz", {"data/a.nii.gz": b"changed"})
    with pytest.raises(DataError, match="sha256"):
        S.fetch_source("src-a", cache, registry=reg, download=dl)
    assert _leftovers(cache) == [p for p in before if not p.endswith(S.MARKER)]


def test_unknown_name_and_bad_registry(tmp_path):
    with pytest.raises(DataError, match="unknown data source 'nope'"):
        S.get_source("nope")
    bad = tmp_path / "r.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "sources": {
                    "x": {
                        "package": "p",
                        "version": "1",
                        "registry": "conda",
                        "archive": "p.tgz",
                        "members": {"a": None},
                        "licence": "MIT",
                        "role": "train",
                        "subject": "x",
                    }
                }
            }
        )
    )
    with pytest.raises(DataError, match="registry 'conda'"):
        S.load_registry(bad)


def test_pip_wheel_from_local_index(index, tmp_path):
    """The real ``pip download --only-binary`` path against a local package folder."""
    links, rpath = index
    reg = S.load_registry(rpath)
    cache = tmp_path / "cache"
    files = S.fetch_source("src-w", cache, registry=reg, find_links=links)
    assert [p.read_bytes() for p in files] == [TBZ_INNER]
    with pytest.raises(DataError, match=r"fakewheel==3.0 not found"):
        missing = S.Source(**{**reg["src-w"].__dict__, "name": "w3", "version": "3.0"})
        S.registry_download(missing, tmp_path, find_links=links)


def test_cli_fetch(index, tmp_path, monkeypatch, capsys):
    links, rpath = index
    monkeypatch.setattr(S, "REGISTRY_FILE", rpath)
    from mrprior.cli import main

    cache = tmp_path / "c"
    argv = ["data", "fetch", "--role", "eval", "--cache", str(cache), "--find-links", str(links)]
    monkeypatch.setattr(sys, "argv", ["mrprior", *argv])
    assert main(argv) == 0
    assert "src-b: 1 file(s)" in capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == ["src-b"]
    assert main(["data", "fetch", "nope", "--cache", str(cache)]) == 1
    assert "unknown data source 'nope'" in capsys.readouterr().err


def test_prepare_from_registry_source(tmp_path, monkeypatch):
    """``mrprior prepare --source NAME``: fetched on demand, provenance in the manifest."""
    import nibabel as nib
    import numpy as np

    from mrprior.priors.prepare import PrepareConfig, SourceSpec, prepare_dataset

    vol = tmp_path / "v.nii.gz"
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((12, 10, 8)).astype(np.float32) + 0.5, np.eye(4)), vol)
    links = tmp_path / "links"
    links.mkdir()
    sd = _sdist(links / "pkg-1.0.tar.gz", {"img/v.nii.gz": vol.read_bytes(), "README": b"x"})
    reg = {
        "sources": {
            "vol": {
                "package": "pkg",
                "version": "1.0",
                "registry": "pypi-sdist",
                "archive": sd.name,
                "archive_sha256": _sha(sd.read_bytes()),
                "members": {"img/v.nii.gz": _sha(vol.read_bytes())},
                "licence": "CC0-1.0",
                "role": "train",
                "subject": "subj-v",
            }
        }
    }
    rpath = tmp_path / "sources.yaml"
    rpath.write_text(yaml.safe_dump(reg))
    monkeypatch.setattr(S, "REGISTRY_FILE", rpath)
    calls: list[str] = []
    dl = copying_downloader(links, calls)
    monkeypatch.setattr(S, "registry_download", lambda s, d, find_links=None: dl(s, d))
    cfg = PrepareConfig(sources=[SourceSpec(source="vol")], size=16, cache=str(tmp_path / "c"))
    m = prepare_dataset(cfg, tmp_path / "ds", progress=False)
    assert m["counts"]["total"] == 12 + 10 + 8 and m["train_subjects"] == ["subj-v"]
    rec = m["sources"][0]
    assert rec["licence"] == "CC0-1.0" and rec["registry"]["package"] == "pkg"
    assert rec["registry"]["members"] == reg["sources"]["vol"]["members"]
    prepare_dataset(cfg, tmp_path / "ds2", progress=False)
    assert calls == [sd.name]  # fetched once
