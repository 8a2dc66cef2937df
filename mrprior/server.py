"""``mrprior serve``: a standalone MRD server (python-ismrmrd-server / FIRE client conventions).

A client connects and sends:

1. the config: CONFIG_FILE (a config *name*, e.g. ``mrprior_sense``) or CONFIG_TEXT (Gadgetron
   style XML with ``<property name= value=/>`` entries, JSON ``{"parameters": {...}}``, or a bare
   name);
2. HEADER (the ISMRMRD XML header);
3. optionally a TEXT message with JSON ``{"parameters": {"config": ..., ...}}`` (the FIRE
   client's "configAdditional");
4. ACQUISITIONs (waveforms and others are ignored), then CLOSE.

The server answers with IMAGEs, then CLOSE; a failure sends ERROR (8) naming its cause before
the CLOSE. Every connection runs in its own thread and is isolated from the others: one client's
malformed stream or failing reconstruction never touches another, and the server keeps serving.

The recon is chosen by the config name through :data:`CONFIGS`, a registry of config names to
:class:`~mrprior.pipeline.ReconConfig` overrides; properties sent with the config override those.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from mrprior.cancellation import Cancelled, CancelToken
from mrprior.config import to_dict
from mrprior.errors import ConfigError, MRPriorError, ProtocolError
from mrprior.io.protocol import Dialect, Message, MessageId, MRDConnection
from mrprior.node import KEEPALIVE_S, NodeStats, fail, process

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIGS",
    "RESERVED_PROPERTIES",
    "MRDServer",
    "dialect_of",
    "handle_connection",
    "parse_config_text",
    "register_config",
    "resolve_recon_config",
]

#: Config name → ReconConfig overrides. ``default`` is what an empty/absent name selects.
CONFIGS: dict[str, dict[str, Any]] = {}

#: Property names that select the config instead of overriding a recon setting.
RESERVED_PROPERTIES = ("config", "customconfig", "yaml")


def register_config(name: str, overrides: dict[str, Any]) -> None:
    """Register (or replace) config ``name`` with flat ReconConfig ``overrides``."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise ConfigError(f"invalid config name {name!r}")
    CONFIGS[name] = dict(overrides)


register_config("default", {})
register_config("mrprior", {})
register_config("mrprior_zerofill", {"method": "zerofill"})
register_config("mrprior_sense", {"method": "sense"})
register_config("mrprior_l1", {"method": "l1"})
register_config("mrprior_prior", {"method": "prior-pics"})
register_config("mrprior_sample", {"method": "prior-sample"})
register_config("mrprior_nlinv", {"method": "prior-nlinv"})
# Siemens OpenRecon: the UI parameters (JSON TEXT) map onto settings through the label
register_config("openrecon", {})


