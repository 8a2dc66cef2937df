"""Shared raw-data fixtures (see tests/gadget/rawdata.py)."""

from tests.gadget.rawdata import raw_a2, raw_a3

__all__ = ["raw_a2", "raw_a3"]
