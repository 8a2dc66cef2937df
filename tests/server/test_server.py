"""``mrprior serve``: end-to-end over loopback, a malformed-stream corpus, and the CLIs.

Every malformed case must end in one error containing the expected fragment — ERROR (8) for a
Gadgetron peer, FIRE-style TEXT for an MRD client — then CLOSE, then a clean end of stream;
afterwards the same server must still answer a new connection.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import ismrmrd
import numpy as np
import pytest

from mrprior.cli import main as cli_main
from mrprior.io.images import read_images
from mrprior.replay import replay_local
from mrprior.server import MRDServer, parse_config_text
from tests.gadget.harness import (
    PYTHON,
    REPO,
    GadgetronRole,
    config_xml,
    connect_listening,
    free_port,
    mutate,
    node_env,
    play,
)
from tests.gadget.rawdata import RawCase, check_images, first_slice

pytestmark = pytest.mark.ismrmrd_tools


@pytest.fixture(scope="module")
def server():
    srv = MRDServer("127.0.0.1", 0).start()
    yield srv
    srv.shutdown()


DIALECTS = ("gadgetron", "mrd")


def _connect(srv: MRDServer, dialect: str = "gadgetron") -> GadgetronRole:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    return GadgetronRole(sock, mrd=dialect == "mrd")


def _open(role: GadgetronRole, name: str, props: dict | None = None) -> None:
    """Open as the role's peer does: Gadgetron sends ``<configuration>`` with properties, an MRD
    (FIRE) client a CONFIG_FILE name, and its parameters as JSON TEXT before the header."""
    if role.mrd:
        role.send_config_name(name)
        if props:
            role.send_text(json.dumps({"parameters": props}))
    else:
        role.send_config(config_xml({"config": name, **(props or {})}))


def _probe(srv: MRDServer, dialect: str = "gadgetron") -> None:
    """The server answers a new connection: config + header + CLOSE ends in a clean CLOSE."""
    role = _connect(srv, dialect)
    _open(role, "mrprior_zerofill")
    role.send_raw(struct.pack("<HI", 3, 0))  # an empty header is an error...
    role.send_close()
    reply = role.wait(30)
    assert reply.closed and reply.eof_after_close and reply.problem is None
    assert len(reply.errors) == 1 and "header is empty" in reply.errors[0]


def test_serve_end_to_end_by_config_name(server: MRDServer, raw_a2: RawCase) -> None:
    role = _connect(server, "mrd")
    role.send_config_name("mrprior_sense")  # FIRE client: CONFIG_FILE with a name
    role.send_header(raw_a2.header_xml)
    role.send_acquisitions(raw_a2.acqs)
    role.send_close()
    reply = role.wait()
    assert reply.errors == [] and reply.closed and reply.eof_after_close
    assert reply.problem is None, reply.problem
    check_images(reply.images, raw_a2, max_nrmse=0.2)
    assert any(level == "INFO" and "done" in text for level, text in reply.logs), reply.logs


@pytest.mark.parametrize("dialect", DIALECTS)
def test_concurrent_connections_are_isolated(
    server: MRDServer, raw_a3: RawCase, dialect: str
) -> None:
    """A good and a failing stream at the same time: the good one is unaffected."""
    good = _connect(server, dialect)
    bad = _connect(server, dialect)
    _open(bad, "mrprior_zerofill")
    bad.send_header(raw_a3.header_xml)
    _open(good, "mrprior_zerofill")
    good.send_header(raw_a3.header_xml)
    nan = mutate(raw_a3.acqs, 5, lambda a: a.data.__setitem__((0, 3), np.nan))
    for g, b in zip(raw_a3.acqs, nan, strict=True):
        good.send_acquisitions([g])
        with contextlib.suppress(OSError):
            bad.send_acquisitions([b])
    good.send_close()
    with contextlib.suppress(OSError):
        bad.send_close()
    good_reply, bad_reply = good.wait(), bad.wait()
    assert good_reply.errors == [] and good_reply.problem is None
    check_images(good_reply.images, raw_a3, max_nrmse=None)
    assert len(bad_reply.errors) == 1 and "NaN" in bad_reply.errors[0]


# -- malformed-stream corpus, in both dialects --------------------------------------------------
@dataclass
class Case:
    name: str
    run: Callable[[GadgetronRole, RawCase], None]
    expected: str  # fragment of the error text
    images: int = 0  # images that must still arrive before the error
    expected_mrd: str | None = None  # when an MRD peer's error differs


def _send_good_start(role: GadgetronRole, case: RawCase, props: dict | None = None) -> None:
    _open(role, "mrprior_zerofill", props)
    role.send_header(case.header_xml)


def _truncated_message_header(role: GadgetronRole, case: RawCase) -> None:
    _send_good_start(role, case)
    role.send_acquisitions(case.acqs[:3])
    role.send_raw(b"\xf0")  # half a message id
    role.shutdown_write()


def _truncated_payload(role: GadgetronRole, case: RawCase) -> None:
    _send_good_start(role, case)
    role.send_acquisitions(first_slice(case))
    raw = struct.pack("<H", 1008) + case.acqs[-1].to_bytes()
    role.send_raw(raw[: 2 + 340 + 100])
    role.shutdown_write()


def _unknown_id(role: GadgetronRole, case: RawCase) -> None:
    _send_good_start(role, case)
    role.send_raw(struct.pack("<H", 1999) + b"\x00" * 32)
    role.send_close()


def _garbage_header(role: GadgetronRole, case: RawCase) -> None:
    _open(role, "mrprior_zerofill")
    text = b"<ismrmrdHeader><encoding><oops"
    role.send_raw(struct.pack("<HI", 3, len(text)) + text)
    role.send_acquisitions(case.acqs[:2])
    role.send_close()


def _header_without_encoding(role: GadgetronRole, case: RawCase) -> None:
    _open(role, "mrprior_zerofill")
    start, end = case.header_xml.index("<encoding>"), case.header_xml.index("</encoding>")
    text = (case.header_xml[:start] + case.header_xml[end + len("</encoding>") :]).encode()
    role.send_raw(struct.pack("<HI", 3, len(text)) + text)
    role.send_close()


def _acquisition_before_header(role: GadgetronRole, case: RawCase) -> None:
    _open(role, "mrprior_zerofill")
    role.send_acquisitions(case.acqs[:2])
    role.send_close()


def _inconsistent_coils(role: GadgetronRole, case: RawCase) -> None:
    def fewer(acq: ismrmrd.Acquisition) -> ismrmrd.Acquisition:
        return ismrmrd.Acquisition.from_array(acq.data[:2].copy(), None, idx=acq.idx)

    _send_good_start(role, case)
    role.send_acquisitions(mutate(case.acqs, 10, fewer)[:12])
    role.send_close()


def _non_cartesian(role: GadgetronRole, case: RawCase) -> None:
    _open(role, "mrprior_zerofill")
    role.send_header(case.header_xml.replace(">cartesian<", ">radial<"))
    role.send_acquisitions(case.acqs[:2])
    role.send_close()


def _nan_after_a_slice(role: GadgetronRole, case: RawCase) -> None:
    n = len(first_slice(case))
    acqs = mutate(case.acqs, n + 3, lambda a: a.data.__setitem__((1, 7), np.nan))
    _send_good_start(role, case)
    role.send_acquisitions(acqs)
    role.send_close()


def _failing_recon(role: GadgetronRole, case: RawCase) -> None:
    _open(role, "default", {"method": "no-such-method"})
    role.send_header(case.header_xml)
    role.send_acquisitions(case.acqs[:2])
    role.send_close()


def _failing_recon_settings(role: GadgetronRole, case: RawCase) -> None:
    """A recon that starts and then fails on the data (unknown method setting)."""
    _send_good_start(role, case, {"method": "sense", "settings.no_such_knob": "3"})
    role.send_acquisitions(case.acqs)
    role.send_close()


def _oversized_length(role: GadgetronRole, case: RawCase) -> None:
    _send_good_start(role, case)
    role.send_raw(struct.pack("<HI", 5, 0xFFFFFF00))  # TEXT claiming 4 GB
    role.shutdown_write()


def _oversized_acquisition(role: GadgetronRole, case: RawCase) -> None:
    _send_good_start(role, case)
    hdr = ismrmrd.AcquisitionHeader()
    hdr.version, hdr.number_of_samples, hdr.active_channels = 1, 65535, 65535
    role.send_raw(struct.pack("<H", 1008) + bytes(hdr))
    role.shutdown_write()


def _unknown_config(role: GadgetronRole, case: RawCase) -> None:
    _open(role, "no_such_config")
    role.send_header(case.header_xml)
    role.send_close()


def _bad_config(role: GadgetronRole, case: RawCase) -> None:
    if role.mrd:  # a FIRE client's local config file (-C) that is not valid JSON
        role.send_config('{"parameters": {"method": "sense",')
    else:
        role.send_config("<configuration><property name='method' value='sense'>")
    role.send_header(case.header_xml)
    role.send_close()


def _no_close(role: GadgetronRole, case: RawCase) -> None:
    _send_good_start(role, case)
    role.send_acquisitions(first_slice(case))
    role.shutdown_write()  # stream ends between messages, without CLOSE


CORPUS = [
    Case("truncated-message-header", _truncated_message_header, "stream ended inside message id"),
    Case("truncated-acquisition", _truncated_payload, "inside ACQUISITION payload", images=1),
    Case("unknown-message-id", _unknown_id, "unknown message id 1999"),
    Case("garbage-header-xml", _garbage_header, "not a valid ISMRMRD header"),
    Case("header-without-encoding", _header_without_encoding, "encoding"),
    Case("acquisition-before-header", _acquisition_before_header, "expected HEADER"),
    Case("inconsistent-coils", _inconsistent_coils, "inconsistent coil count"),
    Case("non-cartesian", _non_cartesian, "only Cartesian"),
    Case("nan-data", _nan_after_a_slice, "NaN", images=3),  # the other repetitions arrive
    Case("failing-recon-method", _failing_recon, "no-such-method"),
    Case("failing-recon-settings", _failing_recon_settings, "no_such_knob"),
    Case("oversized-length-field", _oversized_length, "oversized TEXT payload"),
    Case("oversized-acquisition", _oversized_acquisition, "oversized ACQUISITION payload"),
    Case("unknown-config-name", _unknown_config, "unknown config 'no_such_config'"),
    Case("bad-config", _bad_config, "not valid XML", expected_mrd="not valid JSON"),
    Case("end-without-close", _no_close, "stream ended before CLOSE", images=1),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_malformed_stream(server: MRDServer, raw_a2: RawCase, case: Case, dialect: str) -> None:
    """Each malformed stream ends in one error in the peer's dialect — ERROR (8) for Gadgetron,
    TEXT ``"ERROR    ..."`` for MRD clients — after the images made before it, then CLOSE."""
    role = _connect(server, dialect)
    # the server may close before we finish sending; the reply must still be right
    with contextlib.suppress(OSError):
        case.run(role, raw_a2)
    reply = role.wait(60)
    assert reply.problem is None, reply.problem
    assert reply.closed and reply.eof_after_close, "no clean CLOSE"
    assert len(reply.errors) == 1, reply.errors
    expected = case.expected_mrd if dialect == "mrd" and case.expected_mrd else case.expected
    assert expected in reply.errors[0], reply.errors[0]
    assert reply.errors[0].startswith("mrprior [")
    assert len(reply.images) == case.images
    _probe(server, dialect)


def test_connection_dropped_mid_stream(server: MRDServer, raw_a2: RawCase) -> None:
    """A client that vanishes mid-message: nobody to tell, but the server logs it and lives."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    role_bytes = config_xml({"config": "mrprior_zerofill"}).encode()
    sock.sendall(struct.pack("<HI", 2, len(role_bytes)) + role_bytes)
    hdr = raw_a2.header_xml.encode()
    sock.sendall(struct.pack("<HI", 3, len(hdr)) + hdr)
    sock.sendall(struct.pack("<H", 1008) + raw_a2.acqs[1].to_bytes()[:200])
    sock.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(s.error and "ACQUISITION" in s.error for s in server.stats):
            break
        time.sleep(0.1)
    else:
        raise AssertionError([s.error for s in server.stats])
    _probe(server)


