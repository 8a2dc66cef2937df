"""Prior cards: safetensors weights + a YAML card; export from checkpoints, safe loading.

A prior is two files in one directory, ``NAME.safetensors`` (the EMA weights, float32) and
``NAME.yaml`` (the card). Loading never unpickles anything: the card is parsed with
``yaml.safe_load`` and the weights with safetensors, after their sha256 has been checked against
the card. Every failure raises :class:`~mrprior.errors.CheckpointError` naming the file and the
problem (missing file, sha256 mismatch, corrupt or truncated weights, tensor names/shapes that
do not match the card or the architecture, unknown card keys).
"""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from mrprior.config import from_dict, to_dict
from mrprior.errors import CheckpointError, ConfigError
from mrprior.priors.network import NetworkPrior
from mrprior.priors.sources import sha256_file
from mrprior.priors.unet import EDMDenoiser, UNetConfig

logger = logging.getLogger(__name__)

CARD_FORMAT = "mrprior-prior-card/1"
#: the shipped priors live here (``mrprior.priors.load("complex")``)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED = ("complex", "magnitude")

#: every key a card may have (others are refused)
CARD_KEYS = {
    "format",
    "name",
    "kind",
    "channels",
    "architecture",
    "sigma_min",
    "sigma_max",
    "size_multiple",
    "training_image_size",
    "dataset_image_size",
    "weights",
    "tensors",
    "data",
    "training",
    "code_version",
    "created",
    "description",
}
WEIGHT_KEYS = {"file", "sha256", "bytes", "dtype", "parameters", "ema"}


def export_prior(
    checkpoint: str | Path,
    out_dir: str | Path,
    name: str | None = None,
    *,
    use_ema: bool = True,
    description: str | None = None,
    validate: bool = True,
) -> Path:
    """Write ``NAME.safetensors`` + ``NAME.yaml`` from a training checkpoint; return the card path.

    Works on any checkpoint written by :func:`mrprior.priors.training.train` (``last.pt`` or its
    run directory), including one of a run that is still going. With ``validate`` (default) the
    validation loss of the exported weights is computed afresh on the run's validation split
    (same fixed slices, σ set and seeds as during training) when the dataset is present.
    """
    from safetensors.torch import save_file

    from mrprior.priors.prepare import code_version
    from mrprior.priors.training import config_from_checkpoint, load_checkpoint

    ck = load_checkpoint(checkpoint)
    cfg = config_from_checkpoint(ck)
    name = name or cfg.name
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"bad prior name {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = ck["ema" if use_ema else "model"]
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    wpath = out / f"{name}.safetensors"
    tmp = wpath.with_name(wpath.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": CARD_FORMAT, "name": name})
    os.chmod(tmp, 0o644)
    os.replace(tmp, wpath)
    val_loss = _float_or_none(ck.get("val_loss"))
    val_step = ck.get("val_step")
    if validate:
        fresh = _fresh_validation(cfg, state)
        if fresh is not None:
            val_loss, val_step = fresh, int(ck["step"])
    import json

    try:
        data = json.loads(ck.get("dataset_manifest", "{}"))
    except ValueError:
        data = {}
    parent = json.loads(ck["parent"]) if ck.get("parent") else None
    run_steps, run_images = int(ck["step"]), int(ck.get("images_seen", 0))
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "name": name,
        "description": description
        or (
            f"{'complex (real, imag)' if cfg.model.in_channels == 2 else 'magnitude'} score prior: "
            "EDM-preconditioned U-Net denoiser D(x, σ); score = (D − x)/σ²; images scaled to "
            "max|x| = 1; σ is the noise std per real component"
        ),
        "kind": "complex" if cfg.model.in_channels == 2 else "magnitude",
        "channels": cfg.model.in_channels,
        "architecture": {"type": "edm-unet", **to_dict(cfg.model)},
        "sigma_min": cfg.sigma_min,
        "sigma_max": cfg.sigma_max,
        "size_multiple": cfg.model.size_multiple,
        "training_image_size": cfg.augment.crop,
        "dataset_image_size": _dataset_size(cfg.dataset),
        "weights": {
            "file": wpath.name,
            "sha256": sha256_file(wpath),
            "bytes": wpath.stat().st_size,
            "dtype": "float32",
            "parameters": int(sum(t.numel() for t in tensors.values())),
            "ema": bool(use_ema),
        },
        "data": data,
        "training": {
            "command": ck.get("command"),
            "command_history": list(ck.get("command_history") or [ck.get("command")]),
            "config": to_dict(cfg),
            # cumulative over the lineage (warm starts); run_*: this run alone
            "steps": run_steps + (int(parent["steps"]) if parent else 0),
            "images_seen": run_images + (int(parent["images_seen"]) if parent else 0),
            "run_steps": run_steps,
            "run_images_seen": run_images,
            "parent": ({k: v for k, v in parent.items() if k != "lineage"} if parent else None),
            "lineage": list(parent["lineage"]) if parent else [],
            "validation_loss": val_loss,
            "validation_loss_at_step": None if val_step is None else int(val_step),
            "best_validation_loss": _float_or_none(ck.get("best_val")),
            "world_size": int(ck.get("world_size", 1)),
            "code_version": ck.get("code_version"),
            "checkpoint_saved_at": _iso(ck.get("saved_at")),
        },
        "code_version": code_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        # tensor name → shape ("8x2x3x3"), checked on load
        "tensors": {k: _shape_str(v.shape) for k, v in sorted(tensors.items())},
    }
    cpath = out / f"{name}.yaml"
    tmpc = cpath.with_name(cpath.name + ".tmp")
    tmpc.write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True))
    os.replace(tmpc, cpath)
    logger.info(
        "exported %s (%d steps, %d in total) → %s",
        name,
        card["training"]["run_steps"],
        card["training"]["steps"],
        cpath,
    )
    return cpath


