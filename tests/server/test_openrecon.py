"""OpenRecon: the container label against schema 1.1.0, and streams sent the way the scanner
sends them (config ``openrecon``, the UI parameters as JSON TEXT before the header)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import ismrmrd
import jsonschema
import pytest

from mrprior.openrecon import LABEL_KEY, label, label_parameters, openrecon_overrides
from mrprior.pipeline import load_recon_config
from mrprior.recon.prior_methods import default_settings
from mrprior.server import MRDServer
from tests.gadget.rawdata import RawCase, first_slice
from tests.server.fire_client import FireClient, FireResult

ROOT = Path(__file__).resolve().parents[2]
OPENRECON = ROOT / "docker" / "openrecon"
SCHEMA = OPENRECON / "OpenReconSchema_1.1.0.json"
LABEL = OPENRECON / "OpenReconLabel.json"

#: every choice value of every choice parameter, each at least once; fast settings where the
#: parameter allows (few iterations, one posterior sample)
RUNS = [
    {"method": "zerofill", "prior": "complex", "device": "auto", "dtype": "uint16"},
    {"method": "sense", "prior": "magnitude", "device": "cpu", "dtype": "float32", "phase": True},
    {"method": "l1", "dtype": "uint16", "strength": 2.0, "iterations": 5, "seed": 3},
    {"method": "prior-pics", "prior": "magnitude", "iterations": 2, "strength": 0.5},
    {"method": "prior-sample", "iterations": 2, "samples": 1, "uncertainty": True},
    pytest.param(
        {"method": "prior-nlinv", "iterations": 3, "prewhiten": False, "calibsize": 16},
        marks=pytest.mark.slow,  # ~40 s on two busy cores
    ),
]


@pytest.fixture(scope="module")
def server():
    srv = MRDServer("127.0.0.1", 0, keepalive_s=1.0).start()
    yield srv
    srv.shutdown()


def _openrecon(server: MRDServer, case: RawCase, parameters: dict, acqs=None) -> FireResult:
    """The scanner's order: config name, JSON parameters TEXT, header, data, CLOSE."""
    client = FireClient.connect(server.port)
    client.send_config_file("openrecon")
    client.send_text(json.dumps({"parameters": parameters}))
    client.send_metadata(case.header_xml)
    for acq in first_slice(case) if acqs is None else acqs:
        client.send_acquisition(acq)
    client.send_close()
    return client.wait()