def test_empty_connection_is_not_an_error(server: MRDServer) -> None:
    socket.create_connection(("127.0.0.1", server.port)).close()
    _probe(server)


@pytest.mark.parametrize(
    ("text", "name", "props"),
    [
        ("", None, {}),
        ('<?xml version="1.0"?>\n', None, {}),
        ("mrprior_l1.xml", "mrprior_l1.xml", {}),
        (config_xml({"config": "mrprior_l1", "lam": "0.01"}), "mrprior_l1", {"lam": "0.01"}),
        (
            "<configuration><property><name>method</name><value>sense</value></property>"
            "</configuration>\0",
            None,
            {"method": "sense"},
        ),
        ('{"parameters": {"config": "mrprior_sense", "seed": 3}}', "mrprior_sense", {"seed": "3"}),
    ],
)
def test_parse_config_text(text: str, name: str | None, props: dict) -> None:
    assert parse_config_text(text) == (name, props)


def test_replay_local_and_cli(raw_a3: RawCase, tmp_path) -> None:
    result = replay_local(raw_a3.header_xml, raw_a3.acqs, config_name="mrprior_zerofill")
    assert result.errors == [] and result.closed_cleanly
    check_images(result.images, raw_a3, max_nrmse=None)
    assert len(result.latencies_s) == len(raw_a3.groups)
    assert result.throughput_mb_s > 0
    out = tmp_path / "images.h5"
    code = cli_main(
        [
            "replay",
            str(raw_a3.path),
            "--local",
            "--config",
            "mrprior_zerofill",
            "-o",
            str(out),
            "--png",
            str(tmp_path / "png"),
        ]
    )
    assert code == 0
    assert len(read_images(out)) == len(raw_a3.groups)
    assert len(list((tmp_path / "png").glob("*.png"))) == len(raw_a3.groups)


