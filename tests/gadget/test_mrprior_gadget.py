"""The Gadgetron gadget over a real loopback socket, launched exactly as Gadgetron launches it.

The harness (tests/gadget/harness.py) plays Gadgetron byte for byte: it listens on a free port,
starts ``python -m gadgetron <port> mrprior_gadget mrprior_gadget`` with the gadgets folder on
PYTHONPATH, sends CONFIG (the ``<configuration>`` element) and HEADER, streams the acquisitions of
an ``ismrmrd_generate_cartesian_shepp_logan`` file, then CLOSE, and reads images / ERROR / CLOSE.
"""

from __future__ import annotations

import struct
import subprocess

import ismrmrd
import pytest

from tests.gadget.harness import (
    PYTHON,
    REPO,
    GadgetronRole,
    config_xml,
    connect_listening,
    free_port,
    launch_gadget,
    node_env,
    play,
)
from tests.gadget.rawdata import RawCase, check_images

pytestmark = pytest.mark.ismrmrd_tools


def _assert_clean(reply, errors: int = 0) -> None:
    assert reply.problem is None, reply.problem
    assert reply.closed and reply.eof_after_close
    assert len(reply.errors) == errors, reply.errors


@pytest.mark.parametrize(("case_name", "max_nrmse"), [("raw_a2", 0.2), ("raw_a3", 0.3)])
def test_launch_mode_sense(
    case_name: str, max_nrmse: float, request: pytest.FixtureRequest
) -> None:
    case: RawCase = request.getfixturevalue(case_name)
    with launch_gadget() as role:
        reply = play(role, case.header_xml, case.acqs, {"config": "mrprior_sense"})
    assert launch_gadget.last_returncode == 0, launch_gadget.last_output
    _assert_clean(reply)
    check_images(reply.images, case, max_nrmse=max_nrmse)


@pytest.mark.parametrize("module", ["mrprior_gadget", "mrprior.gadget"])
def test_distributed_worker_started_without_a_target(raw_a3: RawCase, module: str) -> None:
    """Gadgetron starts a distributed chain's worker as ``python -m gadgetron <port> <module>``
    (no target): the node serves the connection and exits 0; errors still end in ERROR (8)."""
    props = {"config": "mrprior_zerofill", "prewhiten": "false"}  # the worker chain's settings
    with launch_gadget(module, target=None) as role:
        reply = play(role, raw_a3.header_xml, raw_a3.acqs, props)
    assert launch_gadget.last_returncode == 0, launch_gadget.last_output
    _assert_clean(reply)
    check_images(reply.images, raw_a3, max_nrmse=None)
    with launch_gadget(module, target=None) as role:
        bad = play(role, raw_a3.header_xml, raw_a3.acqs[:3], {"method": "nope"})
    assert launch_gadget.last_returncode == 0, launch_gadget.last_output
    _assert_clean(bad, errors=1)
    assert "unknown method 'nope'" in bad.errors[0]


def test_properties_override_yaml(raw_a2: RawCase) -> None:
    props = {"method": "zerofill", "dtype": "uint16", "extra_series": "phase"}
    with launch_gadget() as role:
        reply = play(role, raw_a2.header_xml, raw_a2.acqs, props)
    _assert_clean(reply)
    mags = [im for im in reply.images if im.image_series_index == 1]
    phases = [im for im in reply.images if im.image_series_index == 2]
    errors = check_images(mags, raw_a2, max_nrmse=None, data_type=ismrmrd.DATATYPE_USHORT)
    assert min(errors) > 0.3  # zero-filled at R = 2: visibly aliased, unlike SENSE
    assert len(phases) == len(mags)
    assert all(im.image_type == ismrmrd.IMTYPE_PHASE for im in phases)
    meta = ismrmrd.Meta.deserialize(mags[0].attribute_string)
    assert "ZEROFILL" in meta["ImageProcessingHistory"]


def test_gadgetron_pass_through_example_through_the_same_harness(raw_a2: RawCase) -> None:
    """Sanity check of the harness: the gadgetron package's own example echoes everything."""
    with launch_gadget("gadgetron.examples", "pass_through") as role:
        reply = play(role, raw_a2.header_xml, raw_a2.acqs)
    assert reply.problem is None and reply.closed
    assert len(reply.acquisitions) == len(raw_a2.acqs)


def _truncated_acquisition(role: GadgetronRole, case: RawCase) -> None:
    raw = struct.pack("<H", 1008) + case.acqs[-1].to_bytes()
    role.send_raw(raw[: len(raw) // 2])
    role.shutdown_write()


def _unknown_id(role: GadgetronRole, case: RawCase) -> None:
    role.send_raw(struct.pack("<H", 4321) + b"\0" * 64)
    role.send_close()


@pytest.mark.parametrize(
    ("name", "tail", "expected"),
    [
        ("truncated", _truncated_acquisition, "stream ended inside ACQUISITION payload"),
        ("unknown-id", _unknown_id, "unknown message id 4321"),
    ],
)
def test_launch_mode_errors_after_a_slice(raw_a2: RawCase, name: str, tail, expected: str) -> None:
    """Images made before a failure arrive; then ERROR (8) naming the cause, then CLOSE."""
    first_slice = []
    for acq in raw_a2.acqs:
        first_slice.append(acq)
        if acq.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE):
            break
    with launch_gadget() as role:
        role.send_config(config_xml({"method": "zerofill"}))
        role.send_header(raw_a2.header_xml)
        role.send_acquisitions(first_slice)
        tail(role, raw_a2)
        reply = role.wait()
    assert launch_gadget.last_returncode == 0, launch_gadget.last_output
    _assert_clean(reply, errors=1)
    assert expected in reply.errors[0]
    assert len(reply.images) == 1 and reply.images[0].repetition == 0


def test_bad_property_is_an_error(raw_a2: RawCase) -> None:
    with launch_gadget() as role:
        reply = play(role, raw_a2.header_xml, raw_a2.acqs[:5], {"no_such_setting": "1"})
    _assert_clean(reply, errors=1)
    assert "no_such_setting" in reply.errors[0]
    assert not reply.images


def test_listen_mode(raw_a3: RawCase) -> None:
    """Gadgetron's <connect port=...> mode: the node listens via gadgetron.external.listen and
    serves one connection after the other (a failing one does not stop it)."""
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, str(REPO / "gadgets" / "mrprior_gadget.py"), "--port", str(port)],
        env=node_env(),
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        bad = play(connect_listening(port), raw_a3.header_xml, raw_a3.acqs[:3], {"method": "x"})
        good = play(
            connect_listening(port), raw_a3.header_xml, raw_a3.acqs, {"config": "mrprior_zerofill"}
        )
        assert proc.poll() is None, "the listening node exited"
    finally:
        proc.kill()
        proc.wait()
    _assert_clean(bad, errors=1)
    assert "unknown method 'x'" in bad.errors[0]
    _assert_clean(good)
    check_images(good.images, raw_a3, max_nrmse=None)
