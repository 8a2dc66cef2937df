"""The MRD / Gadgetron wire protocol: message ids, a robust reader and a thread-safe writer.

Every message is a little-endian ``uint16`` id followed by its payload:

======================  ====  ===============================================================
message                 id    payload
======================  ====  ===============================================================
CONFIG_FILE             1     1024 bytes, NUL-padded config name
CONFIG_TEXT             2     ``uint32`` length + text (Gadgetron sends its ``<configuration>``)
HEADER                  3     ``uint32`` length + ISMRMRD XML header
CLOSE                   4     nothing
TEXT                    5     ``uint32`` length + text
ERROR                   8     ``uint64`` length + text (Gadgetron's external-node error message)
ACQUISITION             1008  ``AcquisitionHeader`` + trajectory (float32) + data (complex64)
IMAGE                   1022  ``ImageHeader`` + ``uint64`` attribute length + attributes + data
WAVEFORM                1026  ``WaveformHeader`` + data (uint32)
NDARRAY                 1030  ``uint16`` dtype, version, ndim + ``uint64`` dims + data
======================  ====  ===============================================================

:mod:`ismrmrd.serialization` speaks the same format but knows no ERROR (8), loops or hangs on
truncated input depending on the stream, and trusts every length field. :class:`MessageReader`
checks each length against a limit before allocating, names the message it was reading when
the stream ends early, and rejects unknown ids, all with :class:`~mrprior.errors.ProtocolError`.
The ISMRMRD objects themselves are still decoded by the ``ismrmrd`` package.

:class:`MRDConnection` couples a reader and a writer on one socket; it is the connection object
that :func:`mrprior.node.process` receives from the Gadgetron gadget, the standalone server and
the in-process replay alike.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import io
import logging
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import ismrmrd
import numpy as np
from ismrmrd.image import get_dtype_from_data_type

from mrprior.errors import ProtocolError

logger = logging.getLogger(__name__)

__all__ = [
    "GADGETRON_IMAGE_DATA_TYPES",
    "LOG_LEVELS",
    "MAX_DATA_BYTES",
    "MAX_TEXT_BYTES",
    "ConnectionFailedError",
    "Dialect",
    "MRDConnection",
    "Message",
    "MessageId",
    "MessageReader",
    "MessageWriter",
    "TruncatedMessageError",
    "connect",
    "enable_keepalive",
    "encode_message",
    "format_log_text",
    "parse_log_text",
]

#: Largest text payload (config, header, text, error, image attributes) accepted by default.
MAX_TEXT_BYTES = 16 * 2**20
#: Largest binary payload (one acquisition, image, waveform or array) accepted by default.
MAX_DATA_BYTES = 1 * 2**30
#: Size of a CONFIG_FILE payload (the C++ ``ConfigFile`` struct).
CONFIG_FILE_BYTES = 1024
#: Image data types an external node may send to Gadgetron: float32, uint16, complex64.
GADGETRON_IMAGE_DATA_TYPES = frozenset(
    {ismrmrd.DATATYPE_FLOAT, ismrmrd.DATATYPE_USHORT, ismrmrd.DATATYPE_CXFLOAT}
)

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_ACQ_HEADER_BYTES = ctypes.sizeof(ismrmrd.AcquisitionHeader)
_IMAGE_HEADER_BYTES = ctypes.sizeof(ismrmrd.ImageHeader)
_WAVEFORM_HEADER_BYTES = ctypes.sizeof(ismrmrd.WaveformHeader)


class MessageId(enum.IntEnum):
    """MRD / Gadgetron message identifiers."""

    CONFIG_FILE = 1
    CONFIG_TEXT = 2
    HEADER = 3
    CLOSE = 4
    TEXT = 5
    ERROR = 8
    ACQUISITION = 1008
    IMAGE = 1022
    WAVEFORM = 1026
    NDARRAY = 1030


class Dialect(enum.Enum):
    """How a peer expects errors and progress, chosen once per connection from how it opened.

    ``GADGETRON``: a Gadgetron external-node channel. It accepts only data, CLOSE and ERROR (8)
    from the node: errors go as ERROR, progress is not sent at all.

    ``MRD``: python-ismrmrd-server / FIRE clients, OpenRecon (a Siemens scanner) and
    ``mrprior replay``. They do not know ERROR (8); errors and logs go as TEXT (5) in FIRE's
    format (:func:`format_log_text`), then CLOSE.
    """

    GADGETRON = "gadgetron"
    MRD = "mrd"


#: Log levels of FIRE's TEXT messages (python-ismrmrd-server ``constants.MRD_LOGGING_*``).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def format_log_text(level: str, text: str) -> str:
    """FIRE's log/error TEXT payload: the level padded to 8 characters, a space, the text, NUL.

    >>> format_log_text("ERROR", "boom")
    'ERROR    boom\x00'
    """
    level = level.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"log level {level!r} not one of {LOG_LEVELS}")
    return f"{level:<8} {text}\0"


def parse_log_text(text: str) -> tuple[str | None, str]:
    """Split a TEXT payload into (level, text) when it is in FIRE's log format, else (None, text)."""
    text = text.rstrip("\0")
    if len(text) > 8 and text[8] == " " and text[:8].rstrip() in LOG_LEVELS:
        return text[:8].rstrip(), text[9:]
    head, sep, rest = text.partition(" ")
    if sep and head in LOG_LEVELS:  # unpadded "LEVEL text"
        return head, rest.lstrip(" ")
    return None, text


