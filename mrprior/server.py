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
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from mrprior.config import to_dict
from mrprior.errors import ConfigError, MRPriorError, ProtocolError
from mrprior.io.protocol import MessageId, MRDConnection
from mrprior.node import NodeStats, fail, process

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIGS",
    "RESERVED_PROPERTIES",
    "MRDServer",
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


def _read_handshake(conn: MRDConnection) -> _Handshake | None:
    """CONFIG, HEADER and the optional JSON TEXT; None when the peer closes before a header."""
    msg = conn.read_message(eof_ok=True)
    if msg is None or msg.id is MessageId.CLOSE:
        logger.info("connection closed before any config was sent")
        return None
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
    if msg.id is MessageId.CLOSE:
        logger.info("connection [%s] closed before the header", hs.config_name)
        return None
    if msg.id is not MessageId.HEADER:
        raise ProtocolError(f"expected HEADER after the config, got {msg.id.name}")
    hs.header = msg.payload
    return hs


def _apply_additional_text(conn: MRDConnection, hs: _Handshake) -> None:
    """FIRE's optional configAdditional: a TEXT with JSON right after the header."""
    msg = conn.read_message()
    assert msg is not None
    if msg.id is not MessageId.TEXT:
        conn.unread(msg)
        return
    try:
        name, props = parse_config_text(msg.payload)
    except ConfigError as exc:
        logger.warning("ignoring additional config text: %s", exc)
        return
    if name:
        hs.config_name = normalize_config_name(name)
    known = _setting_names(resolve_recon_config(hs.config_name, {}, hs.yaml_path))
    for key, value in props.items():
        if key in known:
            hs.overrides[key] = value
        else:
            logger.debug("additional config parameter %r is not a recon setting: ignored", key)


def handle_connection(conn: MRDConnection) -> NodeStats | None:
    """Serve one MRD connection: handshake, choose the recon, run :func:`mrprior.node.process`.

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
        _apply_additional_text(conn, hs)
        name = hs.config_name
        cfg = resolve_recon_config(hs.config_name, hs.overrides, hs.yaml_path)
    except Exception as exc:  # handshake failures end in ERROR + CLOSE like any other
        return NodeStats(config_name=name, error=fail(conn, name, exc))
    return process(conn, name, hs.header, cfg)


class MRDServer:
    """A threaded MRD server: one thread per connection, each connection isolated.

    Parameters
    ----------
    host : str
        Address to bind (``127.0.0.1`` by default: only this machine; ``0.0.0.0`` or ``::`` to
        accept remote clients).
    port : int
        TCP port; 0 picks a free one (see :attr:`port` after :meth:`bind`).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9002) -> None:
        self.host = host
        self.requested_port = int(port)
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
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
        sock.settimeout(0.5)
        self._sock = sock
        logger.info("MRD server listening on %s:%d", self.host, self.port)
        return self

    def _serve_one(self, sock: socket.socket, peer: Any) -> None:
        logger.info("connection from %s", peer)
        try:
            stats = handle_connection(MRDConnection(sock))
            if stats is not None:
                self.stats.append(stats)
        except Exception:  # keep the server alive whatever a connection does
            logger.exception("connection from %s failed", peer)
            with contextlib.suppress(OSError):
                sock.close()

    def serve_forever(self) -> None:
        """Accept connections until :meth:`shutdown` (or KeyboardInterrupt)."""
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
            self.connections += 1
            t = threading.Thread(
                target=self._serve_one,
                args=(sock, peer),
                name=f"mrd-{self.connections}",
                daemon=True,
            )
            t.start()
            self._threads = [th for th in self._threads if th.is_alive()] + [t]

    def start(self) -> MRDServer:
        """Serve in a background thread (for tests and in-process use)."""
        if self._sock is None:
            self.bind()
        self._thread = threading.Thread(target=self.serve_forever, name="mrd-server", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, wait for running connections, close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for t in self._threads:
            t.join(timeout)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()

    def __enter__(self) -> MRDServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
