"""Training: loss goes down, resume is bit-identical, checkpoints are atomic, DDP on gloo runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mrprior.config import to_dict
from mrprior.errors import CheckpointError, ConfigError
from mrprior.priors.dataset import SliceStore
from mrprior.priors.training import TrainConfig, load_checkpoint, train, validation_loss
from mrprior.priors.unet import EDMDenoiser

from .conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


def test_tiny_training_lowers_loss(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_dataset, tmp_path / "run", max_steps=40, val_every=0)
    val = SliceStore(tiny_dataset, "val")
    torch.manual_seed(cfg.seed)  # the initialization train() starts from
    before = validation_loss(EDMDenoiser(cfg.model), val, cfg, torch.device("cpu"))
    summary = train(cfg)
    ck = load_checkpoint(tmp_path / "run")
    model = EDMDenoiser(cfg.model)
    model.load_state_dict(ck["model"])
    after = validation_loss(model, val, cfg, torch.device("cpu"))
    assert summary["step"] == 40 and summary["images_seen"] == 160
    assert after < 0.8 * before, (before, after)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 8  # log_every 5


def test_resume_is_bit_identical(tiny_dataset: Path, tmp_path: Path) -> None:
    straight = tiny_config(tiny_dataset, tmp_path / "a", max_steps=6)
    train(straight)
    halves = tiny_config(tiny_dataset, tmp_path / "b", max_steps=6)
    train(halves, max_steps=3)
    assert load_checkpoint(tmp_path / "b")["step"] == 3
    with pytest.raises(CheckpointError, match="--resume"):
        train(halves)  # an existing run is never overwritten silently
    train(halves, resume=True)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a["step"] == b["step"] == 6 and a["images_seen"] == b["images_seen"]
    assert len(b["command_history"]) == 2 and b["command_history"][1].endswith("from step 3")
    for key in ("model", "ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for k in sa:
        assert torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"])


def test_checkpoint_every_steps_and_atomic(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        tiny_dataset, tmp_path / "r", max_steps=4, ckpt_every_steps=2, keep_every_steps=2
    )
    train(cfg)
    files = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert "last.pt" in files and "step_0000002.pt" in files and "step_0000004.pt" in files
    assert not [f for f in files if ".tmp" in f]
    ck = torch.load(tmp_path / "r" / "step_0000002.pt", weights_only=True)
    assert ck["step"] == 2
    with pytest.raises(CheckpointError, match="corrupt"):
        (tmp_path / "bad.pt").write_bytes(b"garbage")
        load_checkpoint(tmp_path / "bad.pt")


def test_config_rejects_unknown_and_bad_values(tmp_path: Path) -> None:
    from mrprior.config import from_dict

    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(TrainConfig, {"lerning_rate": 1})
    with pytest.raises(ConfigError, match="sigma_min"):
        from_dict(TrainConfig, {"sigma_min": 2.0, "sigma_max": 1.0})
    with pytest.raises(ConfigError, match="in_channels"):
        from_dict(TrainConfig, {"model": {"in_channels": 3}})
    for name in ("train_complex.yaml", "train_magnitude.yaml"):
        from mrprior.config import load_yaml

        cfg = load_yaml(TrainConfig, REPO / "configs" / name)
        assert cfg.ckpt_every_minutes <= 5


def test_cli_train_and_export(tiny_dataset: Path, tmp_path: Path) -> None:
    from mrprior.cli import main

    cfg = tiny_config(tiny_dataset, tmp_path / "run", max_steps=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    rc = main(
        ["train", str(tmp_path / "c.yaml"), "--set", "max_steps=3", "--export", str(tmp_path / "w")]
    )
    assert rc == 0
    card = yaml.safe_load((tmp_path / "w" / "tiny.yaml").read_text())
    assert card["training"]["steps"] == 3 and "--set=max_steps=3" in card["training"]["command"]
    assert (
        main(["prior", "export", str(tmp_path / "run"), "-o", str(tmp_path / "w2"), "--name", "x"])
        == 0
    )
    assert (tmp_path / "w2" / "x.safetensors").exists()


@pytest.mark.slow
def test_ddp_two_gloo_processes(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_dataset, tmp_path / "ddp", max_steps=3, batch_size=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "mrprior",
        "train",
        str(tmp_path / "c.yaml"),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # one summary, rank 0's (the other rank never validates: its loss would be stale)
    assert res.stdout.count("validation loss") == 1, res.stdout
    ck = load_checkpoint(tmp_path / "ddp")
    assert ck["world_size"] == 2 and ck["step"] == 3
    assert ck["images_seen"] == 3 * 2 * 2  # steps × ranks × per-rank batch
    # DDP keeps the replicas identical: parameters moved from their initialization
    torch.manual_seed(cfg.seed)
    init = EDMDenoiser(cfg.model).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in ck["model"].items())


def test_sigterm_writes_checkpoint_and_exits(tiny_dataset: Path, tmp_path: Path) -> None:
    import signal
    import time

    cfg = tiny_config(tiny_dataset, tmp_path / "sig", max_steps=100000, log_every=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mrprior", "train", str(tmp_path / "c.yaml")],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "sig" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    ck = load_checkpoint(tmp_path / "sig")
    assert ck["step"] >= 3 and "stopped by signal" in err
