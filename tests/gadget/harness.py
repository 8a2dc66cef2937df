"""A loopback test harness that plays Gadgetron's side of an external-node connection.

It deliberately does not use :mod:`mrprior.io.protocol` (the code under test): messages go out
through ``ismrmrd.serialization.ProtocolSerializer`` (CONFIG as ``ConfigText``, the header
re-serialized from its parsed form, as Gadgetron does), and come back through the ``ismrmrd``
object deserializers plus a hand-written ERROR (8) reader (``uint64`` length + text), exactly
what Gadgetron's ``ExternalChannel`` expects from a node.

Three ways to reach a node:

- :func:`launch_gadget`: listen on a free port and start ``python -m gadgetron <port> <module>
  <target>`` as Gadgetron does; the child connects back;
- :func:`connect_listening`: connect to a node that listens (``gadgetron.external.listen`` or
  ``mrprior serve``);
- any connected socket (e.g. to an in-process :class:`mrprior.server.MRDServer`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ismrmrd
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolSerializer

REPO = Path(__file__).resolve().parents[2]
GADGETS = REPO / "gadgets"
PYTHON = sys.executable

ERROR_ID = 8
CLOSE_ID = 4
TEXT_ID = 5


def node_env() -> dict[str, str]:
    """Environment of a node subprocess: the repository and gadgets/ on PYTHONPATH (Gadgetron
    adds its ``share/gadgetron/python`` folder the same way)."""
    env = dict(os.environ)
    paths = [str(REPO), str(GADGETS)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("GADGETRON_EXTERNAL_LOG_LEVEL", "INFO")
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from ``sock`` (EOFError naming how many arrived)."""
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


@dataclass
class Reply:
    """What a node sent back."""

    images: list[ismrmrd.Image] = field(default_factory=list)
    acquisitions: list[ismrmrd.Acquisition] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    logs: list[tuple[str, str]] = field(default_factory=list)  # MRD peers: (level, text)
    closed: bool = False  # CLOSE received
    eof_after_close: bool = False  # and then the socket ended cleanly
    problem: str | None = None  # what went wrong on the harness side
    arrival: list[float] = field(default_factory=list)  # perf_counter per image/acquisition


class GadgetronRole:
    """Gadgetron's side of one connection on a connected socket.

    With ``mrd=True`` it plays an MRD (FIRE / OpenRecon) client instead on the receiving side:
    TEXT (5) messages are accepted and parsed in FIRE's log format (``"<LEVEL:8> <text>\\0"``;
    ``ERROR`` texts go to :attr:`Reply.errors`, the others to :attr:`Reply.logs`), and an
    ERROR (8), which FIRE clients do not know, is a problem.
    """

    def __init__(self, sock: socket.socket, timeout: float = 60.0, *, mrd: bool = False) -> None:
        self.mrd = mrd
        sock.settimeout(timeout)
        self.sock = sock
        self._wfile = sock.makefile("wb", buffering=0)
        self.serializer = ProtocolSerializer(self._wfile)
        self.reply = Reply()
        self._receiver = threading.Thread(target=self._receive, daemon=True)
        self._receiver.start()

    # -- sending ---------------------------------------------------------------------------
    def send_config(self, xml: str) -> None:
        self.serializer.serialize(ConfigText(xml))

    def send_config_name(self, name: str) -> None:
        self.serializer.serialize(ConfigFile(name))

    def send_text(self, text: str) -> None:
        """TEXT (5): ``uint32`` length + UTF-8 text (FIRE's configAdditional JSON)."""
        raw = text.encode("utf-8")
        self._wfile.write(struct.pack("<HI", TEXT_ID, len(raw)) + raw)

    def send_header(self, header_xml: str) -> None:
        self.serializer.serialize(ismrmrd.xsd.CreateFromDocument(header_xml))

    def send_acquisitions(self, acqs: Iterable[ismrmrd.Acquisition]) -> None:
        for acq in acqs:
            self.serializer.serialize(acq)

    def send_raw(self, data: bytes) -> None:
        self._wfile.write(data)

    def send_close(self) -> None:
        self.serializer.close()

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    # -- receiving -------------------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        return recv_exact(self.sock, n)

    def _receive(self) -> None:
        r = self.reply
        try:
            while True:
                try:
                    head = self.sock.recv(2, socket.MSG_WAITALL)
                except ConnectionResetError:
                    r.problem = "connection reset"
                    return
                if not head:
                    if not r.closed:
                        r.problem = "EOF without CLOSE"
                    else:
                        r.eof_after_close = True
                    return
                if r.closed:
                    r.problem = "data after CLOSE"
                    return
                if len(head) < 2:
                    head += self._read(2 - len(head))
                (mid,) = struct.unpack("<H", head)
                if mid == CLOSE_ID:
                    r.closed = True
                elif mid == ERROR_ID and not self.mrd:
                    (n,) = struct.unpack("<Q", self._read(8))
                    r.errors.append(self._read(n).decode("utf-8"))
                elif mid == TEXT_ID and self.mrd:
                    (n,) = struct.unpack("<I", self._read(4))
                    text = self._read(n).decode("utf-8")
                    if not text.endswith("\0") or len(text) < 10 or text[8] != " ":
                        r.problem = f"TEXT not in FIRE's log format: {text!r}"
                        return
                    level, body = text[:8].rstrip(), text[9:-1]
                    (r.errors if level == "ERROR" else r.logs).append(
                        body if level == "ERROR" else (level, body)
                    )
                elif mid == 1022:
                    r.images.append(ismrmrd.Image.deserialize_from(self._read))
                    r.arrival.append(time.perf_counter())
                elif mid == 1008:
                    r.acquisitions.append(ismrmrd.Acquisition.deserialize_from(self._read))
                    r.arrival.append(time.perf_counter())
                else:
                    peer = "an MRD client" if self.mrd else "Gadgetron"
                    r.problem = f"node sent message id {mid}, which {peer} refuses"
                    return
        except (OSError, EOFError) as exc:
            r.problem = f"receive failed: {exc}"

    def wait(self, timeout: float = 120.0) -> Reply:
        """Wait until the node has closed the connection; close our socket."""
        self._receiver.join(timeout)
        if self._receiver.is_alive():
            self.reply.problem = f"no CLOSE within {timeout} s"
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self._receiver.join(5)
        with contextlib.suppress(OSError):
            self._wfile.close()
            self.sock.close()
        return self.reply


