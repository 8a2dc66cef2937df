"""``mrprior replay`` against a FIRE-like server: what it sends, what it shows, what it stores.

The fake server here plays python-ismrmrd-server's side with hand-framed messages: it records
the opening it receives, sends log TEXT in FIRE's format while "working", then images of two
sizes in one series, and CLOSE.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import threading
import time

import ismrmrd
import numpy as np
import pytest

from mrprior.io.images import read_images
from mrprior.io.protocol import MRDConnection
from mrprior.replay import stream
from tests.gadget.harness import PYTHON, REPO, node_env
from tests.gadget.rawdata import RawCase

pytestmark = pytest.mark.ismrmrd_tools


def _text(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<HI", 5, len(raw)) + raw


def _image(ny: int, nx: int, index: int) -> bytes:
    img = ismrmrd.Image.from_array(
        np.full((ny, nx), index, np.float32), transpose=False, image_index=index
    )
    img.image_series_index = 1
    return struct.pack("<H", 1022) + img.to_bytes()


class FakeFireServer:
    """Accepts one connection; records the first messages; replies after the client's CLOSE."""

    def __init__(self, work_s: float = 0.0) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.work_s = work_s
        self.opening: list[tuple[int, bytes]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        sock, _ = self.listener.accept()
        f = sock.makefile("rb")
        while True:
            (mid,) = struct.unpack("<H", f.read(2))
            if mid == 4:
                break
            if mid == 1:
                self.opening.append((mid, f.read(1024)))
            elif mid in (2, 3, 5):
                (n,) = struct.unpack("<I", f.read(4))
                self.opening.append((mid, f.read(n)))
            elif mid == 1008:
                ismrmrd.Acquisition.deserialize_from(f.read)
                self.opening.append((mid, b""))
        end = time.monotonic() + self.work_s
        sock.sendall(_text("INFO     starting the reconstruction"))
        while time.monotonic() < end:  # a long job that keeps the client informed
            time.sleep(0.5)
            sock.sendall(_text("INFO     still working"))
        sock.sendall(
            _image(26, 32, 1) + _text("WARNING  last slice is smaller") + _image(25, 32, 2)
        )
        sock.sendall(struct.pack("<H", 4))
        sock.close()


def test_replay_cli_against_a_fire_server(raw_a3: RawCase, tmp_path) -> None:
    server = FakeFireServer()
    out = tmp_path / "out.h5"
    run = subprocess.run(
        [
            PYTHON,
            "-m",
            "mrprior",
            "replay",
            str(raw_a3.path),
            "--port",
            str(server.port),
            "--config",
            "analyzeflow",
            "--set",
            "method=sense",
            "--set",
            "lam=0.01",
            "-o",
            str(out),
        ],
        env=node_env(),
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # the node's TEXT messages are shown, with their level
    assert "INFO" in run.stderr and "starting the reconstruction" in run.stderr, run.stderr
    assert "WARNING" in run.stderr and "last slice is smaller" in run.stderr
    # FIRE's opening: CONFIG_FILE name, HEADER, then the overrides as JSON parameters TEXT
    ids = [mid for mid, _ in server.opening]
    assert ids[:3] == [1, 3, 5] and set(ids[3:]) == {1008}
    assert server.opening[0][1].rstrip(b"\0") == b"analyzeflow"
    params = json.loads(server.opening[2][1].rstrip(b"\0"))
    assert params == {"parameters": {"method": "sense", "lam": "0.01"}}
    # images of different sizes in one series are all stored, and read back
    images = read_images(out)
    assert sorted(im.data.shape[-2:] for im in images) == [(25, 32), (26, 32)]
    assert {im.image_index: float(im.data.max()) for im in images} == {1: 1.0, 2: 2.0}


def test_replay_waits_while_the_node_keeps_talking(raw_a3: RawCase) -> None:
    """The silence limit resets on every byte: a 4 s job with progress every 0.5 s finishes
    under a 2 s limit (a fixed per-message deadline would have given up)."""
    server = FakeFireServer(work_s=4.0)
    sock = socket.create_connection(("127.0.0.1", server.port))
    result = stream(MRDConnection(sock), raw_a3.header_xml, raw_a3.acqs[:3], timeout=2.0)
    assert result.closed_cleanly and result.send_error is None, result.send_error
    assert len(result.images) == 2 and any("still working" in t for _, t in result.logs)


def test_replay_gives_up_when_the_node_is_gone(raw_a3: RawCase) -> None:
    """A node that stops without closing (``is_alive`` false): the client stops waiting."""
    listener = socket.create_server(("127.0.0.1", 0))
    sock = socket.create_connection(("127.0.0.1", listener.getsockname()[1]))
    peer, _ = listener.accept()  # a node that never answers
    alive = threading.Event()
    alive.set()
    threading.Timer(1.0, alive.clear).start()
    result = stream(MRDConnection(sock), raw_a3.header_xml, raw_a3.acqs[:3], is_alive=alive.is_set)
    assert not result.closed_cleanly
    assert "node stopped" in (result.send_error or ""), result.send_error
    peer.close()
    listener.close()
