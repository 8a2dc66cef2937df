"""``mrprior replay``: stream a raw ISMRMRD file to a node and store the returned images."""

from __future__ import annotations

import argparse


def _parse_set(items: list[str]) -> dict[str, str]:
    from mrprior.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay",
        help="stream a raw ISMRMRD file to a running node (or an in-process one)",
        description=(
            "Send the file's header and acquisitions (noise scans included) over the MRD "
            "protocol as a FIRE client does (config name, header, --set overrides as JSON "
            "parameters TEXT), print the node's TEXT messages with their level, collect every "
            "returned image into an ISMRMRD HDF5 file (images of a series that differ in size "
            "go to separate groups), and report throughput and per-slice latency. Exits "
            "non-zero if the node reports an error."
        ),
    )
    p.add_argument("raw", help="raw ISMRMRD HDF5 file")
    p.add_argument("--host", default="127.0.0.1", help="node address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=9002, help="node port (default: 9002)")
    p.add_argument("--local", action="store_true", help="run the node in this process")
    p.add_argument("--config", default="default", help="config name (default: default)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recon setting sent in the JSON parameters (repeatable)",
    )
    p.add_argument("-o", "--output", required=True, help="output ISMRMRD image file (.h5)")
    p.add_argument("--png", metavar="DIR", help="also write PNG files to DIR")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up after S seconds without a byte from the node (default: wait as long as "
        "the connection, or the --local node, is alive; mrprior serve sends progress while it "
        "works)",
    )
    p.add_argument(
        "--quiet-node",
        action="store_true",
        help="do not print the node's INFO/WARNING TEXT messages (errors are always shown)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from mrprior.errors import MRPriorError
    from mrprior.io.export import export_png
    from mrprior.io.images import write_images
    from mrprior.replay import replay

    overrides = _parse_set(args.set)
    if not args.quiet_node:  # show the node's TEXT messages with their level as they arrive
        import logging

        node_log = logging.getLogger("mrprior.replay")
        if node_log.getEffectiveLevel() > logging.INFO:
            node_log.setLevel(logging.INFO)
    result = replay(
        args.raw,
        host=args.host,
        port=args.port,
        local=args.local,
        config_name=args.config,
        overrides=overrides or None,
        timeout=args.timeout,
    )
    print(result.summary())
    if result.images:
        write_images(result.images, args.output, header=result.header_xml)
        print(f"wrote {len(result.images)} images to {args.output}")
        if args.png:
            paths = export_png(result.images, args.png)
            print(f"wrote {len(paths)} PNG files to {args.png}")
    if result.errors:
        raise MRPriorError(f"node sent ERROR: {result.errors[0]}")
    if not result.closed_cleanly or result.send_error:
        print(f"mrprior replay: {result.send_error or 'connection dropped'}", file=sys.stderr)
        return 1
    if not result.images:
        raise MRPriorError("node returned no images")
    return 0
