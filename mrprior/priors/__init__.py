"""Image priors: score networks, training, datasets, prior cards, the ℓ1-wavelet prior.

``mrprior.priors.load("complex")`` returns the shipped complex prior as a
:class:`~mrprior.priors.network.NetworkPrior` (a :class:`~mrprior.priors.base.ScorePrior`).
Heavy modules are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mrprior.priors.network import NetworkPrior

__all__ = ["NetworkPrior", "load"]


def load(name_or_path: str, device: str | torch.device | None = "cpu") -> NetworkPrior:
    """Load a prior by shipped name (``"complex"``, ``"magnitude"``) or card/weights path.

    See :func:`mrprior.priors.cards.load`: safetensors only, sha256-checked, never unpickled.
    """
    from mrprior.priors.cards import load as _load

    return _load(name_or_path, device=device)


def __getattr__(name: str) -> Any:
    if name == "NetworkPrior":
        from mrprior.priors.network import NetworkPrior

        return NetworkPrior
    raise AttributeError(name)
