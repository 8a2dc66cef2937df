"""Offline replay: stream a raw ISMRMRD HDF5 file to a node and collect the images it returns.

The client side of the MRD protocol, as the FIRE / python-ismrmrd-server client does it: config
(CONFIG_FILE with a name), HEADER (the file's XML header as stored), the recon setting overrides
as a JSON TEXT ``{"parameters": {...}}`` (FIRE's configAdditional, which FIRE servers and
``mrprior serve`` read), every acquisition in file order (noise scans included), CLOSE;
meanwhile a receiver thread collects IMAGEs, echoed ACQUISITIONs (pass-through nodes), TEXT
messages (FIRE's log and error channel: logged with their level; ``ERROR`` ones count as
errors), ERROR (8) texts and the final CLOSE. Sending and receiving run concurrently, as they
must: a node sends images while the client is still streaming.

Waiting: no fixed timeout. The client waits as long as the node is alive — a local node's thread
or a launched node's process is checked every second; a remote node's connection has TCP
keep-alive, and ``mrprior serve`` sends progress TEXT while it works — unless ``timeout`` sets
the longest silence (no byte from the node) to tolerate.

Measured: throughput (acquisition bytes / seconds from the first acquisition sent to the node's
CLOSE) and, per group (slice, contrast, phase, repetition, set, average), the latency from
sending the acquisition flagged LAST_IN_SLICE to receiving the first message of that group
(an image, or the echoed acquisition for a pass-through node).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import ismrmrd
import numpy as np

from mrprior.errors import DataError, ProtocolError
from mrprior.io.protocol import MessageId, MRDConnection, connect, parse_log_text

logger = logging.getLogger(__name__)

__all__ = [
    "ReplayResult",
    "config_text",
    "load_raw_stream",
    "parameters_text",
    "replay",
    "replay_launched",
    "replay_local",
    "stream",
]

GroupKey = tuple[int, int, int, int, int, int]


def _group_key(obj: Any) -> GroupKey:
    """(slice, contrast, phase, repetition, set, average) of an image header or acquisition."""
    src = obj.idx if isinstance(obj, ismrmrd.Acquisition) else obj
    return tuple(  # type: ignore[return-value]
        int(getattr(src, n)) for n in ("slice", "contrast", "phase", "repetition", "set", "average")
    )


@dataclass
class ReplayResult:
    """What a replay sent and received.

    Attributes
    ----------
    images : the images returned, in arrival order.
    echoed : acquisitions returned (a pass-through node echoes them).
    errors : error texts received (ERROR (8), and TEXT at level ERROR / CRITICAL).
    logs : the node's other TEXT messages as (level, text); level None when not in FIRE's format.
    acquisitions_sent, data_bytes_sent : acquisitions and their wire bytes.
    bytes_sent, bytes_received : all bytes on the wire.
    seconds : first acquisition sent → node's CLOSE (or end of stream) received.
    send_seconds : first acquisition sent → our CLOSE sent (how fast the node took the data in).
    latencies_s : per group key, LAST_IN_SLICE sent → first message of that group received.
    closed_cleanly : the node ended with CLOSE (not a dropped connection).
    send_error : why sending or receiving stopped early, if it did.
    """

    images: list[ismrmrd.Image] = field(default_factory=list)
    echoed: list[ismrmrd.Acquisition] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    logs: list[tuple[str | None, str]] = field(default_factory=list)
    acquisitions_sent: int = 0
    data_bytes_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    send_seconds: float = 0.0
    latencies_s: dict[GroupKey, float] = field(default_factory=dict)
    closed_cleanly: bool = False
    send_error: str | None = None
    header_xml: str | None = None

    @property
    def throughput_mb_s(self) -> float:
        """Acquisition megabytes (1e6 bytes) per second."""
        return self.data_bytes_sent / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def error(self) -> str | None:
        """The first error text received, or None."""
        return self.errors[0] if self.errors else None

    def summary(self) -> str:
        """A human-readable report (what ``mrprior replay`` prints)."""
        lat = np.array(sorted(self.latencies_s.values())) * 1e3
        lines = [
            f"sent {self.acquisitions_sent} acquisitions ({self.data_bytes_sent / 1e6:.2f} MB) "
            f"in {self.seconds:.3f} s: {self.throughput_mb_s:.1f} MB/s",
            f"received {len(self.images)} images"
            + (f", {len(self.echoed)} echoed acquisitions" if self.echoed else ""),
        ]
        if lat.size:
            lines.append(
                f"latency per slice (last acquisition -> image): median {np.median(lat):.1f} ms, "
                f"max {lat.max():.1f} ms over {lat.size} slices"
            )
        if self.errors:
            lines.append("ERROR from node: " + " | ".join(self.errors))
        elif not self.closed_cleanly:
            lines.append("node closed the connection without CLOSE")
        return "\n".join(lines)


def load_raw_stream(
    path: str | Path, dataset: str = "dataset"
) -> tuple[str, list[ismrmrd.Acquisition]]:
    """The XML header (text as stored) and all acquisitions of a raw ISMRMRD file, in order."""
    import h5py

    from mrprior.io.raw import iter_acquisitions, read_header
    from mrprior.io.twix import header_xml, is_twix

    header = read_header(path, dataset)  # validates the file and its header with clear errors
    if is_twix(path):  # Siemens .dat: the header mrprior.io.twix builds from the protocol
        text = header_xml(header)
    else:
        with h5py.File(path, "r") as f:
            xml = f[dataset]["xml"][0]
        text = xml.decode("utf-8") if isinstance(xml, bytes) else str(xml)
    acqs = list(iter_acquisitions(path, dataset))
    if not acqs:
        raise DataError(f"{path}: no acquisitions")
    return text.rstrip("\0"), acqs


def config_text(name: str | None = None, overrides: dict[str, Any] | None = None) -> str:
    """A Gadgetron-style ``<configuration>`` with ``config`` and override properties."""
    props = dict(overrides or {})
    if name:
        props = {"config": name, **props}
    body = "".join(
        f"<property name={quoteattr(str(k))} value={quoteattr(str(v))}/>" for k, v in props.items()
    )
    return f'<?xml version="1.0"?>\n<configuration>{body}</configuration>'


def parameters_text(overrides: dict[str, Any]) -> str:
    """FIRE's configAdditional: JSON ``{"parameters": {...}}`` (sent as TEXT after the header)."""
    return json.dumps({"parameters": dict(overrides)}, indent=2)


