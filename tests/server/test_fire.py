"""``mrprior serve`` against a FIRE-style client (tests/server/fire_client.py), over loopback.

What a python-ismrmrd-server client user sees: a good config returns every image; an unknown
config (also FIRE's default ``invertcontrast``) and NaNs in the middle of a stream come back as
TEXT ``"ERROR    <text>"`` that the client reads, after the images made before the failure; the
server never sends ERROR (8), which FIRE's client does not know, and serves the next client.
"""

from __future__ import annotations

import json

import ismrmrd
import numpy as np
import pytest

from mrprior.io.images import read_images
from mrprior.server import MRDServer
from tests.gadget.harness import mutate
from tests.gadget.rawdata import RawCase, check_images
from tests.server.fire_client import DEFAULT_CONFIG, FireClient, FireResult

pytestmark = pytest.mark.ismrmrd_tools


@pytest.fixture(scope="module")
def server():
    srv = MRDServer("127.0.0.1", 0, keepalive_s=1.0).start()
    yield srv
    srv.shutdown()


def _run(server: MRDServer, case: RawCase, acqs=None, **kwargs) -> FireResult:
    client = FireClient.connect(server.port)
    client.session(case.header_xml, case.acqs if acqs is None else acqs, **kwargs)
    return client.wait()


def _clean(result: FireResult) -> None:
    assert result.problem is None, result.problem
    assert result.closed, "no CLOSE"
    assert result.unknown == [], f"message ids a FIRE client does not know: {result.unknown}"
    for text in result.texts:  # FIRE's format: "<LEVEL padded to 8> <text>"
        assert text[:8].rstrip() in {"INFO", "WARNING", "ERROR"} and text[8] == " ", text


def test_good_config_returns_every_image(server: MRDServer, raw_a2: RawCase, tmp_path) -> None:
    result = _run(server, raw_a2, config="mrprior_sense")
    _clean(result)
    assert result.errors == []
    check_images(result.images, raw_a2, max_nrmse=0.2)
    assert any(level == "INFO" and "done" in text for level, text in result.levelled())
    result.save(tmp_path / "out.h5")  # the client's writer can store them
    assert len(read_images(tmp_path / "out.h5")) == len(raw_a2.groups)


@pytest.mark.parametrize("name", [DEFAULT_CONFIG, "no_such_config"])
def test_unknown_config_is_a_readable_error(server: MRDServer, raw_a2: RawCase, name) -> None:
    result = _run(server, raw_a2, acqs=raw_a2.acqs[:5], config=name)
    _clean(result)
    assert len(result.errors) == 1, result.texts
    assert f"unknown config {name!r}" in result.errors[0]
    assert "mrprior_sense" in result.errors[0]  # the valid names are listed
    assert result.images == []
    _serves_the_next_client(server, raw_a2)


def test_nan_mid_stream_keeps_the_images_made_before(server: MRDServer, raw_a2: RawCase) -> None:
    """A NaN in repetition 1 fails that group only: every good group is delivered (the ones
    before it and, since the bad group's data are dropped, the ones after it), then the error."""
    first = next(i for i, a in enumerate(raw_a2.acqs) if a.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE))
    acqs = mutate(raw_a2.acqs, first + 4, lambda a: a.data.__setitem__((0, 5), np.nan))
    result = _run(server, raw_a2, acqs=acqs, config="mrprior_zerofill")
    _clean(result)
    assert len(result.errors) == 1 and "NaN" in result.errors[0], result.texts
    reps = sorted(img.repetition for img in result.images)
    n_groups = sum(a.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE) for a in raw_a2.acqs)
    assert 0 in reps and 1 not in reps and len(reps) == n_groups - 1, reps
    _serves_the_next_client(server, raw_a2)


def test_config_additional_json_selects_the_recon(server: MRDServer, raw_a3: RawCase) -> None:
    """FIRE's configAdditional after the header: ``config`` switches the recon, known setting
    names override, FIRE's own keys are ignored."""
    extra = {"parameters": {"config": "mrprior_zerofill", "dtype": "uint16", "sendOriginal": 1}}
    result = _run(server, raw_a3, config="mrprior_sense", config_additional=json.dumps(extra))
    _clean(result)
    assert result.errors == []
    check_images(result.images, raw_a3, max_nrmse=None, data_type=ismrmrd.DATATYPE_USHORT)
    meta = ismrmrd.Meta.deserialize(result.images[0].attribute_string)
    assert "ZEROFILL" in meta["ImageProcessingHistory"]


def _serves_the_next_client(server: MRDServer, case: RawCase) -> None:
    result = _run(server, case, config="mrprior_zerofill")
    _clean(result)
    assert result.errors == [] and len(result.images) == len(case.groups)
