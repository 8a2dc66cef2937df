"""The streaming reconstruction node: one MRD connection in, images out.

:func:`process` is the one connection handler behind the Gadgetron gadget
(``gadgets/mrprior_gadget.py``), the standalone server (:mod:`mrprior.server`) and in-process
replay (:mod:`mrprior.replay`). It buffers acquisitions with the I/O layer's
:class:`~mrprior.io.raw.AcquisitionBuffer` (noise scans, calibration lines, grouping per slice,
contrast, phase, repetition, set and average, emitted on LAST_IN_SLICE), hands each complete group
to :func:`mrprior.pipeline.reconstruct`, turns the result into ``ismrmrd.Image`` messages with
:func:`mrprior.pipeline.images_from_series`, and sends them as soon as they exist, so images made
before a later failure reach the client.

Errors are caught once per connection: the cause is logged, reported to the peer in its
dialect (:attr:`MRDConnection.dialect`: ERROR (8) for Gadgetron, FIRE-style TEXT
``"ERROR    <text>"`` for MRD peers), and the connection is always closed (CLOSE, then the socket).

Peers that go away: the job runs under a :class:`~mrprior.cancellation.CancelToken`, and the
reconstruction checks it at every CG iteration, every network-prior call and every k-space group.
The token is cancelled when the peer is proven gone:

- reading fails with a socket error (connection reset);
- sending fails (an image, a progress message);
- the peer's side ends (EOF): a Gadgetron peer after its CLOSE is gone (Gadgetron keeps its
  side open until the node's CLOSE); an MRD peer is probed with a few TEXT messages, and a failed
  write proves it gone, while a peer that only half-closed keeps its job;
- the server shuts down (:meth:`mrprior.server.MRDServer.shutdown`).

MRD peers also get a progress TEXT (``INFO``) every :data:`KEEPALIVE_S` seconds while a group is
being reconstructed: clients can wait as long as the node is alive and working, and a dead peer
is noticed at the next one.

Memory per connection: the read-ahead holds at most :data:`PREFETCH_BYTES` of messages (and at
most :data:`PREFETCH_MESSAGES` messages; a single message may be larger, up to the reader's
limits of 1 GiB of data or 16 MiB of text), plus the k-space of the groups that are still
incomplete (acquisitions are stored once, in the acquisition buffer) and the working set of the
group being reconstructed.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ismrmrd

from mrprior.cancellation import Cancelled, CancelToken, cancel_scope
from mrprior.errors import MRPriorError, ProtocolError
from mrprior.io.protocol import (
    GADGETRON_IMAGE_DATA_TYPES,
    ConnectionFailedError,
    Dialect,
    Message,
    MessageId,
    MRDConnection,
    TruncatedMessageError,
)

logger = logging.getLogger(__name__)

__all__ = [
    "KEEPALIVE_S",
    "PREFETCH_BYTES",
    "PREFETCH_MESSAGES",
    "NodeStats",
    "describe_error",
    "fail",
    "process",
]

#: Messages read ahead of the reconstruction (back-pressure beyond that).
PREFETCH_MESSAGES = 4096
#: Bytes read ahead of the reconstruction (back-pressure beyond that; one larger message passes).
PREFETCH_BYTES = 256 * 2**20
#: Seconds between progress TEXT messages to MRD peers while a group is reconstructed.
KEEPALIVE_S = 5.0
#: Probes (TEXT) sent to an MRD peer whose side ended, and the seconds between them.
PROBES = 3
PROBE_INTERVAL_S = 0.25


@dataclass
class NodeStats:
    """What one connection did.

    Attributes
    ----------
    config_name : the config the connection asked for.
    acquisitions : acquisitions received (noise scans included).
    groups : k-space groups reconstructed.
    images_sent : images sent back.
    latencies_s : per group, seconds from receiving the acquisition that completed the group
        to having sent its last image (the latency the node adds, queueing included).
    seconds : wall time of the whole connection.
    error : the error text reported to the peer, or None.
    cancelled : why the job was cancelled (peer gone, shutdown), or None.
    """

    config_name: str
    acquisitions: int = 0
    groups: int = 0
    images_sent: int = 0
    latencies_s: list[float] = field(default_factory=list)
    bytes_received: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    error: str | None = None
    cancelled: str | None = None


def describe_error(exc: BaseException) -> str:
    """A one-line description of ``exc`` for an error message: class name and text."""
    text = str(exc).strip() or repr(exc)
    kind = type(exc).__name__
    if not isinstance(exc, MRPriorError):
        kind = f"internal error {kind}"
    return f"{kind}: {text}"


def fail(connection: MRDConnection, config_name: str, exc: BaseException) -> str:
    """Log ``exc``, report it to the peer in its dialect, close the connection.

    Gadgetron peers get ERROR (8), MRD peers TEXT ``"ERROR    <text>"``; then CLOSE. Returns the
    error text. Never raises: a peer that has already gone away is logged, not re-raised.
    """
    message = f"mrprior [{config_name}]: {describe_error(exc)}"
    if isinstance(exc, MRPriorError):
        logger.error("%s", message)
    else:
        logger.error("%s", message, exc_info=exc)
    try:
        connection.report("ERROR", message)
    except (OSError, ProtocolError) as send_exc:
        logger.warning("could not report the error to the peer: %s", send_exc)
    connection.close()
    return message


class _Prefetch:
    """Read messages on a background thread while the caller reconstructs; watch the peer.

    Receiving never waits for the reconstruction (up to :data:`PREFETCH_MESSAGES` messages and
    :data:`PREFETCH_BYTES` bytes), so the peer can stream at wire speed and slice ``k + 1``
    arrives while slice ``k`` is being reconstructed. Each message comes with the
    ``perf_counter`` time it was received; a read error is re-raised in the consumer, in order.

    After the peer's CLOSE (or a read error) the thread keeps watching the socket and cancels
    ``token`` when the peer is proven gone (see the module docstring).
    """

    _END = object()

    def __init__(
        self,
        connection: MRDConnection,
        token: CancelToken,
        max_messages: int = PREFETCH_MESSAGES,
        max_bytes: int = PREFETCH_BYTES,
    ) -> None:
        self._conn = connection
        self._token = token
        self._items: collections.deque[tuple[Any, int]] = collections.deque()
        self._bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._watching = False
        self._thread = threading.Thread(target=self._run, name="mrd-reader", daemon=True)
        self._thread.start()

    def _put(self, item: Any, nbytes: int = 0) -> bool:
        with self._cond:
            while (
                not self._stop.is_set()
                and self._items
                and (
                    len(self._items) >= self._max_messages or self._bytes + nbytes > self._max_bytes
                )
            ):
                self._cond.wait(0.1)
            if self._stop.is_set():
                return False
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._cond.notify_all()
            return True

    def _get(self) -> Any:
        with self._cond:
            while not self._items:
                self._cond.wait()
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            self._cond.notify_all()
            return item

    def _run(self) -> None:
        try:
            for msg in self._conn.messages():
                if not self._put((msg, time.perf_counter()), msg.nbytes):
                    return
            self._put(self._END)
        except ConnectionFailedError as exc:
            self._put(exc)
            self._gone(f"peer connection failed: {exc}")
            return
        except Exception as exc:  # handed to the consumer, which reports it once
            self._put(exc)
            if isinstance(exc, TruncatedMessageError):  # clean EOF inside / between messages
                self._peer_eof(after_close=False)
            return
        self._watch()

    # -- the peer after its CLOSE ----------------------------------------------------------------
    def _gone(self, reason: str) -> None:
        if not self._stop.is_set():
            logger.warning("cancelling the job: %s", reason)
            self._token.cancel(reason)

    def _watch(self) -> None:
        sock = self._conn.socket
        self._watching = True
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([sock], [], [], 0.2)
                if not readable:
                    continue
                data = sock.recv(1 << 16)
            except (OSError, ValueError) as exc:  # reset, or our own close
                self._gone(f"peer connection failed: {exc}")
                return
            if not data:
                self._peer_eof(after_close=True)
                return

    def _peer_eof(self, *, after_close: bool) -> None:
        if self._stop.is_set():
            return
        if self._conn.dialect is Dialect.GADGETRON:
            if after_close:  # Gadgetron keeps its side open until the node's CLOSE
                self._gone("Gadgetron closed the connection")
            return
        for _ in range(PROBES):  # a write to a dead peer fails by the second probe at the latest
            if self._stop.wait(PROBE_INTERVAL_S):
                return
            try:
                self._conn.report("INFO", "mrprior: the peer stopped sending; still working")
            except ProtocolError:  # we closed the connection ourselves
                return
            except OSError as exc:
                self._gone(f"peer gone: {exc}")
                return
        logger.info("peer half-closed the connection but is alive: job continues")

    def __iter__(self) -> Iterator[tuple[Message, float]]:
        while True:
            item = self._get()
            if item is self._END:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def stop(self) -> None:
        """Stop reading ahead and watching (waits briefly for the watcher to notice)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._watching and threading.current_thread() is not self._thread:
            self._thread.join(1.0)  # the watcher polls every 0.2 s