# -- the label ---------------------------------------------------------------------------------
def test_label_is_valid_against_schema_1_1_0() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    data = json.loads(LABEL.read_text())
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(data)]
    assert errors == []
    assert data == label()  # docker/ links to the label the server reads
    rec = data["reconstruction"]
    assert (rec["emitter"], rec["injector"], rec["port"]) == ("raw", "image", 9002)
    assert rec["transfer_protocol"] == {"protocol": "ISMRMRD", "version": "1.4.1"}
    assert len(data["parameters"]) <= 14


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        (("parameters", 3, "id"), "str-ength", "does not match"),  # ids are alphanumeric
        (("parameters", 9, "unit", "en"), "pixel", "is too long"),  # units <= 3 characters
        (("parameters", 3, "default"), 1.05, "is not valid under any"),  # doubles in 0.1 steps
        (("parameters", 1, "type"), "list", "is not valid under any"),
        (("reconstruction", "emitter"), "kspace", "is not one of"),
        (("general", "version"), "v1", "does not match"),
    ],
)
def test_schema_rejects_what_openrecon_rejects(path, value, fragment) -> None:
    """The schema file is not toothless: each constraint the issue names is enforced."""
    data = json.loads(LABEL.read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = list(validator.iter_errors(data))
    assert errors, "the schema accepted it"
    messages = [e.message for e in errors] + [c.message for e in errors for c in e.context]
    assert any(fragment in m for m in messages), messages


def test_too_many_parameters_are_rejected() -> None:
    data = json.loads(LABEL.read_text())
    data["parameters"].append({**data["parameters"][-1], "id": "extra"})
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    assert any("is too long" in e.message for e in validator.iter_errors(data))


def test_every_parameter_maps_onto_a_setting() -> None:
    """Changing any one parameter from its default changes the resolved ReconConfig."""
    defs = label_parameters()
    base = load_recon_config(overrides=openrecon_overrides({}))
    changed = {
        "method": "l1",
        "prior": "magnitude",
        "seed": 7,
        "device": "cpu",
        "prewhiten": False,
        "calibsize": 16,
        "phase": True,
        "seriesindex": 10,
        "dtype": "float32",
    }
    for pid, value in changed.items():
        cfg = load_recon_config(overrides=openrecon_overrides({pid: value}))
        assert cfg != base, pid
    for pid, method, key in [
        ("strength", "l1", "lam"),
        ("iterations", "sense", "max_iterations"),
        ("samples", "prior-sample", "num_samples"),
    ]:
        a = load_recon_config(overrides=openrecon_overrides({"method": method}))
        b = load_recon_config(
            overrides=openrecon_overrides({"method": method, pid: defs[pid]["maximum"]})
        )
        assert a.settings.get(key) != b.settings.get(key), pid
    searched = load_recon_config(overrides=openrecon_overrides({"method": "prior-pics"}))
    fixed = load_recon_config(
        overrides=openrecon_overrides({"method": "prior-pics", "strength": 2.0})
    )
    assert searched.settings.get("kappa_search") is None  # the default: searched on volumes
    assert fixed.settings["kappa_search"] == "never" and fixed.settings["kappa"] == pytest.approx(
        2.0 * default_settings()["prior-pics"]["kappa"]
    )
    unc = openrecon_overrides({"method": "prior-sample", "uncertainty": False})
    assert "uncertainty" not in unc["output.extra_series"]
    assert set(changed) | {"strength", "iterations", "samples", "uncertainty", "config"} == set(
        defs
    )


# -- streams sent the OpenRecon way ----------------------------------------------------------------
@pytest.mark.parametrize(
    "params", RUNS, ids=[(r if isinstance(r, dict) else r.values[0])["method"] for r in RUNS]
)
def test_openrecon_stream_reconstructs(server: MRDServer, raw_a3: RawCase, params: dict) -> None:
    result = _openrecon(server, raw_a3, {"config": "openrecon", **params})
    assert result.problem is None and result.closed and result.unknown == []
    assert result.errors == [], result.texts
    mags = [im for im in result.images if im.image_series_index == 1]
    assert len(mags) == 1
    expected = 1 + bool(params.get("phase")) + (params["method"] == "prior-sample")
    assert len(result.images) == expected, [im.image_series_index for im in result.images]
    dtype = params.get("dtype", "uint16")
    want = ismrmrd.DATATYPE_USHORT if dtype == "uint16" else ismrmrd.DATATYPE_FLOAT
    assert mags[0].data_type == want
    if dtype == "uint16":
        assert 0 < int(mags[0].data.max()) <= 4095
    meta = ismrmrd.Meta.deserialize(mags[0].attribute_string)
    for key in (
        "DataRole",
        "ImageProcessingHistory",
        "SequenceDescriptionAdditional",
        "Keep_image_geometry",
        "WindowCenter",
        "WindowWidth",
        "ImageRowDir",
        "ImageColumnDir",
    ):
        assert key in meta, key
    assert meta["DataRole"] == "Image" and meta["Keep_image_geometry"] == "1"
    row = [float(v) for v in meta["ImageRowDir"]]
    assert row == pytest.approx(list(raw_a3.acqs[-1].read_dir))
    assert params["method"].upper() in meta["ImageProcessingHistory"]


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("method", "grappa", "'method': 'grappa' is not one of"),
        ("strength", "strong", "'strength': 'strong' is not a valid double"),
        ("strength", 25, "is outside [0.1, 10.0]"),
        ("iterations", 2.5, "is not a valid int"),
        ("phase", "maybe", "'phase': 'maybe' is not a boolean"),
    ],
)
def test_bad_parameter_value_is_a_text_error_naming_it(
    server: MRDServer, raw_a3: RawCase, name: str, value, fragment: str
) -> None:
    client = FireClient.connect(server.port)
    client.send_config_file("openrecon")
    client.send_text(json.dumps({"parameters": {name: value}}))
    client.send_metadata(raw_a3.header_xml)
    client.send_close()
    result = client.wait()
    assert result.closed and result.unknown == []
    assert len(result.errors) == 1 and fragment in result.errors[0], result.texts
    assert f"OpenRecon parameter {name!r}" in result.errors[0]


def test_config_parameter_names_the_config(server: MRDServer, raw_a3: RawCase) -> None:
    """``config`` among the parameters selects the server config (as FIRE servers do)."""
    client = FireClient.connect(server.port)
    client.send_config_file("openrecon")
    client.send_text(json.dumps({"parameters": {"config": "other"}}))
    client.send_metadata(raw_a3.header_xml)
    client.send_close()
    result = client.wait()
    assert result.closed and len(result.errors) == 1
    assert "unknown config 'other'" in result.errors[0], result.texts


def test_build_script_labels_the_image(tmp_path: Path) -> None:
    """``docker/openrecon/build_openrecon.py --dry-run``: validates the label, then prints the
    docker commands; the image label is the base64 of the label JSON under OpenRecon's key."""
    out = subprocess.run(
        [sys.executable, str(OPENRECON / "build_openrecon.py"), "--dry-run", "--json"],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    build = plan["build"]
    assert build[:2] == ["docker", "build"]
    assert build[build.index("-f") + 1].endswith("docker/Dockerfile.server")
    labels = [build[i + 1] for i, a in enumerate(build) if a == "--label"]
    key, _, value = next(lab for lab in labels if lab.startswith(LABEL_KEY)).partition("=")
    assert key == LABEL_KEY
    assert json.loads(base64.b64decode(value)) == label()
    assert build[-1] == str(ROOT)
    assert plan["tag"] == "openrecon_mrprior_mrprior:v0.1.0"
    assert plan["save"][:3] == ["docker", "save", "-o"]
