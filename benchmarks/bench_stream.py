"""Streaming benchmark: the mrprior gadget against the gadgetron package's pass-through example.

Both nodes are launched exactly as Gadgetron launches an external Python node
(``python -m gadgetron <port> <module> <target>``, the child connects back to a port this script
listens on), and both are fed the same raw file through the same client code
(:func:`mrprior.replay.stream`, playing Gadgetron's side: CONFIG_TEXT, HEADER, acquisitions, CLOSE).

Two passes per node:

- **throughput** (free-running): acquisition megabytes / seconds from the first acquisition sent
  to the node's CLOSE received (``end-to-end``), and / seconds until the node had taken in all data
  (``ingest``, when our CLOSE went out);
- **latency** (lock-step): after each slice's LAST_IN_SLICE acquisition the client waits for that
  slice's first reply (an image, or the echoed acquisition for pass-through) before sending on, so
  the time measured is what the node adds for that slice, without queueing behind earlier ones.

Run::

    .venv/bin/python benchmarks/bench_stream.py                 # 256² × 8 coils × 8 repetitions
    .venv/bin/python benchmarks/bench_stream.py --matrix 128 --reps 4 --methods zerofill
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import ismrmrd
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mrprior.io.protocol import MRDConnection  # noqa: E402
from mrprior.io.raw import read_raw  # noqa: E402
from mrprior.pipeline import images_from_series, load_recon_config, reconstruct  # noqa: E402
from mrprior.replay import ReplayResult, config_text, load_raw_stream, stream  # noqa: E402


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "gadgets"), env.get("PYTHONPATH", "")]
    )
    env.setdefault("GADGETRON_EXTERNAL_LOG_LEVEL", "WARNING")
    return env


@contextlib.contextmanager
def launched(module: str, target: str) -> Iterator[MRDConnection]:
    """Start a node as Gadgetron does (``<execute>``); yield the connection it opens to us."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(180)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gadgetron", str(listener.getsockname()[1]), module, target],
        env=_env(),
        cwd=str(REPO),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        sock, _ = listener.accept()
        yield MRDConnection(sock, linger_s=0)
    finally:
        listener.close()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def listening(module: str, target: str) -> Iterator[int]:
    """A node listening as for ``<connect port=...>``: ``gadgetron.external.listen`` in a loop."""
    port = _free_port()
    code = (
        "import importlib, gadgetron.external as ext\n"
        f"fn = getattr(importlib.import_module({module!r}), {target!r})\n"
        f"while True: ext.listen({port}, fn)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=_env(),
        cwd=str(REPO),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check(result: ReplayResult, what: str) -> ReplayResult:
    if result.errors or not result.closed_cleanly:
        raise SystemExit(f"{what} failed: {result.errors or result.send_error}")
    return result


def run_listening(
    module: str, target: str, props: dict[str, str] | None, header: str, acqs: list
) -> tuple[ReplayResult, ReplayResult]:
    """Warm-up connection, then a free-running and a lock-step connection to one node process."""
    cfg = config_text(None, props)
    with listening(module, target) as port:
        # (no empty probe connection: gadgetron 1.4.1 spins forever on a peer that sends nothing)
        first = [a for a in acqs if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
        first += _first_slice(acqs)
        out = []
        for lockstep, data in ((False, first), (False, acqs), (True, acqs)):
            conn = _connect_retry(port)
            out.append(_check(stream(conn, header, data, config=cfg, lockstep=lockstep), module))
    return out[1], out[2]


def _connect_retry(port: int) -> MRDConnection:
    deadline = time.monotonic() + 180
    while True:
        try:
            return MRDConnection(
                socket.create_connection(("localhost", port), timeout=5), linger_s=0
            )
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _first_slice(acqs: list) -> list:
    out = []
    for a in acqs:
        if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            continue
        out.append(a)
        if a.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE):
            break
    return out


def run_cold(
    module: str, target: str, props: dict[str, str] | None, header: str, acqs: list
) -> ReplayResult:
    """Launch mode, first connection of a fresh process (start-up cost included)."""
    with launched(module, target) as conn:
        return _check(stream(conn, header, acqs, config=config_text(None, props)), module)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--matrix", type=int, default=256, help="matrix size (default 256)")
    parser.add_argument("--coils", type=int, default=8, help="coils (default 8)")
    parser.add_argument("--reps", type=int, default=8, help="repetitions = slices to recon")
    parser.add_argument(
        "--methods", default="zerofill,sense", help="mrprior methods to run (comma separated)"
    )
    parser.add_argument("--raw", help="use this raw file instead of generating one")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(args.raw) if args.raw else Path(tmp) / "bench.h5"
        if not args.raw:
            subprocess.run(
                [
                    "ismrmrd_generate_cartesian_shepp_logan",
                    "-m",
                    str(args.matrix),
                    "-c",
                    str(args.coils),
                    "-r",
                    str(args.reps),
                    "-C",
                    "-o",
                    str(raw),
                ],
                check=True,
                capture_output=True,
                cwd=tmp,
            )
        header, acqs = load_raw_stream(raw)
        kspaces = read_raw(raw)[1]

    nodes = [("gadgetron pass_through (example)", "gadgetron.examples", "pass_through", None)]
    for m in filter(None, args.methods.split(",")):
        nodes.append((f"mrprior gadget ({m})", "mrprior_gadget", "mrprior_gadget", {"method": m}))

    rows = []
    for label, module, target, props in nodes:
        t0 = time.perf_counter()
        cold = run_cold(module, target, props, header, acqs)
        free, step = run_listening(module, target, props, header, acqs)
        lat = np.array(list(step.latencies_s.values())) * 1e3
        replies = len(free.images) or len(free.echoed)
        rows.append(
            (
                label,
                free.data_bytes_sent / 1e6 / free.send_seconds,
                free.throughput_mb_s,
                float(np.median(lat)),
                float(lat.max()),
                replies,
                cold.seconds,
            )
        )
        print(f"  {label}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    # the same reconstruction without any protocol: what the pipeline alone costs per slice
    pipeline_ms = {}
    for _, _, _, props in nodes[1:]:
        cfg = load_recon_config(overrides=props)
        images_from_series(reconstruct(kspaces[0], cfg), cfg)  # warm-up
        times = []
        for ks in kspaces:
            t = time.perf_counter()
            images_from_series(reconstruct(ks, cfg), cfg)
            times.append(time.perf_counter() - t)
        pipeline_ms[props["method"]] = float(np.median(times)) * 1e3

    n_slices = sum(1 for a in acqs if a.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE))
    print()
    print(
        f"file: {args.matrix}x{args.matrix} (2x readout oversampling), {args.coils} coils, "
        f"{len(acqs)} acquisitions, {n_slices} slices, "
        f"{sum(a.data.nbytes + 340 for a in acqs) / 1e6:.1f} MB; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print()
    print(
        "| node | ingest MB/s | end-to-end MB/s | latency/slice median (ms) | max (ms) "
        "| replies | cold launch, whole file (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, ingest, e2e, med, mx, n, cold_s in rows:
        print(f"| {label} | {ingest:.1f} | {e2e:.1f} | {med:.1f} | {mx:.1f} | {n} | {cold_s:.2f} |")
    print()
    for method, ms in pipeline_ms.items():
        print(f"pipeline alone, in-process ({method}): median {ms:.1f} ms/slice")
    print()
    print("command: .venv/bin/python benchmarks/bench_stream.py " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