def _fresh_validation(cfg: Any, state: dict[str, torch.Tensor]) -> float | None:
    """Validation loss of ``state`` on ``cfg.dataset``'s val split (None without one)."""
    from mrprior.priors.dataset import SliceStore
    from mrprior.priors.training import validation_loss

    try:
        val = SliceStore(cfg.dataset, "val")
    except Exception as exc:  # dataset moved or absent: keep the checkpoint's value
        logger.warning("no fresh validation loss (%s)", exc)
        return None
    if len(val) == 0:
        return None
    model = EDMDenoiser(cfg.model)
    model.load_state_dict(state)
    return _float_or_none(validation_loss(model, val, cfg, torch.device("cpu")))


def _shape_str(shape: Any) -> str:
    return "x".join(str(int(d)) for d in shape) or "scalar"


def _float_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and abs(f) != float("inf") else None


def _iso(t: Any) -> str | None:
    try:
        return datetime.fromtimestamp(float(t), UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OSError):
        return None


def _dataset_size(dataset: str) -> int | None:
    from mrprior.priors.prepare import read_manifest

    try:
        return read_manifest(dataset).get("size")
    except Exception:
        return None


def resolve_card(name_or_path: str | Path) -> Path:
    """Card path of a shipped prior name, a card, a weights file, or a directory with one card."""
    s = str(name_or_path)
    if s in SHIPPED and not Path(s).exists():
        p = WEIGHTS_DIR / f"{s}.yaml"
        if not p.exists():
            raise CheckpointError(
                f"the shipped prior {s!r} is not installed ({p} missing); export one with "
                "`mrprior prior export CHECKPOINT -o mrprior/priors/weights --name " + s + "`"
            )
        return p
    p = Path(s)
    if p.is_dir():
        cards = sorted(p.glob("*.yaml"))
        if len(cards) != 1:
            raise CheckpointError(f"{p}: expected exactly one *.yaml card, found {len(cards)}")
        return cards[0]
    if p.suffix == ".safetensors":
        p = p.with_suffix(".yaml")
    if not p.exists():
        raise CheckpointError(
            f"prior {s!r} not found: not a shipped name {list(SHIPPED)} nor an existing card"
        )
    return p


