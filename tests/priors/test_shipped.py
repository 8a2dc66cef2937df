"""The shipped priors (mrprior/priors/weights): load by name, cards complete, data policy kept."""

from __future__ import annotations

import pytest
import torch

from mrprior.priors import load
from mrprior.priors.base import ScorePrior
from mrprior.priors.cards import WEIGHTS_DIR

NAMES = [n for n in ("complex", "magnitude") if (WEIGHTS_DIR / f"{n}.yaml").exists()]
pytestmark = pytest.mark.skipif(not NAMES, reason="no shipped priors exported yet")


@pytest.mark.parametrize("name", NAMES)
def test_shipped_prior_loads_and_card_is_complete(name: str) -> None:
    prior = load(name)
    assert isinstance(prior, ScorePrior)
    assert prior.channels == (2 if name == "complex" else 1)
    card = prior.card
    assert (WEIGHTS_DIR / card["weights"]["file"]).stat().st_size <= 20 * 2**20
    assert card["training"]["command"] and card["code_version"] and card["training"]["steps"] > 0
    data = card["data"]
    assert all(s["licence"] for s in data["sources"])
    assert not any("dipy" in s["path"] for s in data["sources"])
    assert not any("insighttoolkit" in s["path"] for s in data["sources"])
    # MNI152 is the held-out anatomy of the benchmarks: validation only, never trained on
    assert not any("mni" in s.lower() for s in data["train_subjects"])
    x = torch.polar(torch.rand(1, 37, 45), torch.rand(1, 37, 45))
    d = prior.denoise(x, 0.1)
    assert d.shape == x.shape and torch.isfinite(torch.view_as_real(d)).all()
