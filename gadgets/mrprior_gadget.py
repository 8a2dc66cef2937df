"""Gadgetron entry point of mrprior: ``python -m gadgetron <port> mrprior_gadget mrprior_gadget``.

Gadgetron puts ``share/gadgetron/python`` on ``PYTHONPATH`` and imports this module by name; the
implementation lives in the installed package (:mod:`mrprior.gadget`), so this file only
re-exports it. ``python -m gadgetron <port> mrprior.gadget mrprior_gadget`` works without it.
Run ``python gadgets/mrprior_gadget.py --port 9100`` for Gadgetron's ``<connect>`` mode.
"""

import sys

from mrprior.gadget import main, mrprior_gadget

__all__ = ["main", "mrprior_gadget"]

if __name__ == "__main__":
    sys.exit(main())
