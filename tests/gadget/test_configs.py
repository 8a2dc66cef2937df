"""The Gadgetron chains in configs/: structure, and that each node's configuration resolves."""

from __future__ import annotations

import importlib
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mrprior.server import parse_config_text, resolve_recon_config
from tests.gadget.harness import GADGETS, REPO

CHAINS = sorted((REPO / "configs").glob("mrprior*.xml"))


def _externals(root: ET.Element) -> list[ET.Element]:
    return list(root.iter("external"))


def test_chains_exist() -> None:
    names = {p.name for p in CHAINS}
    assert {"mrprior_recon.xml", "mrprior_connect.xml", "mrprior_distributed.xml"} <= names
    assert any(p.name == "mrprior_prior_recon.xml" for p in CHAINS)


@pytest.mark.parametrize("path", CHAINS, ids=[p.name for p in CHAINS])
def test_chain(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag == "configuration" and root.findtext("version") == "2"
    externals = _externals(root)
    assert externals, "no <external> node"
    for ext in externals:
        execute, connect = ext.find("execute"), ext.find("connect")
        assert (execute is None) != (connect is None)
        if execute is not None:
            assert execute.get("type") == "python"
            sys.path.insert(0, str(GADGETS))
            try:
                module = importlib.import_module(execute.get("name"))
            finally:
                sys.path.remove(str(GADGETS))
            assert callable(getattr(module, execute.get("target")))
        else:
            assert 0 < int(connect.get("port")) < 65536
        # what Gadgetron sends the node: the <configuration> element, serialized
        conf = ext.find("configuration")
        text = '<?xml version="1.0"?>\n' + (
            ET.tostring(conf, encoding="unicode") if conf is not None else ""
        )
        name, props = parse_config_text(text)
        yaml_path = props.pop("yaml", None)
        resolve_recon_config(name, props, yaml_path)  # ConfigError if anything is invalid


def test_distributed_chain_spreads_slices_and_prewhitens_once() -> None:
    root = ET.parse(REPO / "configs" / "mrprior_distributed.xml").getroot()
    dist = root.find("stream/distributed")
    assert dist is not None
    distributor = dist.find("distributor")
    assert distributor.findtext("classname") == "AcquisitionDistributor"
    prop = {p.get("name"): p.get("value") for p in distributor.iter("property")}
    assert prop["parallel_dimension"] in ("slice", "repetition")
    worker = dist.find("stream/external/configuration")
    _, props = parse_config_text(ET.tostring(worker, encoding="unicode"))
    assert props["prewhiten"] == "false"
    first = root.find("stream")[0]
    assert first.findtext("classname") == "NoiseAdjustGadget"
    assert resolve_recon_config("mrprior_sense", props).prewhiten is False
