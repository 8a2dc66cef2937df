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
from typing import Any

from mrprior.io.protocol import MRDConnection
from mrprior.node import NodeStats, fail, process
from mrprior.server import normalize_config_name, parse_config_text, resolve_recon_config

logger = logging.getLogger("mrprior.gadget")

__all__ = ["main", "mrprior_gadget"]


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


if __name__ == "__main__":
    sys.exit(main())
