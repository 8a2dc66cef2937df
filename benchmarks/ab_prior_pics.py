"""A/B of prior-PICS's implementation against a base revision, in one process (issue 10).

The base revision's U-Net module (``mrprior/priors/unet.py``, run under bf16 autocast as it
was) and normal operator (``mrprior/recon/cg.py``) are loaded from ``git show REV:…`` and
patched in, alternating run by run with this checkout's code on the same held-out real slices
(simulated as the real suite does), with the shipped weights and settings. Timing is **thread
CPU time with one torch thread** (``time.thread_time``): on a shared, loaded machine wall
times (and the time of more than one thread) count the waits for a core, CPU time of one
thread does not. Prints per case the median time, the PSNR of each and the largest pixel
difference between the two reconstructions.

Usage::

    .venv/bin/python benchmarks/ab_prior_pics.py --base 2cea094 --repeat 3 \\
        --cases tumor2-t1:poisson8:8,tumor2-t1:lines5,kidney01-t2:poisson8
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, markdown_table
from bench_speed import real_cases

import mrprior.recon.pnp as pnp
from mrprior.metrics import psnr
from mrprior.recon.prior_methods import resolve_prior
from mrprior.recon.problem import get_method

ROOT = Path(__file__).resolve().parent.parent


def load_revision(rev: str, path: str, name: str, tmp: Path) -> types.ModuleType:
    """The module ``path`` as it was at git revision ``rev`` (imports resolve to this tree)."""
    text = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    file = tmp / f"{name}.py"
    file.write_text(text)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision of the base implementation")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case and implementation")
    ap.add_argument(
        "--cases",
        default="tumor2-t1:poisson8:8",
        help="VOLUME:SAMPLING[:COILS],… held-out real slices (default: bench_speed's case)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    prior = resolve_prior("complex", torch.device("cpu"))
    new_normal = pnp.normal_operator
    with tempfile.TemporaryDirectory() as tmp:
        old_unet = load_revision(args.base, "mrprior/priors/unet.py", "base_unet", Path(tmp))
        old_cg = load_revision(args.base, "mrprior/recon/cg.py", "base_cg", Path(tmp))
    cfg = old_unet.UNetConfig(**vars(prior.model.cfg))
    old_net = old_unet.EDMDenoiser(cfg)
    old_net.load_state_dict(prior.model.state_dict())
    old_net = old_net.eval().requires_grad_(False).to(memory_format=torch.channels_last)

    def old_run(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return old_net(x, s).float()

    def use(which: str) -> None:
        pnp.normal_operator = old_cg.normal_operator if which == "base" else new_normal
        if which == "base":
            prior._run = types.MethodType(old_run, prior)
        else:
            prior.__dict__.pop("_run", None)

    run = get_method("prior-pics")
    rows = []
    for spec in args.cases.split(","):
        vol, sampling, *coils = spec.split(":")
        (case,) = real_cases([vol], sampling, coils=int(coils[0]) if coils else None)
        times: dict[str, list[float]] = {"base": [], "this": []}
        images: dict[str, torch.Tensor] = {}
        for which in times:  # warm-up: oneDNN primitives, the bf16 copy
            use(which)
            run(case.problem, {"prior": "complex", "iterations": 2})
        for _ in range(args.repeat):
            for which in times:
                use(which)
                t0 = time.thread_time()
                res = run(case.problem, {"prior": "complex"})
                times[which].append(time.thread_time() - t0)
                images[which] = torch.as_tensor(res.image)
        tb, tn = (statistics.median(times[k]) for k in ("base", "this"))
        pb, pn = (psnr(images[k], case.truth) for k in ("base", "this"))
        diff = float((images["this"] - images["base"]).abs().max() / images["base"].abs().max())
        rows.append([case.image, sampling, f"{pb:.4f}", f"{pn:.4f}", f"{pn - pb:+.4f}",
                     f"{diff:.1e}", f"{tb:.2f}", f"{tn:.2f}", f"{100 * (tn / tb - 1):+.1f} %"])  # fmt: skip
        print(" | ".join(rows[-1]), flush=True)
    use("this")
    print(
        f"\nmachine: {machine_info()}; 1 torch thread; load {Path('/proc/loadavg').read_text()[:14]}"
    )
    print(f"base: {args.base}; thread CPU seconds, median of {args.repeat}\n")
    header = ["case", "sampling", "PSNR base [dB]", "PSNR this [dB]", "Δ [dB]",
              "max abs Δx / max abs x", "base [s]", "this [s]", "Δt"]  # fmt: skip
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