def _wait_listening(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _serve_process(port: int, **kwargs) -> subprocess.Popen:
    """``mrprior serve --port PORT`` as a user starts it, in its own process."""
    return subprocess.Popen(
        [PYTHON, "-m", "mrprior", "serve", "--port", str(port)],
        env=node_env(),
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kwargs,
    )


def test_cli_serve_and_replay_subprocesses(raw_a3: RawCase, tmp_path) -> None:
    """``mrprior serve`` in one process, ``mrprior replay`` in another, as a user runs them."""
    port = free_port()
    serve = _serve_process(port)
    try:
        _wait_listening(port)
        out = tmp_path / "out.h5"
        ok = subprocess.run(
            [
                PYTHON,
                "-m",
                "mrprior",
                "replay",
                str(raw_a3.path),
                "--port",
                str(port),
                "--config",
                "mrprior_zerofill",
                "-o",
                str(out),
            ],
            env=node_env(),
            cwd=str(REPO),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "MB/s" in ok.stdout and "latency per slice" in ok.stdout
        assert len(read_images(out)) == len(raw_a3.groups)
        bad = subprocess.run(
            [
                PYTHON,
                "-m",
                "mrprior",
                "replay",
                str(raw_a3.path),
                "--port",
                str(port),
                "--config",
                "mrprior_zerofill",
                "--set",
                "method=nope",
                "-o",
                str(tmp_path / "x.h5"),
            ],
            env=node_env(),
            cwd=str(REPO),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bad.returncode == 1
        assert "node sent ERROR" in bad.stderr and "nope" in bad.stderr
    finally:
        serve.terminate()
        serve.wait(10)


def test_gadgetron_connect_mode_against_serve(server: MRDServer, raw_a3: RawCase) -> None:
    """What Gadgetron sends a <connect port=...> node is accepted by ``mrprior serve`` too."""
    reply = play(
        connect_listening(server.port),
        raw_a3.header_xml,
        raw_a3.acqs,
        {"config": "mrprior_zerofill"},
    )
    assert reply.errors == [] and reply.closed
    check_images(reply.images, raw_a3, max_nrmse=None)


@pytest.mark.parametrize("how", ["SIGINT-while-ignored", "SIGTERM"])
def test_serve_stops_cleanly_on_signals(how: str) -> None:
    """``mrprior serve`` stops on Ctrl-C even when started with SIGINT ignored (as a background
    job of a non-interactive shell is), and on SIGTERM (``docker stop``), exiting 0."""
    import signal

    port = free_port()
    ignore = how.startswith("SIGINT")
    serve = _serve_process(
        port,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore else None,
    )
    try:
        _wait_listening(port)
        serve.send_signal(signal.SIGINT if ignore else signal.SIGTERM)
        assert serve.wait(30) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
