"""``mrprior serve``: run the standalone MRD server (see :mod:`mrprior.server`)."""

from __future__ import annotations

import argparse
import logging
import signal


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run a standalone MRD server (FIRE / python-ismrmrd-server compatible)",
        description=(
            "Serve MRD connections: each client sends a config (CONFIG_FILE name such as "
            "mrprior_sense, or CONFIG_TEXT), the ISMRMRD header and acquisitions, and receives "
            "images (or ERROR naming the cause). One thread per connection. Also usable as the "
            "target of a Gadgetron <external><connect port=...> node."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=9002, help="TCP port (default: 9002)")
    p.add_argument("--list-configs", action="store_true", help="print the config names and exit")
    p.set_defaults(func=run)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    from mrprior.server import CONFIGS, MRDServer

    if args.list_configs:
        for name, overrides in sorted(CONFIGS.items()):
            print(f"{name:20s} {overrides or '(defaults from recon.yaml)'}")
        return 0
    logging.getLogger("mrprior").setLevel(min(logging.getLogger().level, logging.INFO))
    server = MRDServer(args.host, args.port).bind()
    # stop cleanly on Ctrl-C and on SIGTERM (docker stop), also when the parent started us with
    # SIGINT ignored (a background job of a non-interactive shell inherits SIG_IGN)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    print(f"mrprior serve: listening on {args.host}:{server.port} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown(timeout=1.0)
    return 0
