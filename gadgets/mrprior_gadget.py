"""Gadgetron entry point of mrprior: ``python -m gadgetron <port> mrprior_gadget mrprior_gadget``.

Gadgetron puts ``share/gadgetron/python`` on ``PYTHONPATH`` and imports this module by name; the
implementation lives in the installed package (:mod:`mrprior.gadget`), so this file only
re-exports it. ``python -m gadgetron <port> mrprior.gadget mrprior_gadget`` works without it.
Run ``python gadgets/mrprior_gadget.py --port 9100`` for Gadgetron's ``<connect>`` mode. Started
without a target (``python -m gadgetron <port> mrprior_gadget``, as Gadgetron starts the workers
of a distributed chain), the module serves the connection itself.
"""

import sys

from mrprior.gadget import main, mrprior_gadget, serve_module_level

__all__ = ["main", "mrprior_gadget"]

if __name__ == "__main__":
    sys.exit(main())
else:  # `python -m gadgetron <port> mrprior_gadget` without a target (distributed workers)
    serve_module_level(__name__)