_LOG_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}


def _watchdog(
    conn: MRDConnection,
    result: ReplayResult,
    done: threading.Event,
    timeout: float | None,
    is_alive: Callable[[], bool] | None,
) -> None:
    """End the connection when the node is dead (``is_alive``) or silent for ``timeout`` s."""
    last_bytes, last_change = -1, time.monotonic()
    while not done.wait(1.0):
        received = conn.bytes_received
        if received != last_bytes:
            last_bytes, last_change = received, time.monotonic()
        reason = None
        if is_alive is not None and not is_alive():
            reason = "the node stopped (thread or process ended) without closing the connection"
        elif timeout is not None and time.monotonic() - last_change > timeout:
            reason = f"no byte from the node for {timeout:g} s"
        if reason is not None and not done.wait(2.0):  # grace for what is still in flight
            logger.warning("giving up: %s", reason)
            result.send_error = result.send_error or reason
            with contextlib.suppress(OSError):
                conn.socket.shutdown(socket.SHUT_RDWR)
            return


def stream(
    conn: MRDConnection,
    header_xml: str,
    acquisitions: Sequence[ismrmrd.Acquisition],
    *,
    config_name: str | None = "default",
    config: str | None = None,
    parameters: dict[str, Any] | None = None,
    timeout: float | None = None,
    is_alive: Callable[[], bool] | None = None,
    lockstep: bool = False,
) -> ReplayResult:
    """Play the client role on ``conn`` and collect what comes back.

    Parameters
    ----------
    conn : MRDConnection
        A fresh connection to the node; closed on return.
    header_xml : str
        Sent as HEADER.
    acquisitions : sequence of ismrmrd.Acquisition
        Sent in order.
    config_name : str, optional
        Sent as CONFIG_FILE when ``config`` is None.
    config : str, optional
        Sent as CONFIG_TEXT (e.g. from :func:`config_text`); wins over ``config_name``.
    parameters : dict, optional
        Recon setting overrides, sent after the header as FIRE's JSON TEXT
        (:func:`parameters_text`).
    timeout : float, optional
        Longest silence from the node (seconds without a byte) before giving up; None: wait as
        long as the connection is up (and ``is_alive`` says so).
    is_alive : callable, optional
        Checked every second; when it returns False the node is taken for dead.
    lockstep : bool
        After each LAST_IN_SLICE acquisition, wait for that group's first reply before sending
        on, so the measured latency is the node's own (no queueing behind earlier slices).
    """
    result = ReplayResult()
    sent_last: dict[GroupKey, float] = {}
    lock = threading.Condition()
    done = threading.Event()
    t_end = [0.0]

    def note(key: GroupKey) -> None:
        now = time.perf_counter()
        with lock:
            t0 = sent_last.get(key)
            if t0 is not None and key not in result.latencies_s:
                result.latencies_s[key] = now - t0
                lock.notify_all()

    def on_text(text: str) -> None:
        level, body = parse_log_text(text)
        log_level = _LOG_LEVELS.get(level or "INFO", logging.INFO)
        logger.log(log_level, "node: %s", body)
        if log_level >= logging.ERROR:
            result.errors.append(body)
        else:
            result.logs.append((level, body))

    def receive() -> None:
        try:
            while True:
                msg = conn.read_message(eof_ok=True)
                if msg is None:
                    break
                if msg.id is MessageId.CLOSE:
                    result.closed_cleanly = True
                    break
                if msg.id is MessageId.IMAGE:
                    result.images.append(msg.payload)
                    note(_group_key(msg.payload))
                elif msg.id is MessageId.ACQUISITION:
                    result.echoed.append(msg.payload)
                    if msg.payload.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE):
                        note(_group_key(msg.payload))
                elif msg.id is MessageId.TEXT:
                    on_text(msg.payload)
                elif msg.id is MessageId.ERROR:
                    logger.error("node sent ERROR: %s", msg.payload)
                    result.errors.append(msg.payload)
                else:
                    logger.info("ignoring %s from the node", msg.id.name)
        except ProtocolError as exc:
            logger.warning("receiving stopped: %s", exc)
            if not result.errors:
                result.send_error = result.send_error or f"receive failed: {exc}"
        finally:
            t_end[0] = time.perf_counter()
            done.set()
            with lock:
                lock.notify_all()

    receiver = threading.Thread(target=receive, name="replay-receiver", daemon=True)
    receiver.start()
    watchdog = threading.Thread(
        target=_watchdog,
        args=(conn, result, done, timeout, is_alive),
        name="replay-watchdog",
        daemon=True,
    )
    watchdog.start()
    t_start = time.perf_counter()
    try:
        if config is not None:
            conn.writer.send_config_text(config)
        else:
            conn.writer.send_config_file(config_name or "default")
        conn.writer.send_header(header_xml)
        if parameters:
            conn.writer.send_text(parameters_text(parameters))
        t_start = time.perf_counter()
        for acq in acquisitions:
            before = conn.writer.bytes_written
            key = _group_key(acq) if acq.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE) else None
            if key is not None:
                with lock:
                    sent_last[key] = time.perf_counter()
            conn.send(acq)
            result.acquisitions_sent += 1
            result.data_bytes_sent += conn.writer.bytes_written - before
            if lockstep and key is not None:
                with lock:
                    lock.wait_for(lambda k=key: k in result.latencies_s or done.is_set())
        result.send_seconds = time.perf_counter() - t_start
        conn.writer.send_close()
    except (OSError, ProtocolError) as exc:
        if not done.is_set():
            result.send_error = f"sending stopped: {exc}"
            logger.warning("%s", result.send_error)
    receiver.join()
    done.set()
    watchdog.join()
    result.seconds = t_end[0] - t_start
    result.bytes_sent = conn.bytes_sent
    result.bytes_received = conn.bytes_received
    conn.close(send_close=False)
    return result