def read_card(path: str | Path) -> dict[str, Any]:
    """Parse and check a card (``yaml.safe_load``; unknown keys are refused)."""
    p = Path(path)
    try:
        card = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise CheckpointError(f"cannot read prior card {p}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise CheckpointError(f"prior card {p} is not valid YAML: {exc}") from exc
    if not isinstance(card, dict):
        raise CheckpointError(f"prior card {p} is not a mapping")
    unknown = sorted(set(card) - CARD_KEYS)
    if unknown:
        raise CheckpointError(f"prior card {p}: unknown key(s) {unknown}")
    if card.get("format") != CARD_FORMAT:
        raise CheckpointError(
            f"prior card {p}: format {card.get('format')!r} is not {CARD_FORMAT!r}"
        )
    for key in ("name", "channels", "architecture", "sigma_min", "sigma_max", "weights", "tensors"):
        if key not in card:
            raise CheckpointError(f"prior card {p} lacks {key!r}")
    w = card["weights"]
    if not isinstance(w, dict) or set(w) - WEIGHT_KEYS or not {"file", "sha256"} <= set(w):
        raise CheckpointError(f"prior card {p}: bad 'weights' entry {w!r}")
    return card


def load(name_or_path: str | Path, device: str | torch.device | None = "cpu") -> NetworkPrior:
    """Load a prior: a shipped name (``"complex"``, ``"magnitude"``) or a card/weights path.

    Checks, in order: the card (keys, format), the weights file's existence and sha256 against
    the card, safetensors integrity, tensor names and shapes against the card and against the
    architecture. Never unpickles. ``device``: ``"cpu"``, ``"cuda"``, ``"auto"`` or ``None``
    (= ``"auto"``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    from mrprior.backend import resolve_device

    cpath = resolve_card(name_or_path)
    card = read_card(cpath)
    wpath = cpath.parent / str(card["weights"]["file"])
    if Path(card["weights"]["file"]).name != str(card["weights"]["file"]):
        raise CheckpointError(f"prior card {cpath}: weights file must be a bare file name")
    if not wpath.exists():
        raise CheckpointError(f"weights file {wpath} (named in {cpath}) does not exist")
    blob = wpath.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != card["weights"]["sha256"]:
        raise CheckpointError(
            f"weights file {wpath}: sha256 {digest} does not match the card's "
            f"{card['weights']['sha256']} — the file was modified, truncated or replaced"
        )
    try:
        tensors = st_load(blob)
    except (SafetensorError, Exception) as exc:
        raise CheckpointError(f"weights file {wpath} is corrupt or not safetensors: {exc}") from exc
    try:
        expected = {str(k): str(v) for k, v in dict(card["tensors"]).items()}
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"prior card {cpath}: bad 'tensors' entry") from exc
    got = {k: _shape_str(v.shape) for k, v in tensors.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        bad = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise CheckpointError(
            f"weights {wpath} do not match card {cpath}: missing {missing[:5]}, "
            f"unexpected {extra[:5]}, shape mismatch {bad[:5]}"
        )
    arch = {k: v for k, v in dict(card["architecture"]).items() if k != "type"}
    try:
        ucfg = from_dict(UNetConfig, arch)
    except ConfigError as exc:
        raise CheckpointError(f"prior card {cpath}: bad architecture: {exc}") from exc
    if ucfg.in_channels != int(card["channels"]):
        raise CheckpointError(f"prior card {cpath}: channels disagree with the architecture")
    model = EDMDenoiser(ucfg)
    ref = {k: _shape_str(v.shape) for k, v in model.state_dict().items()}
    if ref != got:
        raise CheckpointError(
            f"weights {wpath} do not fit the architecture in {cpath}: "
            f"missing {sorted(set(ref) - set(got))[:5]}, unexpected {sorted(set(got) - set(ref))[:5]}"
        )
    model.load_state_dict(tensors)
    prior = NetworkPrior(model, float(card["sigma_min"]), float(card["sigma_max"]), card=card)
    return prior.to(resolve_device(device))


def prior_from_checkpoint(
    checkpoint: str | Path, device: str | torch.device | None = "cpu", *, use_ema: bool = True
) -> NetworkPrior:
    """A :class:`NetworkPrior` straight from a training checkpoint (our own ``last.pt``).

    For monitoring a run before export; checkpoints are read with ``weights_only=True``.
    Shipped priors are loaded with :func:`load` (safetensors + card) instead.
    """
    from mrprior.backend import resolve_device
    from mrprior.priors.training import config_from_checkpoint, load_checkpoint

    ck = load_checkpoint(checkpoint)
    cfg = config_from_checkpoint(ck)
    model = EDMDenoiser(cfg.model)
    model.load_state_dict(ck["ema" if use_ema else "model"])
    card = {
        "name": f"{cfg.name}@{int(ck['step'])}",
        "training": {"steps": int(ck["step"]), "images_seen": int(ck.get("images_seen", 0))},
    }
    prior = NetworkPrior(model, cfg.sigma_min, cfg.sigma_max, card=card)
    return prior.to(resolve_device(device))
