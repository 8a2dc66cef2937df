"""Cooperative cancellation of a running reconstruction.

A :class:`CancelToken` belongs to one job (one MRD connection, one CLI run). The code that runs
the job makes it current with :func:`cancel_scope`; the hot loops call :func:`check_cancelled`
once per iteration (CG, the network prior's call, each k-space group / plane of the pipeline),
which raises :class:`Cancelled` as soon as anyone has called :meth:`CancelToken.cancel` — from
another thread, e.g. the thread that noticed the peer went away, or a signal handler.

The current token lives in a :class:`contextvars.ContextVar`: each thread (and each asyncio
task) sees its own, so one connection's cancellation never stops another's work, and code with
no token set (tests, library use) pays one ``ContextVar.get`` per iteration and never stops.

This module imports nothing from mrprior but :mod:`mrprior.errors`, so every layer (recon,
priors, pipeline, node) can use it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar

from mrprior.errors import MRPriorError

__all__ = ["CancelToken", "Cancelled", "cancel_scope", "check_cancelled", "current_token"]


class Cancelled(MRPriorError):
    """The job was cancelled (peer gone, server shutting down); the message says why."""


class CancelToken:
    """A thread-safe, one-way cancellation flag with a reason."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str) -> None:
        """Request cancellation (idempotent: the first reason is kept)."""
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` has been called."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled or ``timeout`` seconds pass; returns :attr:`cancelled`."""
        return self._event.wait(timeout)

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancelled."""
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")

    def __repr__(self) -> str:
        state = f"cancelled: {self.reason!r}" if self.cancelled else "active"
        return f"CancelToken({state})"


_CURRENT: ContextVar[CancelToken | None] = ContextVar("mrprior_cancel_token", default=None)


def current_token() -> CancelToken | None:
    """The token of the running job in this thread/context, or None."""
    return _CURRENT.get()


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if the current job's token is cancelled (no-op without one)."""
    token = _CURRENT.get()
    if token is not None and token.cancelled:
        raise Cancelled(token.reason or "cancelled")


@contextlib.contextmanager
def cancel_scope(token: CancelToken) -> Iterator[CancelToken]:
    """Make ``token`` current for the ``with`` block (restored on exit)."""
    reset = _CURRENT.set(token)
    try:
        yield token
    finally:
        _CURRENT.reset(reset)
