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
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=3.0,
        metavar="S",
        help="on SIGTERM/SIGINT, seconds running reconstructions may take to finish before they "
        "are cancelled (default: 3; a second signal cancels at once)",
    )
    p.add_argument(
        "--keepalive",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between progress TEXT messages to MRD clients during a reconstruction "
        "(default: 5; 0: none). Gadgetron peers never get TEXT.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from mrprior.server import CONFIGS, MRDServer

    if args.list_configs:
        for name, overrides in sorted(CONFIGS.items()):
            print(f"{name:20s} {overrides or '(defaults from recon.yaml)'}")
        return 0
    logging.getLogger("mrprior").setLevel(min(logging.getLogger().level, logging.INFO))
    server = MRDServer(args.host, args.port, keepalive_s=args.keepalive).bind()
    signals: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        # only set flags here: the main thread stops accepting and shuts down in order
        signals.append(signal.Signals(signum).name)
        server.request_stop()
        if len(signals) > 1:
            server.cancel_all(f"server stopping ({signals[-1]})")

    # stop cleanly on Ctrl-C and on SIGTERM (docker stop), also when the parent started us with
    # SIGINT ignored (a background job of a non-interactive shell inherits SIG_IGN)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    print(f"mrprior serve: listening on {args.host}:{server.port} (Ctrl-C to stop)", flush=True)
    server.serve_forever()
    running = server.active
    print(
        f"mrprior serve: {signals[0] if signals else 'stop'}: not accepting connections; "
        f"{running} running (grace {args.shutdown_grace:g} s, then cancelled)",
        flush=True,
    )
    clean = server.shutdown(timeout=30.0, grace_s=args.shutdown_grace)
    print(f"mrprior serve: stopped{'' if clean else ' (a connection did not end)'}", flush=True)
    if signals or not clean:
        # Stopped by a signal (docker stop): every connection has ended and reported; leave now,
        # without the interpreter teardown of torch's thread pools (seconds on a busy machine,
        # and where a thread still in native code would abort the process).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