class _Progress:
    """Progress TEXT to an MRD peer every ``interval`` seconds while a group is reconstructed.

    Doubles as the keep-alive that lets clients wait without a fixed timeout, and as a liveness
    probe: a failed send cancels ``token``. Does nothing for Gadgetron peers.
    """

    def __init__(
        self, connection: MRDConnection, token: CancelToken, prefix: str, interval: float
    ) -> None:
        self._conn = connection
        self._token = token
        self._prefix = prefix
        self._interval = float(interval)
        self._what: str | None = None
        self._since = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if connection.dialect is Dialect.MRD and self._interval > 0:
            self._thread = threading.Thread(target=self._run, name="mrd-progress", daemon=True)
            self._thread.start()

    @contextlib.contextmanager
    def working(self, what: str) -> Iterator[None]:
        with self._lock:
            self._what, self._since = what, time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self._what = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                what, since = self._what, self._since
            if what is None:
                continue
            text = f"{self._prefix}: reconstructing {what}, {time.perf_counter() - since:.0f} s"
            try:
                self._conn.report("INFO", text)
            except ProtocolError:
                return
            except OSError as exc:
                self._token.cancel(f"peer gone: {exc}")
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)


def _check_image(image: ismrmrd.Image) -> None:
    if image.data_type not in GADGETRON_IMAGE_DATA_TYPES:
        raise ProtocolError(
            f"refusing to send an image of data type {image.data_type}: Gadgetron accepts "
            "float32, uint16 or complex64 images from an external node"
        )


