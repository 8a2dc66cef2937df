"""The ``mrprior`` command line: one sub-command per job, each in its own module.

A sub-command module defines ``register(subparsers)`` that adds its parser and sets
``func=handler``; the handler takes the parsed ``argparse.Namespace`` and returns an exit code.
Heavy imports happen inside handlers, so ``mrprior --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mrprior.errors import MRPriorError

# sub-command modules, in the order they appear in --help
COMMANDS = ("recon", "prepare", "data", "train", "bench", "serve", "replay", "demo")

logger = logging.getLogger("mrprior")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrprior",
        description="MRI reconstruction regularized by generative, pretrained image priors.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mrprior.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"mrprior.cli.{name}":
                continue  # sub-command not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MRPriorError as exc:
        print(f"mrprior {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mrprior {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
