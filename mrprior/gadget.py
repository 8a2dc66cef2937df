"""mrprior as a Gadgetron external Python node (``gadgetron.external``), in both launch modes.

**Gadgetron starts the node** (``<external><execute .../></external>``)::

    <external>
      <execute name="mrprior_gadget" target="mrprior_gadget" type="python"/>
      <configuration>
        <property name="config" value="mrprior_sense"/>   <!-- registry entry (optional) -->
        <property name="method" value="sense"/>           <!-- any ReconConfig key -->
      </configuration>
    </external>

Gadgetron runs ``python -m gadgetron <port> mrprior_gadget mrprior_gadget`` with
``share/gadgetron/python`` (holding the thin shim ``gadgets/mrprior_gadget.py``) on ``PYTHONPATH``
— ``python -m gadgetron <port> mrprior.gadget mrprior_gadget`` needs no shim; the child connects back to ``localhost:<port>``,
receives CONFIG (the ``<configuration>`` element above) and HEADER, and calls
:func:`mrprior_gadget` with the connection.

**Gadgetron starts the node without a target** (the workers of a distributed chain:
Gadgetron re-serializes a worker's ``<execute>`` with ``name`` and ``type`` only, so the worker
runs ``python -m gadgetron <port> mrprior_gadget``). gadgetron-python then imports the module and
expects it to handle the connection itself: newer releases let the module register its handler
(``gadgetron.external.handlers.register_handler``); 1.4.1 looks up a target named ``None`` and
fails. :func:`serve_module_level`, called when this module (or the ``gadgets/`` shim) is
imported, covers both: it registers the handler where gadgetron-python supports that, and
otherwise serves the connection that ``python -m gadgetron`` has just opened and exits with
status 0.

**Gadgetron connects to a running node** (``<external><connect port="9100"/>...``): start it with
``python -m mrprior.gadget --port 9100`` (``gadgetron.external.listen``, one connection at
a time), or point the chain at ``mrprior serve --port 9100``, which speaks the same protocol and
serves connections concurrently.

Property values override the YAML recon settings (``configs/recon.yaml``) of the same name;
``config`` picks a registry entry of :data:`mrprior.server.CONFIGS` and ``yaml`` a YAML file to
start from. Unknown property names are an error (named in the ERROR message).

Errors: gadgetron-python 1.4.1 ends a handler exception in a plain CLOSE, spins forever when the
peer disconnects mid-message, and silently stops at unknown message ids. This node therefore
takes over the socket after the CONFIG/HEADER exchange (:meth:`MRDConnection.adopt`), reads with
mrprior's protocol reader, and ends every failure in ERROR (8) naming the cause, then CLOSE.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from mrprior.io.protocol import MRDConnection
from mrprior.node import NodeStats, fail, process
from mrprior.server import normalize_config_name, parse_config_text, resolve_recon_config

logger = logging.getLogger("mrprior.gadget")

__all__ = ["main", "mrprior_gadget", "serve_module_level"]


def mrprior_gadget(connection: Any) -> NodeStats:
    """Gadgetron target: reconstruct what ``connection`` (``gadgetron.external.Connection``) streams.

    Works for both launch modes; sends images, ERROR (8) on failure, and closes the connection
    (Gadgetron's own close at the end of its ``with`` block then does nothing).
    """
    mrd = MRDConnection.adopt(connection)
    name = "default"
    try:
        raw = getattr(getattr(connection, "raw_bytes", None), "config", None) or b""
        config_name, props = parse_config_text(raw)
        name = normalize_config_name(config_name)
        yaml_path = props.pop("yaml", None)
        cfg = resolve_recon_config(name, props, yaml_path)
    except Exception as exc:  # a bad configuration ends in ERROR + CLOSE like any other failure
        return NodeStats(config_name=name, error=fail(mrd, name, exc))
    header = getattr(getattr(connection, "raw_bytes", None), "header", None)
    if header is None:
        header = connection.header
    return process(mrd, name, header, cfg)


def main(argv: list[str] | None = None) -> int:
    """Listen for Gadgetron (``<connect port=...>`` mode) with ``gadgetron.external.listen``."""
    import gadgetron.external

    parser = argparse.ArgumentParser(
        prog="mrprior_gadget",
        description="Run the mrprior gadget as a listening Gadgetron external node.",
    )
    parser.add_argument("--port", type=int, default=9100, help="TCP port to listen on")
    parser.add_argument("--once", action="store_true", help="serve one connection, then exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    while True:
        try:
            gadgetron.external.listen(args.port, mrprior_gadget)
        except KeyboardInterrupt:
            return 130
        except Exception:  # e.g. a peer whose header gadgetron cannot parse: keep listening
            logger.exception("connection failed before the gadget could start")
            if args.once:
                return 1
        if args.once:
            return 0


def _launched_without_target(module_name: str) -> bool:
    """Whether this process is ``python -m gadgetron <port> <module_name>`` (no target)."""
    argv = sys.argv
    launcher = Path(argv[0]) if argv else Path()
    return (
        len(argv) == 3
        and launcher.name == "__main__.py"
        and launcher.parent.name == "gadgetron"
        and argv[2] == module_name
    )


def _launch_connection() -> Any:
    """The connection that ``gadgetron.__main__.main`` has opened (its local ``conn``)."""
    from gadgetron.external import Connection

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("conn")
        if isinstance(candidate, Connection):
            return candidate
        frame = frame.f_back
    return None


def serve_module_level(module_name: str) -> None:
    """Serve Gadgetron's connection when the node was started without a target.

    Called at import by this module and by the ``gadgets/`` shim with their own ``__name__``;
    does nothing unless the process is ``python -m gadgetron <port> <module_name>``.
    """
    if not _launched_without_target(module_name):
        return
    launcher = sys.modules.get("__main__")
    if hasattr(launcher, "indirect_target_provider"):  # gadgetron-python with handler hooks
        from gadgetron.external import handlers

        handlers.register_handler(mrprior_gadget)
        return
    connection = _launch_connection()
    if connection is None:
        raise RuntimeError(
            f"{module_name} started as `python -m gadgetron <port> {module_name}` without a "
            "target, but no open Gadgetron connection was found to serve"
        )
    logger.info("started without a target (Gadgetron worker): serving the connection")
    mrprior_gadget(connection)
    logging.shutdown()
    # leave through gadgetron's `with` block (it closes the already closed connection) with
    # status 0, before it looks up the missing target
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
else:
    serve_module_level(__name__)
