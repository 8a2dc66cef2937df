"""A FIRE-style MRD client for tests, written from the protocol (not from mrprior's code).

It behaves like python-ismrmrd-server's ``client.py``: it sends the config (CONFIG_FILE with a
name, ``invertcontrast`` when none is given, or CONFIG_TEXT with a local config file's text),
the XML header as stored in the raw file, the optional "configAdditional" JSON as TEXT right
after the header, the acquisitions and CLOSE; a separate receiver stores IMAGEs and logs TEXT
messages, and stops at CLOSE. Like the FIRE client, it knows only the message ids FIRE defines
for a server's replies (CLOSE, TEXT, ACQUISITION, IMAGE, WAVEFORM): anything else — ERROR (8)
included — is recorded as ``unknown`` and ends the receiving, as it does there.

Messages are framed here with ``struct`` and the ISMRMRD objects' own (de)serializers only.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

import ismrmrd

from tests.gadget.harness import recv_exact

CONFIG_FILE, CONFIG_TEXT, HEADER, CLOSE, TEXT = 1, 2, 3, 4, 5
ACQUISITION, IMAGE, WAVEFORM = 1008, 1022, 1026
DEFAULT_CONFIG = "invertcontrast"  # the FIRE client's default config name


@dataclass
class FireResult:
    """What the server sent back."""

    images: list[ismrmrd.Image] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # raw TEXT payloads, NUL stripped
    unknown: list[int] = field(default_factory=list)  # ids FIRE's client does not know
    closed: bool = False
    problem: str | None = None

    def levelled(self) -> list[tuple[str, str]]:
        """TEXT messages split into (level, text) as FIRE formats them: level padded to 8."""
        out = []
        for t in self.texts:
            level, _, rest = t.partition(" ")
            out.append((level, t[9:] if len(t) > 8 and t[8] == " " else rest))
        return out

    @property
    def errors(self) -> list[str]:
        return [text for level, text in self.levelled() if level == "ERROR"]

    def save(self, path: Path) -> None:
        """Store the images as the FIRE client does: group ``image_<series>`` per series."""
        with ismrmrd.Dataset(str(path), "dataset", create_if_needed=True) as ds:
            for image in self.images:
                ds.append_image(f"image_{image.image_series_index}", image)


class FireClient:
    """One FIRE-style session on a connected socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.result = FireResult()
        self._lock = threading.Lock()
        self.first_text = threading.Event()
        self._receiver = threading.Thread(target=self._receive, daemon=True)
        self._receiver.start()

    @classmethod
    def connect(cls, port: int, host: str = "127.0.0.1") -> FireClient:
        return cls(socket.create_connection((host, port), timeout=30))

    # -- sending (FIRE's send_config_file / send_config_text / send_metadata / send_text) ------
    def _send(self, data: bytes) -> None:
        with self._lock:
            self.sock.sendall(data)

    def send_config_file(self, name: str = DEFAULT_CONFIG) -> None:
        self._send(struct.pack("<H", CONFIG_FILE) + name.encode().ljust(1024, b"\0"))

    def send_config_text(self, text: str) -> None:
        raw = text.encode() + b"\0"
        self._send(struct.pack("<HI", CONFIG_TEXT, len(raw)) + raw)

    def send_metadata(self, xml: str) -> None:
        raw = xml.encode() + b"\0"
        self._send(struct.pack("<HI", HEADER, len(raw)) + raw)

    def send_text(self, text: str) -> None:
        raw = text.encode() + b"\0"
        self._send(struct.pack("<HI", TEXT, len(raw)) + raw)

    def send_acquisition(self, acq: ismrmrd.Acquisition) -> None:
        self._send(struct.pack("<H", ACQUISITION) + acq.to_bytes())

    def send_close(self) -> None:
        self._send(struct.pack("<H", CLOSE))

    def session(
        self,
        header_xml: str,
        acquisitions: list[ismrmrd.Acquisition],
        config: str | None = None,
        config_additional: str | None = None,
    ) -> None:
        """Everything the FIRE client sends for a raw file, in its order."""
        self.send_config_file(config or DEFAULT_CONFIG)
        self.send_metadata(header_xml)
        if config_additional is not None:
            self.send_text(config_additional)
        for acq in acquisitions:
            self.send_acquisition(acq)
        self.send_close()

    # -- receiving ---------------------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        return recv_exact(self.sock, n)

    def _receive(self) -> None:
        r = self.result
        try:
            while True:
                head = self.sock.recv(2, socket.MSG_WAITALL)
                if not head:
                    r.problem = "EOF without CLOSE"
                    return
                if len(head) < 2:
                    head += self._read(1)
                (mid,) = struct.unpack("<H", head)
                if mid == CLOSE:
                    r.closed = True
                    return
                if mid == TEXT:
                    (n,) = struct.unpack("<I", self._read(4))
                    r.texts.append(self._read(n).decode().rstrip("\0"))
                    self.first_text.set()
                elif mid == IMAGE:
                    r.images.append(ismrmrd.Image.deserialize_from(self._read))
                elif mid == ACQUISITION:
                    ismrmrd.Acquisition.deserialize_from(self._read)
                elif mid == WAVEFORM:
                    ismrmrd.Waveform.deserialize_from(self._read)
                else:  # FIRE: "Received unknown message type", then the receiver stops
                    r.unknown.append(mid)
                    return
        except (OSError, EOFError) as exc:
            r.problem = f"receive failed: {exc}"
        finally:
            self.first_text.set()

    def wait(self, timeout: float = 300.0) -> FireResult:
        """Wait for the server's CLOSE (or the end of the stream), then close the socket."""
        self._receiver.join(timeout)
        if self._receiver.is_alive():
            self.result.problem = f"no CLOSE within {timeout} s"
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self._receiver.join(5)
        with contextlib.suppress(OSError):
            self.sock.close()
        return self.result
