"""Denoising score matching for :class:`~mrprior.priors.unet.EDMDenoiser` priors.

Objective (Vincent 2011; EDM weighting, Karras et al. 2022), with σ log-uniform on
``[σ_min, σ_max]`` (the variance-exploding family) and ``n ~ N(0, I)`` on every real channel:

.. math::

    \\mathcal L(θ) = \\mathbb E_{x, σ, n}\\; λ(σ)\\, \\lVert D_θ(x + σ n, σ) − x \\rVert^2,
    \\qquad λ(σ) = (σ² + σ_d²) / (σ σ_d)².

The loop is resumable bit for bit: batches depend only on ``(seed, step)`` (see
:class:`~mrprior.priors.dataset.BatchStream`), the noise of step ``k`` comes from a generator
seeded by ``(seed, rank, k)``, and checkpoints hold model, EMA, optimizer, step and RNG states.
Checkpoints are written atomically (temporary file + rename) every ``ckpt_every_steps`` steps,
every ``ckpt_every_minutes`` minutes, at the end, and on SIGTERM/SIGINT.

Distributed: started by ``torchrun``, each rank trains on its share of one global permutation
per epoch; gradients are averaged by DistributedDataParallel (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import yaml

from mrprior.backend import resolve_device
from mrprior.config import from_dict, to_dict
from mrprior.errors import CheckpointError, ConfigError
from mrprior.priors.dataset import AugmentConfig, BatchStream, SliceStore, augment, sample_rng
from mrprior.priors.unet import EDMDenoiser, UNetConfig

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"


@dataclass
class TrainConfig:
    """One training job (``configs/train_*.yaml``); unknown keys are rejected."""

    #: prepared dataset directory (``mrprior prepare``)
    dataset: str = "runs/data/brain256"
    #: run directory: checkpoints, ``metrics.jsonl``, ``config.yaml``
    out_dir: str = "runs/train"
    #: name written into the prior card
    name: str = "complex"
    #: warm start: a prior card (shipped name such as ``complex``, or a card path) whose weights
    #: initialize the model and its EMA; the exported card then records the parent's sha256,
    #: cumulative steps / images seen and the lineage (optimizer and step count start afresh)
    init_from: str | None = None
    model: UNetConfig = field(default_factory=UNetConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: subject reweighting of the sampling (0: every slice equally often; 1: every subject
    #: equally often; see :class:`~mrprior.priors.dataset.BatchStream`)
    subject_balance: float = 0.0
    sigma_min: float = 0.003
    sigma_max: float = 1.2
    batch_size: int = 8
    lr: float = 5e-4
    #: linear learning-rate warm-up (steps)
    warmup_steps: int = 200
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    max_steps: int = 100000
    seed: int = 0
    device: str = "auto"
    #: torch intra-op threads (0: torch's default)
    threads: int = 0
    #: mixed precision for the training forward/backward: none | bf16 (autocast; weights, EMA,
    #: optimizer and validation stay float32). bf16 halves the step time on CPUs with AVX512-BF16
    #: and on recent GPUs.
    autocast: Literal["none", "bf16"] = "none"
    log_every: int = 50
    val_every: int = 500
    #: number of validation slices (fixed: evenly spaced over the split, seeded crops)
    val_images: int = 16
    val_sigmas: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 0.2, 0.5])
    ckpt_every_steps: int = 1000
    ckpt_every_minutes: float = 5.0
    #: also keep ``step_XXXXXXX.pt`` copies every this many steps (0: only ``last.pt``)
    keep_every_steps: int = 0
    progress: bool = True

    def validate(self) -> None:
        ch = self.model.in_channels
        if ch not in (1, 2):
            raise ConfigError(f"model.in_channels: {ch} must be 1 (magnitude) or 2 (complex)")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(
                f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )
        if self.batch_size < 1 or self.max_steps < 0 or self.lr <= 0:
            raise ConfigError("batch_size ≥ 1, max_steps ≥ 0 and lr > 0 are required")
        if self.subject_balance < 0:
            raise ConfigError(f"subject_balance: {self.subject_balance} must be ≥ 0")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay: {self.ema_decay} must be in [0, 1)")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"device: {self.device!r} must be auto, cpu or cuda[:N]")
        if len(self.adam_betas) != 2:
            raise ConfigError(f"adam_betas: {self.adam_betas} must have two entries")


# ----------------------------------------------------------------------------------- helpers


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM loss weight λ(σ) = (σ² + σ_d²)/(σ σ_d)² (unit effective loss at every σ)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def dsm_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    sigma_data: float,
) -> torch.Tensor:
    """Weighted denoising loss ``mean_b λ(σ_b) · mean_pixels (D(x+σn) − x)²``."""
    d = model(x + sigma[:, None, None, None] * noise, sigma)
    per = (d - x).square().mean(dim=(1, 2, 3))
    return (edm_weight(sigma, sigma_data) * per).mean()


def sample_sigma(n: int, sigma_min: float, sigma_max: float, gen: torch.Generator) -> torch.Tensor:
    """σ log-uniform on ``[sigma_min, sigma_max]``."""
    u = torch.rand(n, generator=gen)
    return torch.exp(math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min)))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` via a temporary file and an atomic rename."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a training checkpoint without unpickling arbitrary objects (``weights_only=True``)."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        ck = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {p} is unreadable or corrupt: {exc}") from exc
    for key in ("model", "ema", "step", "config"):
        if key not in ck:
            raise CheckpointError(
                f"checkpoint {p} lacks {key!r}: not an mrprior training checkpoint"
            )
    return ck


def config_from_checkpoint(ck: dict) -> TrainConfig:
    """The :class:`TrainConfig` stored (as JSON text) in a checkpoint."""
    return from_dict(TrainConfig, json.loads(ck["config"]))


def warm_start(init_from: str, model_cfg: UNetConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """Weights and parent record of the prior card ``init_from`` (loaded safely, sha256-checked).

    Returns
    -------
    state, parent
        the card's weights (a state dict for :class:`EDMDenoiser`) and ``{"name", "card",
        "sha256", "steps", "images_seen", "lineage", ...}``: ``steps`` / ``images_seen`` are the
        parent's cumulative totals and ``lineage`` lists its ancestors, oldest first, then itself.

    Raises
    ------
    ConfigError
        the card's architecture differs from ``model_cfg`` (the keys are named).
    """
    from mrprior.priors.cards import load, resolve_card

    card_path = resolve_card(init_from)
    prior = load(card_path, device="cpu")
    card = prior.card
    arch = {k: v for k, v in dict(card["architecture"]).items() if k != "type"}
    want = to_dict(model_cfg)
    diff = sorted(k for k in set(arch) | set(want) if arch.get(k) != want.get(k))
    if diff:
        raise ConfigError(
            f"init_from {init_from!r}: the card's architecture differs in {diff} "
            f"(card {[arch.get(k) for k in diff]}, config {[want.get(k) for k in diff]})"
        )
    tr = dict(card.get("training") or {})
    data = dict(card.get("data") or {})
    entry = {
        "name": card.get("name"),
        "card": str(card_path),
        "sha256": card["weights"]["sha256"],
        "steps": int(tr.get("steps", 0)),
        "images_seen": int(tr.get("images_seen", 0)),
        "validation_loss": tr.get("validation_loss"),
        "train_subjects": data.get("train_subjects"),
        "code_version": card.get("code_version"),
        "created": card.get("created"),
    }
    parent = {**entry, "lineage": [*list(tr.get("lineage") or []), entry]}
    state = {k: v.detach().clone() for k, v in prior.model.state_dict().items()}
    return state, parent


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    val: SliceStore,
    cfg: TrainConfig,
    device: torch.device,
) -> float:
    """Mean EDM-weighted loss over fixed slices × ``cfg.val_sigmas`` × fixed noise seeds."""
    n = min(cfg.val_images, len(val))
    aug = copy.deepcopy(cfg.augment)
    aug.flips, aug.intensity_min = False, 1.0
    aug.few_subjects.enabled = False  # fixed crops: comparable across runs and augmentations
    losses = []
    was_training = model.training
    model.eval()
    # evenly spaced over the split (all orientations), fixed crops, fixed noise
    picks = np.linspace(0, len(val) - 1, n).round().astype(int) if n else []
    for i, j in enumerate(picks):
        rng = sample_rng(cfg.seed, 2, i)
        img = val.image(int(j))
        x = torch.from_numpy(augment(img, rng, aug, cfg.model.in_channels))[None].to(device)
        for k, s in enumerate(cfg.val_sigmas):
            gen = torch.Generator().manual_seed(int(cfg.seed) * 1000003 + i * 101 + k)
            noise = torch.randn(x.shape, generator=gen).to(device)
            sig = torch.full((1,), float(s), device=device)
            losses.append(float(dsm_loss(model, x, sig, noise, cfg.model.sigma_data)))
    model.train(was_training)
    return float(np.mean(losses)) if losses else float("nan")


# -------------------------------------------------------------------------------------- train


class _StopFlag:
    def __init__(self) -> None:
        self.stop = False
        self.signum = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.stop = True
        self.signum = signum


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    command: str | None = None,
    max_steps: int | None = None,
) -> dict:
    """Train (or continue training) a score prior; returns a summary dict.

    Parameters
    ----------
    cfg
        the job.
    resume
        continue from ``out_dir/last.pt`` (bit-identical to an uninterrupted run on the same
        device and thread count); without it an existing ``last.pt`` is an error.
    command
        the command line recorded in checkpoints and prior cards.
    max_steps
        stop at this step instead of ``cfg.max_steps`` (tests; the stream is unchanged).
    """
    rank, world, local_rank = dist_info()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    out = Path(cfg.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    stop_at = cfg.max_steps if max_steps is None else max_steps

    torch.manual_seed(cfg.seed)
    model = EDMDenoiser(cfg.model).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas))
    step = 0
    images_seen = 0
    best_val = math.inf
    last_val = math.nan
    val_step: int | None = None
    history: list[str] = []
    parent: dict | None = None
    if ckpt_path.exists() and not resume:
        raise CheckpointError(
            f"{ckpt_path} exists: pass --resume to continue it, or choose another out_dir"
        )
    if resume:
        if not ckpt_path.exists():
            raise CheckpointError(f"--resume: no checkpoint at {ckpt_path}")
        ck = load_checkpoint(ckpt_path, map_location=device)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
        images_seen = int(ck.get("images_seen", 0))
        best_val = float(ck.get("best_val", math.inf))
        last_val = float(ck.get("val_loss", math.nan))
        val_step = ck.get("val_step")
        history = list(ck.get("command_history") or [ck.get("command")])
        parent = json.loads(ck["parent"]) if ck.get("parent") else None
        torch.set_rng_state(ck["rng_torch"])
        logger.info("resumed %s at step %d", ckpt_path, step)
    elif cfg.init_from:
        state, parent = warm_start(cfg.init_from, cfg.model)
        model.load_state_dict(state)
        ema.load_state_dict(state)
        logger.info(
            "warm start from %s (sha256 %s…, %d steps, %d images seen)",
            parent["card"],
            parent["sha256"][:12],
            parent["steps"],
            parent["images_seen"],
        )

    check_held_out(cfg.dataset)
    train_store = SliceStore(cfg.dataset, "train")
    val_store = SliceStore(cfg.dataset, "val")
    if cfg.augment.phase == "stored" and train_store.kind != "complex":
        raise ConfigError("augment.phase: 'stored' needs a dataset of complex images")
    stream = BatchStream(
        train_store,
        cfg.augment,
        cfg.model.in_channels,
        cfg.batch_size,
        cfg.seed,
        rank,
        world,
        balance=cfg.subject_balance,
    )
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    cfg_json = json.dumps(to_dict(cfg))
    this_command = command or " ".join(sys.argv)
    from mrprior.priors.prepare import code_version

    version = code_version()

    def save(reason: str) -> None:
        if rank != 0:
            return
        state = {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "images_seen": images_seen,
            "val_loss": last_val,
            "val_step": val_step,
            "best_val": best_val,
            "rng_torch": torch.get_rng_state(),
            "config": cfg_json,
            "command": this_command,
            # every invocation that contributed to this checkpoint (first run, then resumes)
            "command_history": [*history, f"{this_command}  # from step {start_step}"],
            "world_size": world,
            "code_version": version,
            "dataset_manifest": json.dumps(_manifest_summary(cfg.dataset)),
            # warm start: the parent card (sha256, cumulative steps/images, lineage) as JSON
            "parent": json.dumps(parent) if parent else "",
            "saved_at": time.time(),
        }
        atomic_torch_save(state, ckpt_path)
        if cfg.keep_every_steps and step % cfg.keep_every_steps == 0:
            atomic_torch_save(state, out / f"step_{step:07d}.pt")
        logger.info("checkpoint (%s) at step %d → %s", reason, step, ckpt_path)

    if rank == 0:
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    flag = _StopFlag()
    old_handlers = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread
            old_handlers[sig] = signal.signal(sig, flag)
    metrics = (out / "metrics.jsonl").open("a") if rank == 0 else None
    from tqdm import tqdm

    bar = tqdm(
        total=stop_at,
        initial=step,
        desc=f"train {cfg.name}",
        unit="step",
        disable=not (cfg.progress and rank == 0),
        dynamic_ncols=True,
    )
    t_ckpt = time.monotonic()
    t_log = time.monotonic()
    imgs_log = 0
    running = []
    start_step = step
    try:
        net.train()
        while step < stop_at and not flag.stop:
            x = stream.batch(step).to(device)
            gen = torch.Generator().manual_seed(int(cfg.seed) * 7919 + rank * 104729 + step)
            sigma = sample_sigma(x.shape[0], cfg.sigma_min, cfg.sigma_max, gen).to(device)
            noise = torch.randn(x.shape, generator=gen).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16"):
                loss = dsm_loss(net, x, sigma, noise, cfg.model.sigma_data)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
            step += 1
            images_seen += x.shape[0] * world
            imgs_log += x.shape[0] * world
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - decay)
                for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
                    be.copy_(bm)
            running.append(float(loss.detach()))
            bar.update(1)
            if rank == 0 and step % cfg.log_every == 0:
                dt = time.monotonic() - t_log
                rec = {
                    "step": step,
                    "loss": float(np.mean(running)),
                    "lr": lr,
                    "images_per_s": imgs_log / max(dt, 1e-9),
                    "images_seen": images_seen,
                    "time": time.time(),
                }
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                bar.set_postfix(loss=f"{rec['loss']:.4f}", ips=f"{rec['images_per_s']:.1f}")
                running, imgs_log, t_log = [], 0, time.monotonic()
            if rank == 0 and cfg.val_every and step % cfg.val_every == 0 and len(val_store):
                last_val = validation_loss(ema, val_store, cfg, device)
                val_step = step
                best_val = min(best_val, last_val)
                metrics.write(
                    json.dumps({"step": step, "val_loss": last_val, "time": time.time()}) + "\n"
                )
                metrics.flush()
                logger.info("step %d: validation loss (EMA) %.5f", step, last_val)
            due_steps = cfg.ckpt_every_steps and step % cfg.ckpt_every_steps == 0
            due_time = (time.monotonic() - t_ckpt) >= 60 * cfg.ckpt_every_minutes
            if world > 1:
                # rank 0's clock and signal flag decide, so every rank agrees
                t = torch.tensor([float(due_time), float(flag.stop)], device=device)
                dist.broadcast(t, 0)
                due_time, flag.stop = bool(t[0].item()), bool(t[1].item())
            if due_steps or due_time:
                save("steps" if due_steps else "time")
                t_ckpt = time.monotonic()
        if step > start_step or not ckpt_path.exists():
            save("signal" if flag.stop else "end")
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        if world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    if flag.stop:
        logger.warning("stopped by signal %d at step %d (checkpoint written)", flag.signum, step)
    return {
        "step": step,
        "images_seen": images_seen,
        "total_steps": step + (parent["steps"] if parent else 0),
        "total_images_seen": images_seen + (parent["images_seen"] if parent else 0),
        "val_loss": last_val,
        "checkpoint": str(ckpt_path),
        "stopped_by_signal": flag.stop,
    }


def check_held_out(dataset: str | Path) -> None:
    """Refuse a dataset whose training split holds a registry source of role ``eval``.

    Evaluation sources (held-out scans, GPL-licensed data) may appear in a dataset only as
    validation subjects (monitoring), never as training subjects.
    """
    from mrprior.priors.prepare import read_manifest

    m = read_manifest(dataset)
    train_subjects = set(m.get("train_subjects") or [])
    bad = sorted(
        {
            f"{s['registry'].get('source')} (subject {s.get('subject')})"
            for s in m.get("sources", [])
            if isinstance(s.get("registry"), dict)
            and s["registry"].get("role") == "eval"
            and s.get("subject") in train_subjects
        }
    )
    if bad:
        raise ConfigError(
            f"dataset {dataset}: evaluation-only source(s) {bad} are in the training split; "
            "held-out data may only be validation subjects (prepare with val_subjects)"
        )


def _manifest_summary(dataset: str | Path) -> dict:
    from mrprior.priors.prepare import read_manifest

    m = read_manifest(dataset)
    return {
        "path": str(dataset),
        "counts": m.get("counts"),
        "val_subjects": m.get("val_subjects"),
        "train_subjects": m.get("train_subjects"),
        "sources": [
            {
                "path": s.get("path"),
                "licence": s.get("licence"),
                "subject": s.get("subject"),
                **({"registry": s["registry"]} if s.get("registry") else {}),
            }
            for s in m.get("sources", [])
        ],
        "code_version": m.get("code_version"),
        "command": m.get("command"),
    }