def config_xml(properties: dict[str, str] | None = None) -> str:
    """What Gadgetron sends an external node: its ``<configuration>`` element, saved by pugixml."""
    props = "".join(f'<property name="{k}" value="{v}" />' for k, v in (properties or {}).items())
    return f'<?xml version="1.0"?>\n<configuration>{props}</configuration>\n'


def play(
    role: GadgetronRole,
    header_xml: str,
    acqs: Sequence[ismrmrd.Acquisition],
    properties: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> Reply:
    """A whole Gadgetron-side session: CONFIG, HEADER, acquisitions, CLOSE; wait for the reply."""
    try:
        role.send_config(config_xml(properties))
        role.send_header(header_xml)
        role.send_acquisitions(acqs)
        role.send_close()
    except OSError as exc:  # the node may close early after an ERROR
        role.reply.problem = role.reply.problem or f"send failed: {exc}"
    return role.wait(timeout)


@contextlib.contextmanager
def launch_gadget(
    module: str = "mrprior_gadget",
    target: str | None = "mrprior_gadget",
    accept_timeout: float = 120.0,
) -> Any:
    """Start a node exactly as Gadgetron does and yield a :class:`GadgetronRole` on its socket.

    ``target=None`` starts ``python -m gadgetron <port> <module>``, as Gadgetron starts the
    workers of a distributed chain (their re-serialized ``<execute>`` has no target).
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(accept_timeout)
    port = listener.getsockname()[1]
    proc = subprocess.Popen(
        [PYTHON, "-m", "gadgetron", str(port), module, *([target] if target else [])],
        env=node_env(),
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        sock, _ = listener.accept()
        yield GadgetronRole(sock)
    finally:
        listener.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        launch_gadget.last_output = out  # type: ignore[attr-defined]
        launch_gadget.last_returncode = proc.returncode  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connect_listening(port: int, timeout: float = 120.0, host: str = "localhost") -> GadgetronRole:
    """Connect to a listening node, retrying until it accepts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return GadgetronRole(socket.create_connection((host, port), timeout=5))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# -- raw test data ---------------------------------------------------------------------------
def generate_shepp_logan(path: Path, *args: str) -> Path:
    """Run ``ismrmrd_generate_cartesian_shepp_logan`` with ``args``; returns ``path``."""
    subprocess.run(
        ["ismrmrd_generate_cartesian_shepp_logan", *args, "-o", str(path)],
        check=True,
        capture_output=True,
        cwd=str(path.parent),
    )
    return path


def read_raw_file(path: Path) -> tuple[str, list[ismrmrd.Acquisition]]:
    """Header XML and acquisitions of a raw file, with the ``ismrmrd`` package only."""
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=False, mode="r") as ds:
        xml = ds.read_xml_header()
        acqs = [ds.read_acquisition(i) for i in range(ds.number_of_acquisitions())]
    return (xml.decode() if isinstance(xml, bytes) else xml), acqs


def with_geometry(acqs: Sequence[ismrmrd.Acquisition]) -> list[ismrmrd.Acquisition]:
    """Give the acquisitions scanner-like geometry (the generator leaves it all zero)."""
    for acq in acqs:
        acq.position[:] = (1.5, -2.25, 10.0 + 6.0 * acq.idx.slice)
        acq.read_dir[:] = (0.0, 1.0, 0.0)
        acq.phase_dir[:] = (1.0, 0.0, 0.0)
        acq.slice_dir[:] = (0.0, 0.0, -1.0)
        acq.patient_table_position[:] = (0.0, 0.0, -120.0)
    return list(acqs)


def mutate(
    acqs: Sequence[ismrmrd.Acquisition], index: int, fn: Callable[[ismrmrd.Acquisition], Any]
) -> list[ismrmrd.Acquisition]:
    """A copy of ``acqs`` where acquisition ``index`` is replaced by ``fn(copy)``'s result."""
    out = list(acqs)
    acq = ismrmrd.Acquisition.from_bytes(acqs[index].to_bytes())
    result = fn(acq)
    out[index] = result if result is not None else acq
    return out
