"""The published evaluation, reproducible in one command (``mrprior bench``).

Methods × sampling patterns on held-out anatomy the priors never saw (the MNI152 2009 template
slices shipped in ``mrprior/data/heldout``; see its ``PROVENANCE.md``), simulated as 8-coil
k-space with a smooth synthetic phase and complex Gaussian noise
(:func:`mrprior.mr.simulate.simulate_kspace`); coil maps are estimated by ESPIRiT from the
calibration region of the undersampled data, as a user would (except for the calibration-free
NLINV). The outputs are a PSNR/SSIM table (Markdown and CSV) and one PNG per case with the
images and their error maps side by side.

Fairness: the ℓ1-wavelet baselines (ours and ``bart pics -l1``) get the best λ of a sweep,
chosen **per case by PSNR against the ground truth** (an oracle choice, favourable to them).
The prior methods run with their shipped defaults (``mrprior/configs/prior_methods.yaml``),
the same for every case.

Metrics: :mod:`mrprior.metrics` (magnitude, least-squares scale fit, whole field of view).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrprior.backend import resolve_device, to_numpy
from mrprior.errors import ConfigError, DataError
from mrprior.metrics import psnr, ssim
from mrprior.mr.phase import synthetic_phase
from mrprior.mr.sampling import SamplingMask, poisson_disc, uniform_2d, variable_density_lines
from mrprior.mr.simulate import simulate_kspace
from mrprior.recon.problem import ReconProblem, get_method

logger = logging.getLogger(__name__)

#: ℓ1 λ sweep (BART units, ``bart pics -l1 -r λ``)
L1_LAMBDAS: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
QUICK_L1_LAMBDAS: tuple[float, ...] = (1e-3, 1e-2)


# -- sampling patterns -------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingSpec:
    """A named sampling pattern of the evaluation."""

    name: str
    description: str
    make: Callable[[tuple[int, int], int], SamplingMask]
    calib: int  # maximum ESPIRiT calibration size


def _poisson(shape: tuple[int, int], seed: int) -> SamplingMask:
    c = max(16, round(24 * shape[0] / 256))
    return poisson_disc(shape, 8.0, calib=(c, c), seed=seed)


def _lines(shape: tuple[int, int], seed: int) -> SamplingMask:
    c = max(8, round(30 * shape[0] / 256))
    return variable_density_lines(shape, 5.0, calib_lines=c, seed=seed)


def _uniform(shape: tuple[int, int], seed: int) -> SamplingMask:
    c = max(16, round(30 * shape[0] / 256))
    return uniform_2d(shape, accel=(3, 2), calib=(c, c))


SAMPLINGS: dict[str, SamplingSpec] = {
    "poisson8": SamplingSpec("poisson8", "Poisson-disc R≈8, 24×24 calibration", _poisson, 24),
    "lines5": SamplingSpec("lines5", "1D variable-density R≈5, 30 calibration lines", _lines, 30),
    "uniform3x2": SamplingSpec("uniform3x2", "2D uniform 3×2, 30×30 calibration", _uniform, 30),
}


# -- image phase -------------------------------------------------------------------------------
#: phase models of the simulated complex images. ``synthetic`` is the model the shipped complex
#: prior was trained with (default parameters of :func:`mrprior.mr.phase.synthetic_phase`), so
#: its phase is in distribution; ``strong`` doubles every amplitude, halves the correlation
#: length of the random field and allows more B0 dipoles — phase the prior never saw; ``none``
#: keeps the image real.
PHASE_MODELS: dict[str, dict[str, float] | None] = {
    "synthetic": {},
    "strong": {
        "poly_scale": 2 * math.pi,
        "field_scale": 1.0,
        "field_correlation": 0.04,
        "b0_scale": 2.0,
        "max_dipoles": 4,
    },
    "none": None,
}


def check_phase_model(phase: str) -> None:
    """Raise :class:`ConfigError` unless ``phase`` names a :data:`PHASE_MODELS` entry."""
    if phase not in PHASE_MODELS:
        raise ConfigError(f"unknown phase model {phase!r}; valid: {list(PHASE_MODELS)}")


def complex_image(img: np.ndarray, phase: str, seed: int) -> np.ndarray:
    """``img · exp(iφ)`` with ``φ`` drawn from the phase model ``phase`` (:data:`PHASE_MODELS`)."""
    check_phase_model(phase)
    params = PHASE_MODELS[phase]
    if params is None:
        return img.astype(np.complex64)
    rng = np.random.default_rng([seed, 7])
    return (img * np.exp(1j * synthetic_phase(img.shape, rng, **params))).astype(np.complex64)


# -- images ------------------------------------------------------------------------------------
def heldout_dir() -> Path:
    """Directory of the held-out evaluation slices (MNI152 2009 template, PNG)."""
    return Path(str(resources.files("mrprior") / "data" / "heldout"))


def heldout_names() -> list[str]:
    """Names (file stems) of the held-out slices."""
    return sorted(p.stem for p in heldout_dir().glob("*.png"))


def fit_square(arr: np.ndarray, size: int) -> np.ndarray:
    """float32 ``[size, size]`` with max 1: the longer side of ``arr`` resized to ``size``
    (aspect kept, bicubic), the shorter zero-padded centrally."""
    from PIL import Image

    a = np.clip(np.asarray(arr, dtype=np.float32), 0, None)
    h, w = a.shape
    f = size / max(w, h)
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    im = Image.fromarray(a).resize((nw, nh), Image.Resampling.BICUBIC)
    r = np.clip(np.asarray(im, dtype=np.float32), 0, None)
    out = np.zeros((size, size), dtype=np.float32)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = r
    m = float(out.max())
    if m <= 0:
        raise DataError("image is empty")
    return out / m


def load_image(name_or_path: str, size: int) -> np.ndarray:
    """A held-out slice (by name) or any PNG as float32 ``[size, size]`` with max 1
    (see :func:`fit_square`)."""
    from PIL import Image

    path = Path(name_or_path)
    if not path.suffix:
        path = heldout_dir() / f"{name_or_path}.png"
    if not path.is_file():
        raise DataError(f"no image {name_or_path!r}; held-out names: {heldout_names()}")
    return fit_square(np.asarray(Image.open(path).convert("F"), dtype=np.float32), size)


# -- cases -------------------------------------------------------------------------------------
@dataclass
class Case:
    """One evaluation case: a problem with ESPIRiT maps and its ground truth."""

    image: str
    sampling: str
    truth: torch.Tensor  # complex [H, W]
    problem: ReconProblem
    true_csm: torch.Tensor
    acceleration: float


def make_case(
    image: str | np.ndarray,
    sampling: str,
    size: int = 256,
    coils: int = 8,
    snr: float = 40.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    phase: str = "synthetic",
) -> Case:
    """Simulate ``image`` as ``coils``-coil k-space (SNR = mean object magnitude / noise std),
    undersample with ``sampling``, and estimate ESPIRiT maps from its calibration region.

    ``image`` is a held-out name, a PNG path, or a float array (brought to ``size`` by
    :func:`fit_square`, named ``"array"``)."""
    from mrprior.mr.espirit import espirit_maps

    if sampling not in SAMPLINGS:
        raise ConfigError(f"unknown sampling {sampling!r}; valid: {sorted(SAMPLINGS)}")
    spec = SAMPLINGS[sampling]
    if isinstance(image, np.ndarray):
        img, name = fit_square(image, size), "array"
    else:
        img, name = load_image(image, size), Path(image).stem
    sim = simulate_kspace(complex_image(img, phase, seed), coils=coils, snr=snr, seed=seed)
    m = spec.make((size, size), seed)
    k = (sim.kspace * m.mask[None]).astype(np.complex64)
    maps = espirit_maps(k, calib=spec.calib, mask=m.mask)
    csm = maps.maps if hasattr(maps, "maps") else maps
    dev = torch.device(device)
    problem = ReconProblem(
        kspace=torch.from_numpy(k).to(dev),
        mask=torch.from_numpy(m.mask).to(dev),
        csm=torch.from_numpy(np.asarray(csm, dtype=np.complex64)).to(dev),
        noise_std=float(sim.noise_std),
        calib=torch.from_numpy(m.calib).to(dev),
    )
    return Case(
        image=name,
        sampling=sampling,
        truth=torch.from_numpy(sim.image),
        problem=problem,
        true_csm=torch.from_numpy(sim.csm),
        acceleration=float(m.acceleration),
    )


# -- methods -----------------------------------------------------------------------------------
@dataclass
class MethodOutput:
    image: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


MethodRunner = Callable[[Case, "BenchConfig"], MethodOutput]


def _best_of(case: Case, images: dict[float, torch.Tensor]) -> MethodOutput:
    scores = {lam: psnr(im, case.truth) for lam, im in images.items()}
    best = max(scores, key=lambda k: scores[k])
    return MethodOutput(images[best], {"lam": best, "sweep": scores})


def _run_registered(name: str, settings: dict[str, Any]) -> MethodRunner:
    def run(case: Case, cfg: BenchConfig) -> MethodOutput:
        res = get_method(name)(case.problem, dict(settings))
        return MethodOutput(res.image, dict(res.info))

    return run


def _l1_ours(case: Case, cfg: BenchConfig) -> MethodOutput:
    fn = get_method("l1")
    images = {lam: fn(case.problem, {"lam": lam, "seed": cfg.seed}).image for lam in cfg.l1_lambdas}
    return _best_of(case, images)


def _l1_bart(case: Case, cfg: BenchConfig) -> MethodOutput:
    from mrprior.io.cfl import image_from_bart, kspace_to_bart, run_bart

    k = kspace_to_bart(to_numpy(case.problem.kspace))
    s = kspace_to_bart(to_numpy(case.problem.csm))
    images = {}
    for lam in cfg.l1_lambdas:
        out = run_bart(
            ["pics", "-S", "-l1", "-r", f"{lam:g}", "-i", "100", "k", "s", "x"],
            inputs={"k": k, "s": s},
            outputs=["x"],
        )
        images[lam] = torch.from_numpy(image_from_bart(out["x"]))
    return _best_of(case, images)


def _prior_settings(cfg: BenchConfig, which: str) -> Any:
    ref = cfg.prior if which == "complex" else cfg.magnitude_prior
    return ref


def _prior_method(method: str, which: str, extra: dict[str, Any] | None = None) -> MethodRunner:
    def run(case: Case, cfg: BenchConfig) -> MethodOutput:
        settings = {"prior": _prior_settings(cfg, which), "seed": cfg.seed, **(extra or {})}
        settings.update(cfg.method_settings.get(method, {}))
        problem = case.problem
        if method == "prior-nlinv":
            problem = dataclasses.replace(problem, csm=None)
        res = get_method(method)(problem, settings)
        out = MethodOutput(res.image, dict(res.info))
        if "uncertainty" in res.extras:
            out.info["uncertainty"] = res.extras["uncertainty"]
        return out

    return run


#: evaluation method name -> (label, runner, needs a prior of kind)
METHODS: dict[str, tuple[str, MethodRunner, str | None]] = {
    "zerofill": ("zero-filled", _run_registered("zerofill", {}), None),
    "cg-sense": ("CG-SENSE", _run_registered("sense", {"max_iterations": 10}), None),
    "l1-ours": ("ℓ1-wavelet (ours, best λ)", _l1_ours, None),
    "l1-bart": ("bart pics -l1 (best λ)", _l1_bart, None),
    "pics-complex": ("prior-PICS complex", _prior_method("prior-pics", "complex"), "complex"),
    "pics-magnitude": (
        "prior-PICS magnitude",
        _prior_method("prior-pics", "magnitude"),
        "magnitude",
    ),
    "nlinv-complex": ("prior-NLINV complex", _prior_method("prior-nlinv", "complex"), "complex"),
    "sample-complex": (
        "posterior mean complex",
        _prior_method("prior-sample", "complex"),
        "complex",
    ),
}
DEFAULT_METHODS = (
    "zerofill",
    "cg-sense",
    "l1-ours",
    "l1-bart",
    "pics-complex",
    "pics-magnitude",
    "nlinv-complex",
)


# -- configuration and results -----------------------------------------------------------------
@dataclass
class BenchConfig:
    """What ``mrprior bench`` runs.

    Attributes
    ----------
    images : held-out slice names or PNG paths.
    samplings : keys of :data:`SAMPLINGS`.
    methods : keys of :data:`METHODS`.
    size : matrix size (square).
    snr : simulation SNR (mean object magnitude / noise std per k-space sample).
    phase : phase model of the simulated complex images (:data:`PHASE_MODELS`).
    seed : seeds simulation, masks and stochastic methods.
    device : ``auto``, ``cpu`` or ``cuda``.
    prior, magnitude_prior : prior name / card path, or a ScorePrior object.
    l1_lambdas : λ sweep of the ℓ1 baselines.
    method_settings : per registered method, settings overriding the shipped defaults.
    """

    images: list[str] = field(default_factory=heldout_names)
    samplings: list[str] = field(default_factory=lambda: list(SAMPLINGS))
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    size: int = 256
    snr: float = 40.0
    phase: str = "synthetic"
    seed: int = 0
    device: str = "auto"
    prior: Any = "complex"
    magnitude_prior: Any = "magnitude"
    l1_lambdas: Sequence[float] = L1_LAMBDAS
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"unknown method(s) {bad}; valid: {list(METHODS)}")
        bad = [s for s in self.samplings if s not in SAMPLINGS]
        if bad:
            raise ConfigError(f"unknown sampling(s) {bad}; valid: {list(SAMPLINGS)}")
        if not self.images:
            raise ConfigError("no images to evaluate")
        check_phase_model(self.phase)
        if self.size < 32 or self.size % 2:
            raise ConfigError(f"size must be even and >= 32, got {self.size}")


def quick_config(**overrides: Any) -> BenchConfig:
    """A tiny configuration for CI: one image at 64², two samplings, few λ."""
    base = {
        "images": heldout_names()[:1],
        "samplings": ["poisson8", "uniform3x2"],
        "methods": ["zerofill", "cg-sense", "l1-ours", "pics-complex"],
        "size": 64,
        "l1_lambdas": QUICK_L1_LAMBDAS,
        "method_settings": {
            "prior-pics": {"iterations": 8},
            "prior-nlinv": {"iterations": 6, "prior_steps": 2, "cg_iterations": 15},
            "prior-sample": {"num_samples": 2, "levels": 10},
        },
    }
    base.update(overrides)
    return BenchConfig(**base)


@dataclass
class Row:
    image: str
    sampling: str
    acceleration: float
    method: str
    label: str
    psnr: float
    ssim: float
    seconds: float
    lam: float | None = None


@dataclass
class BenchResult:
    rows: list[Row]
    skipped: dict[str, str]
    files: list[Path]


def _available(kind: str, cfg: BenchConfig, device: torch.device) -> str | None:
    """None when the prior of ``kind`` loads, else the reason."""
    from mrprior.recon.prior_methods import resolve_prior

    ref = cfg.prior if kind == "complex" else cfg.magnitude_prior
    try:
        resolve_prior(ref, device)
    except Exception as exc:  # any load failure makes the method unavailable, not the bench
        return f"{kind} prior {ref!r} not available: {exc}"
    return None


def run_bench(
    cfg: BenchConfig, out_dir: str | Path, progress: bool = True, figures: bool = True
) -> BenchResult:
    """Run the evaluation and write ``results.csv``, ``results.md`` and PNG figures."""
    from tqdm import tqdm

    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    skipped: dict[str, str] = {}
    methods = []
    for m in cfg.methods:
        kind = METHODS[m][2]
        reason = _available(kind, cfg, device) if kind else None
        if m == "l1-bart":
            from mrprior.io.cfl import bart_available

            if not bart_available():
                reason = "bart not installed"
        if reason:
            logger.warning("skipping %s: %s", m, reason)
            skipped[m] = reason
        else:
            methods.append(m)
    rows: list[Row] = []
    files: list[Path] = []
    total = len(cfg.images) * len(cfg.samplings) * len(methods)
    bar = tqdm(total=total, disable=not progress, desc="bench", unit="recon")
    for image in cfg.images:
        for sampling in cfg.samplings:
            case = make_case(
                image,
                sampling,
                cfg.size,
                seed=cfg.seed,
                device=device,
                snr=cfg.snr,
                phase=cfg.phase,
            )
            recons: dict[str, torch.Tensor] = {}
            for m in methods:
                label, runner, _ = METHODS[m]
                bar.set_postfix_str(f"{case.image} {sampling} {m}")
                t0 = time.perf_counter()
                res = runner(case, cfg)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                img = res.image.detach().cpu()
                recons[m] = img
                lam = res.info.get("lam")
                rows.append(
                    Row(
                        case.image,
                        sampling,
                        case.acceleration,
                        m,
                        label,
                        psnr(img, case.truth),
                        ssim(img, case.truth),
                        dt,
                        float(lam) if isinstance(lam, int | float) else None,
                    )
                )
                bar.update(1)
            if figures:
                files.append(_figure(case, recons, rows, out))
    bar.close()
    files += write_tables(rows, out, cfg, skipped)
    return BenchResult(rows, skipped, files)


# -- output ------------------------------------------------------------------------------------
def write_tables(
    rows: list[Row],
    out: Path,
    cfg: BenchConfig | None = None,
    skipped: dict[str, str] | None = None,
) -> list[Path]:
    """``results.csv`` (one row per reconstruction) and ``results.md`` (PSNR / SSIM per case,
    plus the mean per sampling)."""
    csv_path = out / "results.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "sampling", "R", "method", "psnr_db", "ssim", "seconds", "l1_lambda"])
        for r in rows:
            w.writerow(
                [
                    r.image,
                    r.sampling,
                    f"{r.acceleration:.2f}",
                    r.method,
                    f"{r.psnr:.2f}",
                    f"{r.ssim:.4f}",
                    f"{r.seconds:.2f}",
                    "" if r.lam is None else f"{r.lam:g}",
                ]
            )
    methods = list(dict.fromkeys(r.method for r in rows))
    labels = {r.method: r.label for r in rows}
    cases = list(dict.fromkeys((r.image, r.sampling) for r in rows))
    table = {(r.image, r.sampling, r.method): r for r in rows}
    lines = ["# mrprior bench", ""]
    if cfg is not None:
        lines += [
            f"Images: {', '.join(cfg.images)} ({cfg.size}², 8 coils, SNR {cfg.snr:g}, "
            f"phase model {cfg.phase!r}, "
            f"seed {cfg.seed}). Coil maps: ESPIRiT from the calibration region (NLINV: none).",
            "ℓ1 baselines: λ chosen per case by best PSNR from "
            f"{{{', '.join(f'{v:g}' for v in cfg.l1_lambdas)}}} (oracle, favourable to them). "
            "Prior methods: shipped defaults, the same for every case.",
            "Metrics: magnitude after a least-squares scale fit, whole field of view.",
            "",
        ]
    head = "| image | sampling | R | " + " | ".join(labels[m] for m in methods) + " |"
    lines += ["## PSNR (dB) / SSIM", "", head, "|" + "---|" * (3 + len(methods))]
    for image, sampling in cases:
        cells = []
        r_acc = ""
        for m in methods:
            r = table.get((image, sampling, m))
            if r is None:
                cells.append("–")
                continue
            r_acc = f"{r.acceleration:.1f}"
            cells.append(f"{r.psnr:.2f} / {r.ssim:.3f}")
        lines.append(f"| {image} | {sampling} | {r_acc} | " + " | ".join(cells) + " |")
    lines += ["", "## Mean PSNR (dB) per sampling", ""]
    lines += ["| sampling | " + " | ".join(labels[m] for m in methods) + " |"]
    lines += ["|" + "---|" * (1 + len(methods))]
    for sampling in dict.fromkeys(s for _, s in cases):
        cells = []
        for m in methods:
            v = [r.psnr for r in rows if r.sampling == sampling and r.method == m]
            cells.append(f"{np.mean(v):.2f}" if v else "–")
        lines.append(f"| {sampling} | " + " | ".join(cells) + " |")
    lines += ["", "## Mean seconds per slice", ""]
    lines += ["| " + " | ".join(labels[m] for m in methods) + " |"]
    lines += ["|" + "---|" * len(methods)]
    lines.append(
        "| "
        + " | ".join(f"{np.mean([r.seconds for r in rows if r.method == m]):.1f}" for m in methods)
        + " |"
    )
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())]
    md_path = out / "results.md"
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def _figure(case: Case, recons: dict[str, torch.Tensor], rows: list[Row], out: Path) -> Path:
    """Images (top) and ×5 error maps (bottom) of every method for one case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mrprior.metrics import fit_scale

    ref = np.abs(to_numpy(case.truth))
    n = len(recons) + 1
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 5.2), squeeze=False)
    vmax = float(ref.max())
    axes[0, 0].imshow(ref, cmap="gray", vmin=0, vmax=vmax)
    axes[0, 0].set_title("reference", fontsize=8)
    axes[1, 0].imshow(to_numpy(case.problem.mask), cmap="gray")
    axes[1, 0].set_title(f"mask R={case.acceleration:.1f}", fontsize=8)
    score = {(r.method): r for r in rows if r.image == case.image and r.sampling == case.sampling}
    for j, (m, img) in enumerate(recons.items(), start=1):
        mag = np.abs(to_numpy(img))
        mag = mag * fit_scale(mag, ref)
        r = score[m]
        axes[0, j].imshow(mag, cmap="gray", vmin=0, vmax=vmax)
        axes[0, j].set_title(f"{r.label}\n{r.psnr:.2f} dB / {r.ssim:.3f}", fontsize=7)
        axes[1, j].imshow(np.abs(mag - ref), cmap="inferno", vmin=0, vmax=vmax / 5)
        axes[1, j].set_title("|error| ×5", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{case.image} — {SAMPLINGS[case.sampling].description}", fontsize=9)
    fig.tight_layout()
    path = out / f"{case.image}_{case.sampling}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summarize_gain(rows: list[Row], method: str, baseline: str, sampling: str) -> float:
    """Mean PSNR gain (dB) of ``method`` over ``baseline`` on the cases of ``sampling``."""
    gains = []
    by = {(r.image, r.sampling, r.method): r.psnr for r in rows}
    for r in rows:
        if r.method == method and r.sampling == sampling:
            b = by.get((r.image, r.sampling, baseline))
            if b is not None:
                gains.append(r.psnr - b)
    return float(np.mean(gains)) if gains else math.nan
