"""Did the priors learn anatomy? One denoising step on held-out complex images, and training speed.

Case: held-out T1 slices — the MNI152 2009a template (the validation subject of the shipped
priors' dataset, never trained on; see ``configs/prepare.yaml``), sliced in all three
orientations at 256², evenly spaced over the split, each scaled to max 1. Each slice gets a
seeded synthetic phase (:func:`mrprior.mr.phase.synthetic_phase`, default parameters) and
seeded complex Gaussian noise of standard deviation σ on each real component (default 0.1).
Compared, each on the same noisy image ``y``:

* ``noisy``: ``y`` itself;
* ``complex prior``: one step ``D_c(y, σ)`` (= ``y + σ² s(y, σ)``, Tweedie);
* ``magnitude prior (phase-corrected)``: the default use of a magnitude prior on complex data
  (:class:`mrprior.priors.network.NetworkPrior`): ``D_m(Re(y e^{−iφ}), σ) e^{iφ}`` with ``φ`` a
  smooth phase estimate of ``y``;
* ``magnitude prior (keep phase)``: ``D_m(|y|, σ) · y/|y|`` (denoised magnitude, noisy phase kept).

Metrics: magnitude PSNR / SSIM from :mod:`mrprior.metrics` (least-squares scale fit, whole field
of view), and complex PSNR ``20 log10(max|x| / RMSE(x̂ − x))`` without any fit (phase errors
count). Speed: forward + backward + Adam step of each prior's architecture, batch 8 of 128²
crops, at ``torch.set_num_threads`` 1 and 2; wall and CPU time (CPU time does not depend on other
load on the machine).

Run::

    .venv/bin/python benchmarks/bench_prior_denoise.py
    .venv/bin/python benchmarks/bench_prior_denoise.py --complex runs/train_complex/last.pt \\
        --magnitude runs/train_magnitude/last.pt --slices 24 --sigma 0.1 0.05
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from _common import machine_info, markdown_table, timeit

from mrprior.metrics import psnr, ssim
from mrprior.mr.phase import synthetic_phase
from mrprior.priors.cards import load, prior_from_checkpoint
from mrprior.priors.dataset import SliceStore
from mrprior.priors.network import NetworkPrior
from mrprior.priors.prepare import read_manifest


def get_prior(spec: str) -> NetworkPrior:
    """A shipped name / card path, or a training checkpoint (``.pt`` or run directory)."""
    p = Path(spec)
    if p.suffix == ".pt" or (p.is_dir() and (p / "last.pt").exists()):
        return prior_from_checkpoint(p)
    return load(spec)


def held_out(dataset: Path, n: int) -> tuple[np.ndarray, list[str]]:
    """``n`` validation slices, evenly spaced over the split, float32 ``[n, S, S]``."""
    manifest = read_manifest(dataset)
    store = SliceStore(dataset, "val")
    idx = np.linspace(0, len(store) - 1, n).round().astype(int)
    return np.stack([store.image(int(i)) for i in idx]), list(manifest.get("val_subjects", []))


def complex_psnr(x: np.ndarray, ref: np.ndarray) -> float:
    rmse = float(np.sqrt(np.mean(np.abs(x - ref) ** 2)))
    return 20 * math.log10(float(np.abs(ref).max()) / rmse)


def denoise_table(args: argparse.Namespace) -> str:
    mags, subjects = held_out(Path(args.dataset), args.slices)
    mag_prior = get_prior(args.magnitude)
    priors = {
        "complex prior": get_prior(args.complex),
        "magnitude prior (phase-corrected)": mag_prior,
        "magnitude prior (keep phase)": NetworkPrior(
            mag_prior.model,
            mag_prior.sigma_min,
            mag_prior.sigma_max,
            card=mag_prior.card,
            magnitude_mode="keep-phase",
        ),
    }
    rows = []
    for sigma in args.sigma:
        scores: dict[str, list[tuple[float, float, float]]] = {
            "noisy": [],
            **{k: [] for k in priors},
        }
        for i, mag in enumerate(mags):
            rng = np.random.default_rng([args.seed, i])
            x = (mag * np.exp(1j * synthetic_phase(mag.shape, rng))).astype(np.complex64)
            noise = rng.standard_normal((2, *mag.shape)).astype(np.float32)
            y = x + sigma * (noise[0] + 1j * noise[1]).astype(np.complex64)
            outs = {"noisy": y}
            for name, prior in priors.items():
                with torch.no_grad():
                    outs[name] = prior.denoise(torch.from_numpy(y)[None], sigma)[0].numpy()
            for name, out in outs.items():
                scores[name].append((psnr(out, x), ssim(out, x), complex_psnr(out, x)))
        for name, vals in scores.items():
            a = np.asarray(vals)
            rows.append(
                [
                    f"{sigma:g}",
                    name,
                    f"{a[:, 0].mean():.2f} ± {a[:, 0].std():.2f}",
                    f"{a[:, 1].mean():.4f}",
                    f"{a[:, 2].mean():.2f} ± {a[:, 2].std():.2f}",
                ]
            )
    info = []
    for name, p in priors.items():
        tr = p.card.get("training", {})
        info.append(
            f"{name}: {p.name}, {tr.get('steps', '?')} steps, "
            f"{tr.get('images_seen', '?')} images seen, σ ∈ [{p.sigma_min}, {p.sigma_max}]"
        )
    head = (
        f"held-out slices: {len(mags)} of validation subject(s) {subjects} from {args.dataset}, "
        f"256², synthetic phase + complex noise (seed {args.seed})\n" + "\n".join(info) + "\n\n"
    )
    table = markdown_table(["σ", "method", "PSNR |x| [dB]", "SSIM |x|", "PSNR complex [dB]"], rows)
    return head + table


def speed_table(args: argparse.Namespace) -> str:
    rows = []
    for label, spec in (("complex", args.complex), ("magnitude", args.magnitude)):
        prior = get_prior(spec)
        model = prior.model
        model.train().requires_grad_(True)
        opt = torch.optim.Adam(model.parameters(), lr=1e-5)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(8, prior.channels, 128, 128, generator=gen) * 0.3
        sig = torch.exp(torch.rand(8, generator=gen) * 6 - 5)
        n_params = sum(p.numel() for p in model.parameters())

        def step(
            model: torch.nn.Module = model,
            opt: torch.optim.Optimizer = opt,
            x: torch.Tensor = x,
            sig: torch.Tensor = sig,
            bf16: bool = False,
        ) -> None:
            noisy = x + sig[:, None, None, None] * torch.randn_like(x)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = (model(noisy, sig) - x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        for threads, precision in itertools.product(args.threads, ("fp32", "bf16")):
            torch.set_num_threads(threads)
            t = timeit(
                functools.partial(step, bf16=precision == "bf16"),
                repeat=args.speed_repeat,
                warmup=1,
            )
            rows.append(
                [
                    label,
                    f"{n_params / 1e6:.2f} M",
                    threads,
                    precision,
                    f"{8 / t.best:.2f}",
                    f"{8 / t.median:.2f}",
                    f"{8 / t.cpu_median:.2f}",
                ]
            )
        model.eval().requires_grad_(False)
    return markdown_table(
        [
            "prior",
            "params",
            "threads",
            "autocast",
            "img/s (best)",
            "img/s (median)",
            "img per CPU-s",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="runs/data/brain256", help="prepared dataset (val split)")
    ap.add_argument("--complex", default="complex", help="complex prior: name, card or checkpoint")
    ap.add_argument(
        "--magnitude", default="magnitude", help="magnitude prior: name, card or checkpoint"
    )
    ap.add_argument("--slices", type=int, default=24, help="held-out slices")
    ap.add_argument("--sigma", type=float, nargs="+", default=[0.1], help="noise std per component")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="speed: torch threads")
    ap.add_argument("--speed-repeat", type=int, default=3, help="speed: timed steps")
    ap.add_argument("--no-speed", action="store_true", help="skip the training-speed table")
    ap.add_argument("--no-denoise", action="store_true", help="skip the denoising table")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(args.threads))
    print("command: .venv/bin/python benchmarks/bench_prior_denoise.py " + shlex.join(sys.argv[1:]))
    print(f"machine: {machine_info()}, torch {torch.__version__}\n")
    if not args.no_denoise:
        print(denoise_table(args) + "\n")
    if not args.no_speed:
        print("training step (fwd + bwd + Adam), batch 8 × 128²:\n")
        print(speed_table(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