def _group_label(kspace: Any) -> str:
    indices = getattr(kspace, "indices", None)
    if indices is None:
        return "a k-space group"
    parts = [f"{k} {v}" for k, v in vars(indices).items() if v] or ["slice 0"]
    return ", ".join(parts)


def process(
    connection: MRDConnection,
    config_name: str,
    header: str | bytes | ismrmrd.xsd.ismrmrdHeader,
    cfg: Any,
    *,
    token: CancelToken | None = None,
    keepalive_s: float = KEEPALIVE_S,
) -> NodeStats:
    """Reconstruct everything one connection streams, sending images as they are made.

    Parameters
    ----------
    connection : MRDConnection
        Positioned after the opening messages (the caller has read them and set
        ``connection.dialect``); closed on return.
    config_name : str
        The config the peer asked for (logged and named in error messages).
    header : str, bytes or ismrmrdHeader
        The ISMRMRD XML header as received (parsed and validated by
        :func:`mrprior.io.raw.parse_header`), or an already parsed header.
    cfg : ReconConfig
        The reconstruction settings (from :func:`mrprior.pipeline.load_recon_config`).
    token : CancelToken, optional
        Cancels the job from outside (server shutdown); a fresh one by default. It is also
        cancelled when the peer goes away.
    keepalive_s : float
        Seconds between progress TEXT messages to MRD peers (0: none).

    Returns
    -------
    NodeStats
        Counters and per-group latencies; ``error`` is set when an error was reported,
        ``cancelled`` when the job was cancelled.
    """
    from mrprior import pipeline
    from mrprior.io.raw import parse_header

    stats = NodeStats(config_name=config_name)
    token = token or CancelToken()
    start = time.perf_counter()
    prefix = f"mrprior [{config_name}]"
    prefetch: _Prefetch | None = None
    progress = _Progress(connection, token, prefix, keepalive_s)
    warned: set[MessageId] = set()

    def emit(groups: list[Any], t_complete: float) -> None:
        for kspace in groups:
            label = _group_label(kspace)
            try:
                with progress.working(f"{label} ({cfg.method})"):
                    series = pipeline.reconstruct(kspace, cfg)
                images = pipeline.images_from_series(series, cfg)
            except MRPriorError as exc:
                if isinstance(exc, Cancelled):
                    raise
                raise type(exc)(f"{label}: {exc}") from exc
            for image in images:
                _check_image(image)
                try:
                    connection.send(image)
                except OSError as exc:
                    token.cancel(f"peer gone: {exc}")
                    raise
                stats.images_sent += 1
            stats.groups += 1
            stats.latencies_s.append(time.perf_counter() - t_complete)
            logger.info(
                "connection [%s]: %s -> %d image(s), %.3f s after its last acquisition",
                config_name,
                label,
                len(images),
                stats.latencies_s[-1],
            )

    try:
        with cancel_scope(token):
            hdr = header if isinstance(header, ismrmrd.xsd.ismrmrdHeader) else parse_header(header)
            buffer = pipeline.acquisition_buffer(hdr, cfg)
            logger.info("connection [%s]: receiving data", config_name)
            prefetch = _Prefetch(connection, token)
            for msg, t_received in prefetch:
                token.check()
                if msg.id is MessageId.ACQUISITION:
                    stats.acquisitions += 1
                    groups = buffer.add(msg.payload)
                    if groups:
                        emit(groups, t_received)
                elif msg.id in (MessageId.CONFIG_FILE, MessageId.CONFIG_TEXT, MessageId.HEADER):
                    raise ProtocolError(f"unexpected {msg.id.name} message after the header")
                elif msg.id is MessageId.ERROR:
                    raise ProtocolError(f"peer sent ERROR: {msg.payload}")
                elif msg.id not in warned:
                    warned.add(msg.id)
                    note = f"ignoring {msg.id.name} messages (only acquisitions are used)"
                    logger.warning("%s", note)
                    with contextlib.suppress(OSError, ProtocolError):
                        connection.report("WARNING", f"{prefix}: {note}")
            emit(buffer.flush(), time.perf_counter())
            buffer.raise_errors()  # groups with bad data: reported after every good group
    except Exception as exc:  # one catch per connection: report, then close
        if token.cancelled:
            stats.cancelled = token.reason
        progress.stop()
        if prefetch is not None:
            prefetch.stop()
        stats.error = fail(connection, config_name, exc)
    else:
        progress.stop()
        if prefetch is not None:
            prefetch.stop()
        with contextlib.suppress(OSError, ProtocolError):
            connection.report(
                "INFO",
                f"{prefix}: done, {stats.images_sent} image(s) from {stats.groups} group(s) "
                f"in {time.perf_counter() - start:.1f} s",
            )
        connection.close()
    stats.seconds = time.perf_counter() - start
    stats.bytes_received = connection.bytes_received
    stats.bytes_sent = connection.bytes_sent
    logger.info(
        "connection [%s] done: %d acquisitions, %d groups, %d images in %.2f s%s",
        config_name,
        stats.acquisitions,
        stats.groups,
        stats.images_sent,
        stats.seconds,
        f" (error: {stats.error})" if stats.error else "",
    )
    return stats