def replay_local(
    header_xml: str,
    acquisitions: Sequence[ismrmrd.Acquisition],
    *,
    config_name: str | None = "default",
    config: str | None = None,
    parameters: dict[str, Any] | None = None,
    timeout: float | None = None,
) -> ReplayResult:
    """Replay into an in-process node (:func:`mrprior.server.handle_connection` on a socketpair);
    waits as long as the node's thread runs (``timeout``: longest silence, optional)."""
    from mrprior.server import handle_connection

    ours, theirs = socket.socketpair()
    node = threading.Thread(
        target=handle_connection, args=(MRDConnection(theirs),), name="replay-node", daemon=True
    )
    node.start()
    result = stream(
        MRDConnection(ours),
        header_xml,
        acquisitions,
        config_name=config_name,
        config=config,
        parameters=parameters,
        timeout=timeout,
        is_alive=node.is_alive,
    )
    node.join()
    return result


def replay_launched(
    header_xml: str,
    acquisitions: Sequence[ismrmrd.Acquisition],
    *,
    config: str,
    module: str = "mrprior.gadget",
    target: str | None = "mrprior_gadget",
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> ReplayResult:
    """Play Gadgetron's role: start the node as Gadgetron does and stream to it.

    Listens on a free loopback port, runs ``python -m gadgetron <port> <module> [<target>]`` (the
    child connects back, exactly as under Gadgetron's ``<execute ... type="python"/>``), sends
    ``config`` as CONFIG_TEXT (the chain's ``<configuration>``), the header and the
    acquisitions, and collects what comes back, for as long as the child process lives. The
    child's exit status is checked.
    """
    import os
    import subprocess
    import sys

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        child_env = {**os.environ, "GADGETRON_EXTERNAL_LOG_LEVEL": "WARNING", **(env or {})}
        args = [sys.executable, "-m", "gadgetron", str(port), module, *([target] if target else [])]
        proc = subprocess.Popen(args, env=child_env)
        listener.settimeout(1.0)
        while True:  # however long the child takes to import torch, while it lives
            try:
                sock, _ = listener.accept()
                break
            except TimeoutError:
                if proc.poll() is not None:
                    raise ProtocolError(
                        f"node {module} exited with status {proc.returncode} before connecting"
                    ) from None
    try:
        result = stream(
            MRDConnection(sock),
            header_xml,
            acquisitions,
            config=config,
            timeout=timeout,
            is_alive=lambda: proc.poll() is None,
        )
    finally:
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    if code != 0 and not result.errors:
        result.errors.append(f"node process exited with status {code}")
    return result


def replay(
    path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 9002,
    local: bool = False,
    config_name: str = "default",
    overrides: dict[str, Any] | None = None,
    timeout: float | None = None,
) -> ReplayResult:
    """Stream raw file ``path`` to a node (``host:port``, or in-process with ``local``).

    The config goes as CONFIG_FILE ``config_name``; ``overrides`` follow the header as FIRE's
    JSON parameters TEXT. ``timeout``: longest silence from the node to tolerate (None: wait as
    long as the connection — or the local node — is alive).
    """
    header_xml, acqs = load_raw_stream(path)
    if local:
        result = replay_local(
            header_xml, acqs, config_name=config_name, parameters=overrides, timeout=timeout
        )
    else:
        result = stream(
            connect(host, port),
            header_xml,
            acqs,
            config_name=config_name,
            parameters=overrides,
            timeout=timeout,
        )
    result.header_xml = header_xml
    return result
