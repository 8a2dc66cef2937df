"""Prior cards: export → load round trip; tampered, corrupt, mismatched files are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mrprior.errors import CheckpointError
from mrprior.priors import load
from mrprior.priors.base import ScorePrior
from mrprior.priors.cards import export_prior, read_card, sha256_file
from mrprior.priors.training import train

from .conftest import tiny_config


@pytest.fixture(scope="module")
def exported(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cards")
    train(tiny_config(tiny_dataset, root / "run", max_steps=30, val_every=30))
    return export_prior(root / "run", root / "w", name="tiny")


def fresh(exported: Path, tmp_path: Path) -> Path:
    """A private copy of the exported prior to damage."""
    dst = tmp_path / "w"
    shutil.copytree(exported.parent, dst)
    return dst / exported.name


def test_round_trip(exported: Path, tiny_dataset: Path) -> None:
    card = read_card(exported)
    assert card["name"] == "tiny" and card["kind"] == "complex" and card["channels"] == 2
    assert card["weights"]["sha256"] == sha256_file(exported.with_suffix(".safetensors"))
    assert card["training"]["steps"] == 30 and card["training"]["images_seen"] == 120
    assert card["training"]["validation_loss"] is not None
    assert card["data"]["sources"][0]["licence"] == "test"
    assert card["architecture"]["channels"] == [8, 16] and card["training_image_size"] == 16
    assert card["weights"]["ema"] is True
    prior = load(str(exported))
    assert isinstance(prior, ScorePrior) and prior.name == "tiny"
    assert (prior.sigma_min, prior.sigma_max) == (0.003, 1.2)
    # loads by weights path and by directory, too
    assert load(str(exported.with_suffix(".safetensors"))).name == "tiny"
    assert load(str(exported.parent)).name == "tiny"


def test_trained_prior_denoises_better_than_identity(exported: Path, tiny_dataset: Path) -> None:
    import numpy as np

    from mrprior.priors.dataset import AugmentConfig, SliceStore, augment

    prior = load(str(exported))
    store = SliceStore(tiny_dataset, "val")
    rng = np.random.default_rng(0)
    x = augment(store.image(len(store) // 2), rng, AugmentConfig(crop=0, flips=False), 2)
    clean = torch.complex(torch.from_numpy(x[0]), torch.from_numpy(x[1]))[None]
    gen = torch.Generator().manual_seed(0)
    sigma = 0.5
    noise = torch.complex(
        torch.randn(clean.shape, generator=gen), torch.randn(clean.shape, generator=gen)
    )
    noisy = clean + sigma * noise
    err_den = (prior.denoise(noisy, sigma) - clean).abs().square().mean()
    err_id = (noisy - clean).abs().square().mean()
    # the untrained network is D = c_skip·x (zero-initialized output layer)
    from mrprior.priors.network import NetworkPrior
    from mrprior.priors.unet import UNetConfig

    arch = {k: v for k, v in prior.card["architecture"].items() if k != "type"}
    untrained = NetworkPrior.from_config(UNetConfig(**arch), 0.003, 1.2)
    err_untrained = (untrained.denoise(noisy, sigma) - clean).abs().square().mean()
    assert err_den < 0.5 * err_id
    assert err_den < 0.9 * err_untrained


def test_tampered_weights_refused(exported: Path, tmp_path: Path) -> None:
    card = fresh(exported, tmp_path)
    w = card.with_suffix(".safetensors")
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside a tensor: still valid safetensors, wrong hash
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load(str(card))


def test_truncated_weights_refused(exported: Path, tmp_path: Path) -> None:
    card = fresh(exported, tmp_path)
    w = card.with_suffix(".safetensors")
    w.write_bytes(w.read_bytes()[:1000])
    # a truncated file whose hash was (maliciously or carelessly) updated in the card
    c = yaml.safe_load(card.read_text())
    c["weights"]["sha256"] = sha256_file(w)
    card.write_text(yaml.safe_dump(c))
    with pytest.raises(CheckpointError, match="corrupt"):
        load(str(card))


def test_shape_mismatch_refused(exported: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    card = fresh(exported, tmp_path)
    w = card.with_suffix(".safetensors")
    tensors = load_file(str(w))
    name = next(k for k in tensors if k.endswith("conv_in.weight"))
    tensors[name] = torch.zeros(3, 2, 3, 3)
    save_file(tensors, str(w))
    c = yaml.safe_load(card.read_text())
    c["weights"]["sha256"] = sha256_file(w)
    card.write_text(yaml.safe_dump(c))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load(str(card))


def test_card_problems_refused(exported: Path, tmp_path: Path) -> None:
    card = fresh(exported, tmp_path)
    c = yaml.safe_load(card.read_text())
    c["execute"] = "rm -rf /"
    card.write_text(yaml.safe_dump(c))
    with pytest.raises(CheckpointError, match="unknown key"):
        load(str(card))
    del c["execute"]
    card.write_text(yaml.safe_dump(c))
    card.with_suffix(".safetensors").unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        load(str(card))
    with pytest.raises(CheckpointError, match="not found"):
        load(str(tmp_path / "nope.yaml"))
    card.write_text("a: [unclosed")
    with pytest.raises(CheckpointError, match="YAML"):
        load(str(card))


def test_export_refuses_non_checkpoint(tmp_path: Path) -> None:
    torch.save({"foo": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not an mrprior training checkpoint"):
        export_prior(tmp_path / "x.pt", tmp_path / "o")
