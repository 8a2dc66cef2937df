"""The streaming reconstruction node: one MRD connection in, images out.

:func:`process` is the one connection handler behind the Gadgetron gadget
(``gadgets/mrprior_gadget.py``), the standalone server (:mod:`mrprior.server`) and in-process
replay (:mod:`mrprior.replay`). It buffers acquisitions with the I/O layer's
:class:`~mrprior.io.raw.AcquisitionBuffer` (noise scans, calibration lines, grouping per slice,
contrast, phase, repetition, set and average, emitted on LAST_IN_SLICE), hands each complete group
to :func:`mrprior.pipeline.reconstruct`, turns the result into ``ismrmrd.Image`` messages with
:func:`mrprior.pipeline.images_from_series`, and sends them as soon as they exist, so images made
before a later failure reach the client.

Errors are caught once per connection: the cause is logged, sent to the peer as an ERROR (8)
message naming it, and the connection is always closed (CLOSE, then the socket).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ismrmrd

from mrprior.errors import MRPriorError, ProtocolError
from mrprior.io.protocol import GADGETRON_IMAGE_DATA_TYPES, Message, MessageId, MRDConnection

logger = logging.getLogger(__name__)

__all__ = ["NodeStats", "describe_error", "fail", "process"]

#: Messages read ahead of the reconstruction (back-pressure beyond that).
PREFETCH_MESSAGES = 4096


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
    error : the ERROR text sent, or None.
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


def describe_error(exc: BaseException) -> str:
    """A one-line description of ``exc`` for an ERROR message: class name and text."""
    text = str(exc).strip() or repr(exc)
    kind = type(exc).__name__
    if not isinstance(exc, MRPriorError):
        kind = f"internal error {kind}"
    return f"{kind}: {text}"


def fail(connection: MRDConnection, config_name: str, exc: BaseException) -> str:
    """Log ``exc``, send ERROR (8) naming it, close the connection; returns the ERROR text.

    Never raises: a peer that has already gone away is logged, not re-raised.
    """
    message = f"mrprior [{config_name}]: {describe_error(exc)}"
    if isinstance(exc, MRPriorError):
        logger.error("%s", message)
    else:
        logger.error("%s", message, exc_info=exc)
    try:
        connection.send_error(message)
    except (OSError, ProtocolError) as send_exc:
        logger.warning("could not send ERROR to the peer: %s", send_exc)
    connection.close()
    return message


class _Prefetch:
    """Read messages on a background thread while the caller reconstructs.

    Receiving never waits for the reconstruction (up to :data:`PREFETCH_MESSAGES` messages), so
    the peer can stream at wire speed and slice ``k + 1`` arrives while slice ``k`` is being
    reconstructed. Each message comes with the ``perf_counter`` time it was received; a read
    error is re-raised in the consumer, in order.
    """

    _END = object()

    def __init__(self, connection: MRDConnection, maxsize: int = PREFETCH_MESSAGES) -> None:
        self._conn = connection
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mrd-reader", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for msg in self._conn.messages():
                if not self._put((msg, time.perf_counter())):
                    return
            self._put(self._END)
        except Exception as exc:  # handed to the consumer, which reports it once
            self._put(exc)

    def __iter__(self) -> Iterator[tuple[Message, float]]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def stop(self) -> None:
        """Stop reading ahead (the thread ends when its current read returns)."""
        self._stop.set()


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
) -> NodeStats:
    """Reconstruct everything one connection streams, sending images as they are made.

    Parameters
    ----------
    connection : MRDConnection
        Positioned after CONFIG and HEADER (the caller has read them); closed on return.
    config_name : str
        The config the peer asked for (logged and named in ERROR messages).
    header : str, bytes or ismrmrdHeader
        The ISMRMRD XML header as received (parsed and validated by
        :func:`mrprior.io.raw.parse_header`), or an already parsed header.
    cfg : ReconConfig
        The reconstruction settings (from :func:`mrprior.pipeline.load_recon_config`).

    Returns
    -------
    NodeStats
        Counters and per-group latencies; ``error`` is set when an ERROR was sent.
    """
    from mrprior import pipeline
    from mrprior.io.raw import parse_header

    stats = NodeStats(config_name=config_name)
    start = time.perf_counter()
    prefetch: _Prefetch | None = None
    warned: set[MessageId] = set()

    def emit(groups: list[Any], t_complete: float) -> None:
        for kspace in groups:
            try:
                series = pipeline.reconstruct(kspace, cfg)
                images = pipeline.images_from_series(series, cfg)
            except MRPriorError as exc:
                raise type(exc)(f"{_group_label(kspace)}: {exc}") from exc
            for image in images:
                _check_image(image)
                connection.send(image)
                stats.images_sent += 1
            stats.groups += 1
            stats.latencies_s.append(time.perf_counter() - t_complete)
            logger.info(
                "connection [%s]: %s -> %d image(s), %.3f s after its last acquisition",
                config_name,
                _group_label(kspace),
                len(images),
                stats.latencies_s[-1],
            )

    try:
        hdr = header if isinstance(header, ismrmrd.xsd.ismrmrdHeader) else parse_header(header)
        buffer = pipeline.acquisition_buffer(hdr, cfg)
        logger.info("connection [%s]: receiving data", config_name)
        prefetch = _Prefetch(connection)
        for msg, t_received in prefetch:
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
                logger.warning("ignoring %s messages (only acquisitions are used)", msg.id.name)
        emit(buffer.flush(), time.perf_counter())
        buffer.raise_errors()  # groups with bad data: reported after every good group
    except Exception as exc:  # one catch per connection: report, then close
        if prefetch is not None:
            prefetch.stop()
        stats.error = fail(connection, config_name, exc)
    else:
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