class TruncatedMessageError(ProtocolError):
    """The stream ended inside a message (or before the closing CLOSE)."""


class ConnectionFailedError(TruncatedMessageError):
    """Reading failed with an error from the socket (reset, timeout): the peer is gone."""


@dataclass(frozen=True)
class Message:
    """One decoded message.

    Attributes
    ----------
    id : MessageId
        The message id.
    payload : Any
        ``str`` for CONFIG_FILE, CONFIG_TEXT, HEADER, TEXT and ERROR; ``ismrmrd.Acquisition``,
        ``ismrmrd.Image`` or ``ismrmrd.Waveform``; ``numpy.ndarray`` for NDARRAY; ``None`` for
        CLOSE.
    nbytes : int
        Size on the wire, id included.
    """

    id: MessageId
    payload: Any
    nbytes: int


def _decode_text(raw: bytes, what: str) -> str:
    try:
        return raw.rstrip(b"\0").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not valid UTF-8 text ({exc})") from None


class MessageReader:
    """Read MRD messages from a socket or a binary stream.

    Parameters
    ----------
    source : socket.socket or BinaryIO
        Where the bytes come from. A socket is read with ``recv_into`` (blocking).
    max_text_bytes : int
        Largest accepted text payload; a larger length field is a :class:`ProtocolError`.
    max_data_bytes : int
        Largest accepted binary payload of one message.
    chunk_bytes : int
        A socket is read in chunks of at least this size and buffered: few ``recv`` calls per
        message, so a reader thread competing for the GIL with a busy reconstruction still keeps
        up with the stream.

    Notes
    -----
    A stream that ends between two messages raises :class:`TruncatedMessageError` from
    :meth:`read` only when ``eof_ok`` is false; a stream that ends inside a message always does.
    """

    def __init__(
        self,
        source: socket.socket | BinaryIO,
        *,
        max_text_bytes: int = MAX_TEXT_BYTES,
        max_data_bytes: int = MAX_DATA_BYTES,
        chunk_bytes: int = 1 << 18,
    ) -> None:
        self._source = source
        self._is_socket = isinstance(source, socket.socket)
        self.max_text_bytes = int(max_text_bytes)
        self.max_data_bytes = int(max_data_bytes)
        self.chunk_bytes = int(chunk_bytes)
        self.bytes_read = 0
        self._current = "message id"
        self._buf = bytearray()
        self._pos = 0

    # -- low level -------------------------------------------------------------------------------
    def _read_exactly(self, n: int) -> bytes:
        if n == 0:
            return b""
        if not self._is_socket:
            return self._read_stream(n)
        buf = self._buf
        try:
            while len(buf) - self._pos < n:
                if self._pos and self._pos >= len(buf) // 2:
                    del buf[: self._pos]
                    self._pos = 0
                want = max(n - (len(buf) - self._pos), self.chunk_bytes)
                chunk = self._source.recv(want)  # type: ignore[union-attr]
                if not chunk:
                    break
                buf += chunk
        except OSError as exc:
            self._consume_all()
            raise ConnectionFailedError(
                f"connection failed while reading {self._current}: {exc}"
            ) from None
        avail = len(buf) - self._pos
        if avail < n:
            self._consume_all()
            raise TruncatedMessageError(
                f"stream ended inside {self._current}: got {avail} of {n} bytes"
            )
        out = bytes(buf[self._pos : self._pos + n])
        self._pos += n
        self.bytes_read += n
        if self._pos == len(buf):
            buf.clear()
            self._pos = 0
        return out

    def _consume_all(self) -> None:
        self.bytes_read += len(self._buf) - self._pos
        self._buf.clear()
        self._pos = 0

    def _read_stream(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        try:
            while got < n:
                chunk = self._source.read(n - got)  # type: ignore[union-attr]
                if not chunk:
                    break
                view[got : got + len(chunk)] = chunk
                got += len(chunk)
        except OSError as exc:
            self.bytes_read += got
            raise ConnectionFailedError(
                f"connection failed while reading {self._current}: {exc}"
            ) from None
        self.bytes_read += got
        if got < n:
            raise TruncatedMessageError(
                f"stream ended inside {self._current}: got {got} of {n} bytes"
            )
        return bytes(buf)

    def _unpack(self, fmt: struct.Struct, what: str) -> int:
        self._current = what
        return fmt.unpack(self._read_exactly(fmt.size))[0]

    def _check(self, nbytes: int, limit: int, what: str) -> None:
        if nbytes > limit:
            raise ProtocolError(
                f"oversized {what}: length field says {nbytes} bytes, limit is {limit}"
            )

    def _text(self, length_fmt: struct.Struct, name: str) -> tuple[str, int]:
        n = self._unpack(length_fmt, f"{name} length")
        self._check(n, self.max_text_bytes, f"{name} payload")
        self._current = f"{name} payload"
        return _decode_text(self._read_exactly(n), name), length_fmt.size + n

    # -- message payloads --------------------------------------------------------------------------
    def _acquisition(self) -> tuple[ismrmrd.Acquisition, int]:
        self._current = "ACQUISITION header"
        head_bytes = self._read_exactly(_ACQ_HEADER_BYTES)
        head = ismrmrd.AcquisitionHeader.from_buffer_copy(head_bytes)
        traj = int(head.number_of_samples) * int(head.trajectory_dimensions) * 4
        data = int(head.number_of_samples) * int(head.active_channels) * 8
        self._check(traj + data, self.max_data_bytes, "ACQUISITION payload")
        self._current = "ACQUISITION payload"
        parts = iter((head_bytes,))

        def read(n: int) -> bytes:
            first = next(parts, None)
            return first if first is not None else self._read_exactly(n)

        return ismrmrd.Acquisition.deserialize_from(read), _ACQ_HEADER_BYTES + traj + data

    def _image(self) -> tuple[ismrmrd.Image, int]:
        self._current = "IMAGE header"
        head_bytes = self._read_exactly(_IMAGE_HEADER_BYTES)
        head = ismrmrd.ImageHeader.from_buffer_copy(head_bytes)
        try:
            dtype = get_dtype_from_data_type(head.data_type)
        except TypeError:
            raise ProtocolError(f"IMAGE with unknown data type {head.data_type}") from None
        n_attr = self._unpack(_U64, "IMAGE attribute length")
        self._check(n_attr, self.max_text_bytes, "IMAGE attributes")
        self._current = "IMAGE attributes"
        attributes = _decode_text(self._read_exactly(n_attr), "IMAGE attributes")
        nx, ny, nz = (int(v) for v in head.matrix_size)
        n_data = int(head.channels) * nx * ny * nz * np.dtype(dtype).itemsize
        self._check(n_data, self.max_data_bytes, "IMAGE data")
        self._current = "IMAGE data"
        raw = self._read_exactly(n_data)
        image = ismrmrd.Image(head_bytes, attributes)
        image.data.ravel()[:] = np.frombuffer(raw, dtype=dtype)
        return image, _IMAGE_HEADER_BYTES + 8 + n_attr + n_data

    def _waveform(self) -> tuple[ismrmrd.Waveform, int]:
        self._current = "WAVEFORM header"
        head_bytes = self._read_exactly(_WAVEFORM_HEADER_BYTES)
        head = ismrmrd.WaveformHeader.from_buffer_copy(head_bytes)
        n_data = int(head.channels) * int(head.number_of_samples) * 4
        self._check(n_data, self.max_data_bytes, "WAVEFORM data")
        self._current = "WAVEFORM data"
        parts = iter((head_bytes,))

        def read(n: int) -> bytes:
            first = next(parts, None)
            return first if first is not None else self._read_exactly(n)

        return ismrmrd.Waveform.deserialize_from(read), _WAVEFORM_HEADER_BYTES + n_data

    def _ndarray(self) -> tuple[np.ndarray, int]:
        self._current = "NDARRAY header"
        data_type, _version, ndim = struct.unpack("<HHH", self._read_exactly(6))
        try:
            dtype = np.dtype(get_dtype_from_data_type(data_type))
        except TypeError:
            raise ProtocolError(f"NDARRAY with unknown data type {data_type}") from None
        if ndim > 16:
            raise ProtocolError(f"NDARRAY with {ndim} dimensions (limit 16)")
        self._current = "NDARRAY dimensions"
        dims = struct.unpack(f"<{ndim}Q", self._read_exactly(8 * ndim))
        n_data = int(np.prod(dims, dtype=np.float64)) * dtype.itemsize
        self._check(n_data, self.max_data_bytes, "NDARRAY data")
        self._current = "NDARRAY data"
        raw = self._read_exactly(n_data)
        return np.frombuffer(raw, dtype=dtype).reshape(dims), 6 + 8 * ndim + n_data

    # -- public ------------------------------------------------------------------------------------
    def read(self, *, eof_ok: bool = False) -> Message | None:
        """Read one message.

        Parameters
        ----------
        eof_ok : bool
            Return ``None`` when the stream ends cleanly before a message id (instead of raising
            :class:`TruncatedMessageError`).

        Raises
        ------
        ProtocolError
            Truncated or malformed message, unknown id, oversized length field.
        """
        self._current = "message id"
        start = self.bytes_read
        try:
            mid = self._unpack(_U16, "message id")
        except ConnectionFailedError:
            raise
        except TruncatedMessageError:
            if self.bytes_read == start:
                if eof_ok:
                    return None
                raise TruncatedMessageError(
                    "stream ended before CLOSE (connection closed between messages)"
                ) from None
            raise
        try:
            kind = MessageId(mid)
        except ValueError:
            raise ProtocolError(f"unknown message id {mid}") from None
        payload: Any
        if kind is MessageId.CLOSE:
            payload, n = None, 0
        elif kind is MessageId.CONFIG_FILE:
            self._current = "CONFIG_FILE payload"
            payload = _decode_text(self._read_exactly(CONFIG_FILE_BYTES), "CONFIG_FILE")
            n = CONFIG_FILE_BYTES
        elif kind in (MessageId.CONFIG_TEXT, MessageId.HEADER, MessageId.TEXT):
            payload, n = self._text(_U32, kind.name)
        elif kind is MessageId.ERROR:
            payload, n = self._text(_U64, "ERROR")
        elif kind is MessageId.ACQUISITION:
            payload, n = self._acquisition()
        elif kind is MessageId.IMAGE:
            payload, n = self._image()
        elif kind is MessageId.WAVEFORM:
            payload, n = self._waveform()
        else:
            payload, n = self._ndarray()
        return Message(kind, payload, 2 + n)

    def __iter__(self) -> Iterator[Message]:
        """Messages up to (not including) CLOSE; a stream ending without CLOSE is an error."""
        while True:
            msg = self.read()
            assert msg is not None
            if msg.id is MessageId.CLOSE:
                return
            yield msg


def encode_message(item: Any, kind: MessageId | None = None) -> bytes:
    """Serialize one message (id included) to bytes.

    Parameters
    ----------
    item : Any
        An ``ismrmrd.Acquisition``/``Image``/``Waveform``, an ``ismrmrdHeader``, or a ``str``
        (then ``kind`` must say which text message: CONFIG_FILE, CONFIG_TEXT, HEADER, TEXT or
        ERROR); ``None`` with ``kind=CLOSE``.
    kind : MessageId, optional
        The message id; inferred for ISMRMRD objects.
    """
    out = io.BytesIO()
    if kind is None:
        if isinstance(item, ismrmrd.Acquisition):
            kind = MessageId.ACQUISITION
        elif isinstance(item, ismrmrd.Image):
            kind = MessageId.IMAGE
        elif isinstance(item, ismrmrd.Waveform):
            kind = MessageId.WAVEFORM
        elif isinstance(item, ismrmrd.xsd.ismrmrdHeader):
            kind = MessageId.HEADER
        else:
            raise TypeError(f"cannot infer the message id of a {type(item).__name__}")
    out.write(_U16.pack(kind))
    if kind is MessageId.CLOSE:
        pass
    elif kind in (MessageId.ACQUISITION, MessageId.IMAGE, MessageId.WAVEFORM):
        item.serialize_into(out.write)
    elif kind is MessageId.CONFIG_FILE:
        raw = str(item).encode("utf-8")
        if len(raw) >= CONFIG_FILE_BYTES:
            raise ValueError(f"config name longer than {CONFIG_FILE_BYTES - 1} bytes")
        out.write(raw.ljust(CONFIG_FILE_BYTES, b"\0"))
    elif kind in (MessageId.CONFIG_TEXT, MessageId.HEADER, MessageId.TEXT, MessageId.ERROR):
        if isinstance(item, ismrmrd.xsd.ismrmrdHeader):
            item = item.toXML()
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        out.write((_U64 if kind is MessageId.ERROR else _U32).pack(len(raw)))
        out.write(raw)
    else:
        raise TypeError(f"cannot encode message {kind!r}")
    return out.getvalue()


class MessageWriter:
    """Write MRD messages; each message goes out in one piece under a lock.

    Parameters
    ----------
    sink : socket.socket or BinaryIO
        Where the bytes go.
    """

    def __init__(self, sink: socket.socket | BinaryIO) -> None:
        self._sink = sink
        self._is_socket = isinstance(sink, socket.socket)
        self._lock = threading.Lock()
        self.bytes_written = 0
        self.closed = False

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self.closed:
                raise ProtocolError("cannot send after CLOSE")
            if self._is_socket:
                self._sink.sendall(data)  # type: ignore[union-attr]
            else:
                self._sink.write(data)  # type: ignore[union-attr]
                flush = getattr(self._sink, "flush", None)
                if flush is not None:
                    flush()
            self.bytes_written += len(data)

    def send(self, item: Any) -> None:
        """Send an ``ismrmrd.Acquisition``, ``Image``, ``Waveform`` or ``ismrmrdHeader``."""
        self._write(encode_message(item))

    def send_config_file(self, name: str) -> None:
        """Send CONFIG_FILE (a config name, python-ismrmrd-server / FIRE style)."""
        self._write(encode_message(name, MessageId.CONFIG_FILE))

    def send_config_text(self, text: str) -> None:
        """Send CONFIG_TEXT (what Gadgetron sends an external node: its ``<configuration>``)."""
        self._write(encode_message(text, MessageId.CONFIG_TEXT))

    def send_header(self, header: str | bytes | ismrmrd.xsd.ismrmrdHeader) -> None:
        """Send the ISMRMRD XML header."""
        self._write(encode_message(header, MessageId.HEADER))

    def send_text(self, text: str) -> None:
        """Send TEXT (never to Gadgetron, which refuses it from an external node)."""
        self._write(encode_message(text, MessageId.TEXT))

    def send_error(self, text: str) -> None:
        """Send ERROR (8): ``uint64`` length + UTF-8 text."""
        self._write(encode_message(text, MessageId.ERROR))

    def send_log(self, level: str, text: str) -> None:
        """Send TEXT in FIRE's log format (:func:`format_log_text`)."""
        self._write(encode_message(format_log_text(level, text), MessageId.TEXT))

    def send_close(self) -> None:
        """Send CLOSE; later sends raise :class:`ProtocolError`."""
        self._write(encode_message(None, MessageId.CLOSE))
        with self._lock:
            self.closed = True


class MRDConnection:
    """One MRD connection on a socket: a :class:`MessageReader` and a :class:`MessageWriter`.

    Parameters
    ----------
    sock : socket.socket
        A connected stream socket; the connection owns it and closes it in :meth:`close`.
    linger_s : float
        After CLOSE, how long :meth:`close` keeps reading (and discarding) what the peer still
        sends before closing the socket, so that a peer that is still streaming receives our
        ERROR/CLOSE instead of a reset.
    **limits
        ``max_text_bytes`` / ``max_data_bytes`` for the reader.
    """

    def __init__(self, sock: socket.socket, *, linger_s: float = 2.0, **limits: int) -> None:
        sock.settimeout(None)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            enable_keepalive(sock)
        self.socket = sock
        self.reader = MessageReader(sock, **limits)
        self.writer = MessageWriter(sock)
        self.linger_s = float(linger_s)
        self._closed = False
        self._pushback: list[Message] = []
        self.peer_closed = False
        #: how errors and progress reach this peer; set by whoever reads the opening messages
        self.dialect = Dialect.GADGETRON

    # -- gadgetron adapter -------------------------------------------------------------------------
    @classmethod
    def adopt(cls, gadgetron_connection: Any, **kwargs: Any) -> MRDConnection:
        """Take over the socket of a ``gadgetron.external.Connection``.

        The gadgetron package has already read CONFIG and HEADER (``raw_bytes.config`` and
        ``raw_bytes.header``). From here on, messages are read and written by this class (whose
        reader fails cleanly on truncated input, where gadgetron 1.4.1 spins forever on a closed
        socket and silently stops at unknown ids), and the gadgetron connection's own close at the
        end of ``with`` becomes this connection's idempotent :meth:`close`.
        """
        wrapper = gadgetron_connection.socket
        sock = getattr(wrapper, "socket", wrapper)
        conn = cls(sock, **kwargs)
        gadgetron_connection.socket = conn
        return conn

    def read(self, n: int) -> bytes:
        """Raw read (the gadgetron ``SocketWrapper`` interface)."""
        return self.reader._read_exactly(n)

    def write(self, data: bytes) -> None:
        """Raw write (the gadgetron ``SocketWrapper`` interface)."""
        self.writer._write(bytes(data))

    # -- messages ----------------------------------------------------------------------------------
    def read_message(self, *, eof_ok: bool = False) -> Message | None:
        """Read one message (see :meth:`MessageReader.read`); an :meth:`unread` one comes first."""
        if self._pushback:
            return self._pushback.pop()
        msg = self.reader.read(eof_ok=eof_ok)
        if msg is None or msg.id is MessageId.CLOSE:
            self.peer_closed = True
        return msg

    def unread(self, message: Message) -> None:
        """Put ``message`` back: the next :meth:`read_message` returns it."""
        self._pushback.append(message)

    def messages(self) -> Iterator[Message]:
        """Messages up to CLOSE; the stream ending before CLOSE raises :class:`ProtocolError`."""
        while True:
            msg = self.read_message()
            assert msg is not None
            if msg.id is MessageId.CLOSE:
                return
            yield msg

    def send(self, item: Any) -> None:
        """Send an ISMRMRD object."""
        self.writer.send(item)

    def send_error(self, text: str) -> None:
        """Send ERROR (8)."""
        self.writer.send_error(text)

    def report(self, level: str, text: str) -> bool:
        """Tell the peer ``text`` at ``level`` in its dialect; returns whether anything was sent.

        MRD peers get TEXT in FIRE's format at every level. A Gadgetron peer gets ERROR (8) for
        ``ERROR``/``CRITICAL`` and nothing otherwise (Gadgetron refuses TEXT from a node).
        Raises ``OSError`` / :class:`ProtocolError` when the peer cannot be written to.
        """
        level = level.upper()
        if self.dialect is Dialect.MRD:
            self.writer.send_log(level, text)
            return True
        if level in ("ERROR", "CRITICAL"):
            self.writer.send_error(text)
            return True
        return False

    @property
    def bytes_received(self) -> int:
        """Bytes read so far."""
        return self.reader.bytes_read

    @property
    def bytes_sent(self) -> int:
        """Bytes written so far."""
        return self.writer.bytes_written

    def close(self, *, send_close: bool = True) -> None:
        """Send CLOSE (once), drain what the peer still sends, and close the socket.

        Never raises: a peer that is already gone is logged at debug level.
        """
        if self._closed:
            return
        self._closed = True
        if send_close and not self.writer.closed:
            try:
                self.writer.send_close()
            except (OSError, ProtocolError) as exc:
                logger.debug("could not send CLOSE: %s", exc)
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_WR)
        if not self.peer_closed and self.linger_s > 0:
            self._drain()
        with contextlib.suppress(OSError):
            self.socket.close()

    def _drain(self) -> None:
        self.socket.settimeout(self.linger_s)
        buf = bytearray(1 << 16)
        try:
            while self.socket.recv_into(buf):
                pass
        except OSError:
            pass

    def __enter__(self) -> MRDConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def enable_keepalive(
    sock: socket.socket, idle_s: int = 30, interval_s: int = 10, count: int = 6
) -> None:
    """TCP keep-alive on ``sock``: a peer host that vanishes (power, network) is noticed after
    about ``idle_s + interval_s * count`` seconds of silence, however long a job runs."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


def connect(host: str, port: int, *, timeout: float = 30.0, **kwargs: Any) -> MRDConnection:
    """Open an :class:`MRDConnection` to ``host:port`` (IPv4 or IPv6); ``timeout`` applies to
    connecting only (the connection itself blocks, with TCP keep-alive)."""
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        raise ProtocolError(f"cannot connect to {host}:{port}: {exc}") from None
    return MRDConnection(sock, **kwargs)