def normalize_config_name(name: str | None) -> str:
    """Registry key of a config name as clients send it (path and ``.xml``/``.yaml`` dropped)."""
    if name is None:
        return "default"
    name = name.strip().strip("\0").strip()
    if not name:
        return "default"
    base = PurePath(name.replace("\\", "/")).name
    for suffix in (".xml", ".yaml", ".yml", ".json"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
    return base


def resolve_recon_config(
    name: str | None,
    overrides: dict[str, Any] | None = None,
    yaml_path: str | None = None,
) -> Any:
    """The ReconConfig for config ``name`` with property ``overrides`` applied on top.

    Raises
    ------
    ConfigError
        Unknown config name (the valid names are listed) or an invalid override.
    """
    from mrprior.pipeline import load_recon_config

    key = normalize_config_name(name)
    if key not in CONFIGS:
        raise ConfigError(f"unknown config {name!r}; valid configs: {', '.join(sorted(CONFIGS))}")
    merged = {**CONFIGS[key], **(overrides or {})}
    return load_recon_config(yaml_path, overrides=merged or None)


def _xml_properties(root: ET.Element) -> dict[str, str]:
    props: dict[str, str] = {}
    for node in root.iter():
        if node.tag.rsplit("}", 1)[-1] != "property":
            continue
        name = node.get("name")
        value = node.get("value")
        if name is None:  # legacy <property><name/><value/></property>
            name = node.findtext("name")
            value = node.findtext("value")
        if not name or value is None:
            raise ConfigError(f"config property without name/value: {ET.tostring(node)!r}")
        props[name.strip()] = value.strip()
    return props


def parse_config_text(text: str | bytes | None) -> tuple[str | None, dict[str, str]]:
    """Split a config text into a config name and property overrides.

    Accepts Gadgetron XML (``<configuration><property name= value=/></configuration>``, also
    nested inside gadget/external nodes; property ``config`` names the registry entry), JSON
    (``{"parameters": {"config": ..., ...}}``), a bare config name, or nothing (an empty text or a
    bare ``<?xml ...?>`` declaration, which is what Gadgetron sends an external node that has no
    ``<configuration>``).

    Returns
    -------
    name : str or None
        The config name, if the text gives one.
    properties : dict
        The remaining ``name → value`` entries (``yaml`` is kept: a YAML file to start from).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = (text or "").strip().strip("\0").strip()
    body = re.sub(r"^<\?xml[^>]*\?>", "", text).strip()
    if not body:
        return None, {}
    if body.startswith("<"):
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise ConfigError(f"config text is not valid XML: {exc}") from None
        props = _xml_properties(root)
    elif body.startswith("{"):
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config text is not valid JSON: {exc}") from None
        params = data.get("parameters", data) if isinstance(data, dict) else None
        if not isinstance(params, dict):
            raise ConfigError("JSON config must be an object with a 'parameters' object")
        props = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    elif re.fullmatch(r"[\w.\-/\\]+", body):
        return body, {}
    else:
        raise ConfigError(f"config text is neither XML, JSON nor a config name: {body[:60]!r}")
    name = props.pop("customconfig", None) or None
    name = props.pop("config", None) or name
    return name, props


def _setting_names(cfg: Any) -> set[str]:
    names: set[str] = set()

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            names.add(k)
            names.add(prefix + k)
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(to_dict(cfg), "")
    return names


@dataclass
class _Handshake:
    config_name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    yaml_path: str | None = None
    header: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


def dialect_of(first: Message) -> Dialect:
    """The dialect of a peer, from its first message.

    Gadgetron opens an external node with CONFIG_TEXT holding its ``<configuration>`` element
    (or an empty text / a bare XML declaration when the chain has none). Everything else — a
    CONFIG_FILE name, a JSON config, any other XML or a bare name in CONFIG_TEXT — is an MRD
    (FIRE / OpenRecon / python-ismrmrd-server) client. A TEXT message during the opening also
    marks an MRD client (Gadgetron never sends one); see :func:`_read_handshake`.
    """
    if first.id is MessageId.CONFIG_TEXT:
        body = re.sub(r"^<\?xml[^>]*\?>", "", str(first.payload).strip().strip("\0")).strip()
        if not body or re.match(r"<configuration[\s/>]", body):
            return Dialect.GADGETRON
        return Dialect.MRD
    if first.id is MessageId.CONFIG_FILE:
        return Dialect.MRD
    return Dialect.GADGETRON


def _take_text(conn: MRDConnection, hs: _Handshake, text: str) -> None:
    """A TEXT during the opening: FIRE's JSON ``{"parameters": {...}}`` (configAdditional)."""
    conn.dialect = Dialect.MRD
    try:
        name, props = parse_config_text(text)
    except ConfigError as exc:
        note = f"ignoring a TEXT message that is not a JSON config: {exc}"
        logger.warning("%s", note)
        with contextlib.suppress(OSError, ProtocolError):
            conn.report("WARNING", f"mrprior: {note}")
        return
    if name:
        hs.config_name = normalize_config_name(name)
    hs.parameters.update(props)


def _read_handshake(conn: MRDConnection) -> _Handshake | None:
    """Config, optional JSON TEXT, HEADER, optional JSON TEXT; None when the peer closes early.

    Sets ``conn.dialect`` as soon as the first message has arrived, so that every later error
    reaches the peer in its own terms.
    """
    msg = conn.read_message(eof_ok=True)
    if msg is None or msg.id is MessageId.CLOSE:
        logger.info("connection closed before any config was sent")
        return None
    conn.dialect = dialect_of(msg)
    if msg.id is MessageId.CONFIG_FILE:
        name, props = msg.payload, {}
    elif msg.id is MessageId.CONFIG_TEXT:
        name, props = parse_config_text(msg.payload)
    else:
        raise ProtocolError(f"expected CONFIG_FILE or CONFIG_TEXT first, got {msg.id.name}")
    hs = _Handshake(normalize_config_name(name))
    hs.yaml_path = props.pop("yaml", None)
    hs.overrides.update(props)
    msg = conn.read_message()
    assert msg is not None
    while msg.id is MessageId.TEXT:  # OpenRecon / FIRE parameters before the header
        _take_text(conn, hs, msg.payload)
        msg = conn.read_message()
        assert msg is not None
    if msg.id is MessageId.CLOSE:
        logger.info("connection [%s] closed before the header", hs.config_name)
        return None
    if msg.id is not MessageId.HEADER:
        raise ProtocolError(f"expected HEADER after the config, got {msg.id.name}")
    hs.header = msg.payload
    msg = conn.read_message()  # FIRE's client sends its configAdditional right after the header
    assert msg is not None
    if msg.id is MessageId.TEXT:
        _take_text(conn, hs, msg.payload)
    else:
        conn.unread(msg)
    return hs


def _resolve(hs: _Handshake) -> Any:
    """The ReconConfig of a handshake: registry entry, config properties, JSON parameters.

    For config ``openrecon`` every parameter goes through the OpenRecon label
    (:func:`mrprior.openrecon.openrecon_overrides`, strict). For other configs, parameters that
    name a recon setting (or ``settings.<key>``, checked by the method) override it; the rest
    are ignored (FIRE clients send keys of their own).
    """
    from mrprior.openrecon import CONFIG_NAME, openrecon_overrides

    if hs.config_name == CONFIG_NAME:
        overrides = {**hs.overrides, **openrecon_overrides(hs.parameters)}
        return resolve_recon_config(hs.config_name, overrides, hs.yaml_path)
    overrides = dict(hs.overrides)
    if hs.parameters:
        known = _setting_names(resolve_recon_config(hs.config_name, {}, hs.yaml_path))
        for key, value in hs.parameters.items():
            if key in known or key.startswith("settings."):
                overrides[key] = value
            else:
                logger.debug("config parameter %r is not a recon setting: ignored", key)
    return resolve_recon_config(hs.config_name, overrides, hs.yaml_path)


def handle_connection(
    conn: MRDConnection, *, token: CancelToken | None = None, keepalive_s: float = KEEPALIVE_S
) -> NodeStats | None:
    """Serve one MRD connection: opening, dialect, recon choice, then :func:`mrprior.node.process`.

    Never raises for anything the peer does; returns the node's stats (None when the peer closed
    before sending a header, or the stats of the failure).
    """
    name = "default"
    try:
        hs = _read_handshake(conn)
        if hs is None:
            conn.close()
            return None
        name = hs.config_name
        cfg = _resolve(hs)
    except Exception as exc:  # handshake failures end in an error + CLOSE like any other
        return NodeStats(config_name=name, error=fail(conn, name, exc))
    if token is not None and token.cancelled:
        return NodeStats(config_name=name, error=fail(conn, name, Cancelled(token.reason)))
    return process(conn, name, hs.header, cfg, token=token, keepalive_s=keepalive_s)


class MRDServer:
    """A threaded MRD server: one thread per connection, each connection isolated.

    Parameters
    ----------
    host : str
        Address to bind (``127.0.0.1`` by default: only this machine; ``0.0.0.0`` or ``::`` to
        accept remote clients).
    port : int
        TCP port; 0 picks a free one (see :attr:`port` after :meth:`bind`).
    keepalive_s : float
        Seconds between progress TEXT messages to MRD clients during a reconstruction.

    Notes
    -----
    Stopping (:meth:`shutdown`, also what ``mrprior serve`` does on SIGTERM / SIGINT): the
    listening socket closes at once (no new connections); running connections get ``grace_s``
    seconds to finish, then are cancelled — the reconstruction stops at its next iteration, the
    images already made have been delivered, the client gets an error naming the shutdown, and
    CLOSE. Every connection thread has ended when :meth:`shutdown` returns (unless one is stuck
    beyond ``grace_s + cancel_s``, which is logged).
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 9002, *, keepalive_s: float = KEEPALIVE_S
    ) -> None:
        self.host = host
        self.requested_port = int(port)
        self.keepalive_s = float(keepalive_s)
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._tokens: dict[threading.Thread, CancelToken] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connections = 0
        self.stats: list[NodeStats] = []

    @property
    def port(self) -> int:
        """The bound port."""
        if self._sock is None:
            raise RuntimeError("server is not bound")
        return int(self._sock.getsockname()[1])

    @property
    def active(self) -> int:
        """Connections being served now."""
        with self._lock:
            return sum(t.is_alive() for t in self._threads)

    def bind(self) -> MRDServer:
        """Create the listening socket."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.requested_port))
        except OSError as exc:
            sock.close()
            raise MRPriorError(
                f"cannot listen on {self.host}:{self.requested_port}: {exc}"
            ) from None
        sock.listen(16)
        sock.settimeout(0.2)
        self._sock = sock
        logger.info("MRD server listening on %s:%d", self.host, self.port)
        return self

    def _serve_one(self, sock: socket.socket, peer: Any, token: CancelToken) -> None:
        logger.info("connection from %s", peer)
        try:
            stats = handle_connection(
                MRDConnection(sock), token=token, keepalive_s=self.keepalive_s
            )
            if stats is not None:
                self.stats.append(stats)
        except Exception:  # keep the server alive whatever a connection does
            logger.exception("connection from %s failed", peer)
            with contextlib.suppress(OSError):
                sock.close()

    def serve_forever(self) -> None:
        """Accept connections until :meth:`request_stop` / :meth:`shutdown`."""
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                sock, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                raise
            if self._stop.is_set():  # accepted while stopping: refuse politely
                with contextlib.suppress(OSError):
                    sock.close()
                break
            self.connections += 1
            token = CancelToken()
            t = threading.Thread(
                target=self._serve_one,
                args=(sock, peer, token),
                name=f"mrd-{self.connections}",
                daemon=True,
            )
            with self._lock:
                self._threads = [th for th in self._threads if th.is_alive()] + [t]
                self._tokens = {th: tk for th, tk in self._tokens.items() if th.is_alive()}
                self._tokens[t] = token
            t.start()

    def start(self) -> MRDServer:
        """Serve in a background thread (for tests and in-process use)."""
        if self._sock is None:
            self.bind()
        self._thread = threading.Thread(target=self.serve_forever, name="mrd-server", daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Stop accepting new connections (safe to call from a signal handler)."""
        self._stop.set()

    def cancel_all(self, reason: str = "server shutting down") -> int:
        """Cancel every running connection's job; returns how many were running."""
        with self._lock:
            running = [(t, tk) for t, tk in self._tokens.items() if t.is_alive()]
        for _, token in running:
            token.cancel(reason)
        return len(running)

    def shutdown(self, timeout: float = 10.0, *, grace_s: float | None = None) -> bool:
        """Stop accepting, let running connections finish for ``grace_s``, cancel the rest.

        Parameters
        ----------
        timeout : float
            Seconds to wait for cancelled connections to end (each stops at its next iteration).
        grace_s : float, optional
            Seconds running connections may take to finish before they are cancelled
            (default: ``timeout``).

        Returns
        -------
        bool
            True when every connection thread has ended.
        """
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        with self._lock:
            threads = list(self._threads)
        grace = timeout if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self.cancel_all():
            logger.warning("cancelling running connections: server shutting down")
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            logger.error("connections still running after shutdown: %s", ", ".join(stuck))
        return not stuck

    def __enter__(self) -> MRDServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
