"""Cumulative training: warm start from a prior card, lineage and cumulative counts in the card."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from mrprior.config import to_dict
from mrprior.errors import ConfigError
from mrprior.priors import load
from mrprior.priors.cards import export_prior
from mrprior.priors.training import load_checkpoint, train
from mrprior.priors.unet import UNetConfig

from .conftest import tiny_config


def test_warm_start_lineage_and_steps(tiny_dataset: Path, tmp_path: Path) -> None:
    first = tiny_config(tiny_dataset, tmp_path / "g1", max_steps=3, val_every=0)
    train(first)
    card1 = export_prior(tmp_path / "g1", tmp_path / "cards1", validate=False)
    c1 = yaml.safe_load(card1.read_text())
    assert c1["training"]["steps"] == 3 and c1["training"]["lineage"] == []

    # generation 2 starts from the card: same weights at step 0, counts continue
    second = tiny_config(
        tiny_dataset, tmp_path / "g2", max_steps=2, val_every=0, init_from=str(card1)
    )
    train(second, max_steps=0)
    ck0 = load_checkpoint(tmp_path / "g2")
    parent = load(card1).model.state_dict()
    for k, v in parent.items():
        assert torch.equal(ck0["model"][k], v) and torch.equal(ck0["ema"][k], v), k
    summary = train(second, resume=True)
    assert summary["step"] == 2 and summary["total_steps"] == 5
    assert summary["total_images_seen"] == 5 * first.batch_size
    card2 = export_prior(tmp_path / "g2", tmp_path / "cards2", validate=False)
    t2 = yaml.safe_load(card2.read_text())["training"]
    assert t2["steps"] == 5 and t2["run_steps"] == 2
    assert t2["images_seen"] == 5 * first.batch_size
    assert t2["parent"]["sha256"] == c1["weights"]["sha256"]
    assert [e["sha256"] for e in t2["lineage"]] == [c1["weights"]["sha256"]]

    # generation 3: the lineage grows, oldest first
    third = tiny_config(
        tiny_dataset, tmp_path / "g3", max_steps=1, val_every=0, init_from=str(card2)
    )
    train(third)
    t3 = yaml.safe_load(
        export_prior(tmp_path / "g3", tmp_path / "cards3", validate=False).read_text()
    )["training"]
    assert t3["steps"] == 6
    assert [e["steps"] for e in t3["lineage"]] == [3, 5]
    assert t3["lineage"][1]["sha256"] == yaml.safe_load(card2.read_text())["weights"]["sha256"]


def test_warm_start_refuses_other_architecture(tiny_dataset: Path, tmp_path: Path) -> None:
    train(tiny_config(tiny_dataset, tmp_path / "a", max_steps=1, val_every=0))
    card = export_prior(tmp_path / "a", tmp_path / "c", validate=False)
    cfg = tiny_config(tiny_dataset, tmp_path / "b", max_steps=1, init_from=str(card))
    cfg.model = UNetConfig(**{**to_dict(cfg.model), "channels": [8, 24]})
    with pytest.raises(ConfigError, match=r"differs in \['channels'\]"):
        train(cfg)


def test_warm_start_resume_bit_identical(tiny_dataset: Path, tmp_path: Path) -> None:
    train(tiny_config(tiny_dataset, tmp_path / "p", max_steps=2, val_every=0))
    card = str(export_prior(tmp_path / "p", tmp_path / "c", validate=False))
    a = tiny_config(tiny_dataset, tmp_path / "a", max_steps=4, val_every=0, init_from=card)
    b = tiny_config(tiny_dataset, tmp_path / "b", max_steps=4, val_every=0, init_from=card)
    a.augment.few_subjects.enabled = b.augment.few_subjects.enabled = True
    train(a)
    train(b, max_steps=2)
    train(b, resume=True)
    ca, cb = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert ca["parent"] == cb["parent"] and ca["step"] == cb["step"] == 4
    for name, t in ca["ema"].items():
        assert torch.equal(t, cb["ema"][name]), name
