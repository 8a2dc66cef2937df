"""Faults: a peer that goes away mid-job, and SIGTERM during a reconstruction.

``mrprior serve`` runs in its own process, as users start it, so that its CPU time can be read
from ``/proc/<pid>/stat`` and its exit status checked. The job is posterior sampling with a very
long annealing ladder (minutes of work); every wait is event-driven (the node's progress TEXT,
process CPU time, process exit) with generous limits, so a slow, loaded machine only makes the
tests slower, never wrong.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gadget.harness import PYTHON, REPO, GadgetronRole, config_xml, free_port, node_env
from tests.gadget.rawdata import RawCase, first_slice
from tests.server.fire_client import FireClient

pytestmark = [
    pytest.mark.ismrmrd_tools,
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc"),
]

#: a job that runs for minutes: posterior sampling with thousands of annealing levels
LONG_JOB = {"settings.sampler": "langevin", "settings.levels": 5000, "settings.num_samples": 2}
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def _wait_idle(pid: int, limit: float = 120.0, window: float = 1.5, busy: float = 0.15) -> float:
    """Seconds until process ``pid`` uses less than ``busy`` CPU-seconds over ``window`` s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        before = _cpu_seconds(pid)
        time.sleep(window)
        if _cpu_seconds(pid) - before < busy:
            return time.monotonic() - t0 - window
    raise AssertionError(f"process {pid} still busy {limit} s later")


@pytest.fixture
def serve() -> Iterator[tuple[subprocess.Popen, int]]:
    """``mrprior serve`` in its own process (progress TEXT every second, 1 s shutdown grace)."""
    port = free_port()
    env = {**node_env(), "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "mrprior",
            "serve",
            "--port",
            str(port),
            "--keepalive",
            "1",
            "--shutdown-grace",
            "1",
        ],
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 180
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(proc.communicate()[0]) from None
            time.sleep(0.2)
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _start_long_job(port: int, case: RawCase) -> FireClient:
    """A FIRE client starts the long job; returns once the node reports it is reconstructing."""
    client = FireClient.connect(port)
    client.send_config_file("mrprior_sample")
    client.send_metadata(case.header_xml)
    client.send_text(json.dumps({"parameters": LONG_JOB}))
    for acq in first_slice(case):
        client.send_acquisition(acq)
    client.send_close()
    deadline = time.monotonic() + 300
    while not any("reconstructing" in t for t in client.result.texts):
        assert time.monotonic() < deadline, client.result
        assert client.result.problem is None and not client.result.closed, client.result
        time.sleep(0.2)
    return client


def _output(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=120)[0]


@pytest.mark.parametrize("dialect", ["mrd", "gadgetron"])
def test_disconnect_mid_job_frees_the_cpu(serve, raw_a3: RawCase, dialect: str) -> None:
    """The client goes away while its job runs: the server is idle within seconds, and serves
    the next client."""
    proc, port = serve
    if dialect == "mrd":
        client = _start_long_job(port, raw_a3)
        sock = client.sock
    else:  # Gadgetron sends CLOSE, then closes its side when it goes away
        role = GadgetronRole(socket.create_connection(("127.0.0.1", port), timeout=30))
        role.send_config(config_xml({"config": "mrprior_sample", **LONG_JOB}))
        role.send_header(raw_a3.header_xml)
        role.send_acquisitions(first_slice(raw_a3))
        role.send_close()
        sock = role.sock
    before = _cpu_seconds(proc.pid)  # the job is running: the process burns CPU
    deadline = time.monotonic() + 300
    while _cpu_seconds(proc.pid) - before < 2.0:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.25)
    t_close = time.monotonic()
    sock.shutdown(socket.SHUT_RDWR)  # what the kernel does when the client process dies
    sock.close()
    idle_after = _wait_idle(proc.pid)
    print(
        f"[{dialect}] server idle {idle_after:.2f} s after the client went away "
        f"({time.monotonic() - t_close:.1f} s incl. the measuring window)"
    )
    assert idle_after < 60
    client = FireClient.connect(port)  # the server still serves
    client.session(raw_a3.header_xml, raw_a3.acqs, config="mrprior_zerofill")
    result = client.wait()
    assert result.closed and result.errors == [] and len(result.images) == len(raw_a3.groups)
    out = _output(proc)
    assert "cancelling the job" in out, out


def test_sigterm_mid_recon_exits_0_without_abort(serve, raw_a3: RawCase) -> None:
    """``docker stop``: SIGTERM during a reconstruction stops accepting, cancels the job after
    the grace period, tells the client why, closes, and exits 0 (no ``terminate called``)."""
    proc, port = serve
    client = _start_long_job(port, raw_a3)
    t_signal = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    seconds = time.monotonic() - t_signal
    print(f"SIGTERM -> exit {proc.returncode} in {seconds:.2f} s")
    assert proc.returncode == 0, out
    assert "terminate called" not in out and "Aborted" not in out, out
    result = client.wait(60)
    assert result.closed, result
    assert len(result.errors) == 1 and "shutting down" in result.errors[0], result.texts
    with pytest.raises(OSError):  # and it no longer accepts connections
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
