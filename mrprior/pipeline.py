"""The reconstruction pipeline: raw k-space group → image series → ISMRMRD images.

**The one path** that the CLI, the Gadgetron node, the MRD server and the benchmarks call::

    KSpace ──preprocess──▶ prewhitened, recon-matrix readout
           ──coil maps───▶ ESPIRiT (numpy or cupy, matching the device) when the method needs them
           ──method──────▶ get_method(cfg.method)(ReconProblem, settings) -> ReconResult
           ──crop────────▶ ImageSeries at the recon matrix size
           ──images──────▶ ismrmrd.Image list (magnitude + optional phase / uncertainty series)

Preprocessing happens here and only here (:func:`preprocess`): noise prewhitening with the
covariance of the group's noise scans (scaled by the dwell-time ratio of noise and imaging
samples, so whitened imaging noise has unit variance) and readout-oversampling removal.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import ismrmrd
import numpy as np
import torch

from mrprior.backend import get_xp, resolve_device, to_numpy, to_torch
from mrprior.cancellation import check_cancelled
from mrprior.config import apply_overrides, from_dict, load_yaml
from mrprior.errors import ConfigError, DataError, MRPriorError
from mrprior.io.containers import ImageSeries, KSpace
from mrprior.io.images import write_images
from mrprior.io.raw import AcquisitionBuffer, iter_kspace, read_header
from mrprior.mr.fft import fftc, ifftc
from mrprior.recon.problem import ReconProblem, get_method, method_needs_csm

logger = logging.getLogger(__name__)

__all__ = [
    "CoilMapConfig",
    "OutputConfig",
    "PriorConfig",
    "ReconConfig",
    "coil_maps",
    "default_config_path",
    "fit_matrix",
    "images_from_series",
    "load_recon_config",
    "method_settings",
    "preprocess",
    "reconstruct",
    "reconstruct_file",
    "reconstruct_stream",
    "use_calib_as_data",
    "write_images",
]

#: Extra image series the pipeline can write next to the magnitude series.
EXTRA_SERIES = ("phase", "uncertainty")


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass
class CoilMapConfig:
    """ESPIRiT settings (see :func:`mrprior.mr.espirit.espirit_maps`)."""

    calib_size: int = 24
    kernel_size: int = 6
    threshold: float = 0.001
    crop: float = 0.8

    def validate(self) -> None:
        if self.calib_size < 4:
            raise ConfigError(f"coil_maps.calib_size must be >= 4, got {self.calib_size}")
        if not 2 <= self.kernel_size <= self.calib_size:
            raise ConfigError(
                f"coil_maps.kernel_size must be in [2, calib_size={self.calib_size}], "
                f"got {self.kernel_size}"
            )
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"coil_maps.threshold must be in [0, 1), got {self.threshold}")
        if not 0.0 <= self.crop < 1.0:
            raise ConfigError(f"coil_maps.crop must be in [0, 1), got {self.crop}")


@dataclass
class PriorConfig:
    """Which generative prior the prior methods use: a shipped name or a card/weights path."""

    name: str = "complex"
    path: str | None = None

    @property
    def ref(self) -> str:
        """``path`` when set, else ``name``."""
        return self.path or self.name


@dataclass
class OutputConfig:
    """How image series are written."""

    dtype: Literal["float32", "uint16"] = "float32"
    uint16_max: int = 4095
    extra_series: list[str] = field(default_factory=list)
    series_index_start: int = 1

    def validate(self) -> None:
        bad = [s for s in self.extra_series if s not in EXTRA_SERIES]
        if bad:
            raise ConfigError(
                f"output.extra_series: {bad} not valid; choose from {list(EXTRA_SERIES)}"
            )
        if len(set(self.extra_series)) != len(self.extra_series):
            raise ConfigError(f"output.extra_series has duplicates: {self.extra_series}")
        if not 1 <= self.uint16_max <= 65535:
            raise ConfigError(f"output.uint16_max must be in [1, 65535], got {self.uint16_max}")
        if not 0 <= self.series_index_start <= 65535 - len(EXTRA_SERIES):
            raise ConfigError(f"output.series_index_start out of range: {self.series_index_start}")


@dataclass
class ReconConfig:
    """Everything one reconstruction job needs; defaults in ``mrprior/configs/recon.yaml``.

    Attributes
    ----------
    method : registered method name (``mrprior.recon.problem.method_names()``).
    settings : method settings, passed to the method unchanged.
    device : ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    prewhiten : whiten with the noise-scan covariance when the data carry noise scans.
    remove_oversampling : crop the readout from the encoded to the recon matrix.
    calib_as_data : use calibration-only lines as measured data too. ``auto``: only for methods
        that need no coil maps (NLINV: the lines would otherwise go unused, and it needs a fully
        sampled centre), and only when the header's calibration mode is not ``separate`` or
        ``external`` (a reference scan that may differ in contrast); see :func:`use_calib_as_data`.
    seed : seed for stochastic methods; see :func:`method_settings`.
    coil_maps, prior, output : see the nested classes; ``prior`` reaches the methods that take
        one as ``settings["prior"]`` (:func:`method_settings`).
    """

    method: str = "sense"
    settings: dict[str, Any] = field(default_factory=dict)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    prewhiten: bool = True
    remove_oversampling: bool = True
    calib_as_data: bool | Literal["auto"] = "auto"
    seed: int = 0
    coil_maps: CoilMapConfig = field(default_factory=CoilMapConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> None:
        get_method(self.method)  # ConfigError listing the valid names
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")


def default_config_path() -> Path:
    """The bundled defaults, ``mrprior/configs/recon.yaml``."""
    return Path(str(resources.files("mrprior") / "configs" / "recon.yaml"))


def load_recon_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> ReconConfig:
    """Load a :class:`ReconConfig` from YAML (default: the bundled ``recon.yaml``).

    Parameters
    ----------
    path : YAML file; keys it leaves out keep the bundled defaults.
    overrides : flat ``name: value`` overrides (CLI ``--set``, Gadgetron ``<property>``): bare
        field names match at any depth (``calib_size``), dotted names exactly
        (``coil_maps.crop``); ``settings.<key>`` sets a method setting.

    Raises
    ------
    ConfigError
        Unknown keys, bad values, unknown method (the message lists valid choices).
    """
    cfg = load_yaml(ReconConfig, default_config_path())
    if path is not None:
        import yaml

        try:
            user = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        try:
            cfg = from_dict(ReconConfig, _merge(_asdict(cfg), user))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if overrides:
        settings = dict(cfg.settings)
        rest = {}
        for key, value in overrides.items():
            if key.startswith("settings."):
                settings[key.removeprefix("settings.")] = value
            else:
                rest[key] = value
        cfg = dataclasses.replace(cfg, settings=settings)
        if rest:
            cfg = apply_overrides(cfg, rest)
    return cfg


def _asdict(cfg: Any) -> dict[str, Any]:
    from mrprior.config import to_dict

    return to_dict(cfg)


def _merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "settings":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _accepted_keys(method: str) -> frozenset[str] | None:
    """Setting keys a method declares (attribute ``settings_keys`` of the registered function),
    else ``{"prior", "seed"}`` for the ``prior-*`` family (documented to take both), else None."""
    keys = getattr(get_method(method), "settings_keys", None)
    if keys is not None:
        return frozenset(keys)
    if method.startswith("prior-"):
        return frozenset({"prior", "seed"})
    return None


def method_settings(cfg: ReconConfig) -> dict[str, Any]:
    """The settings dict handed to the method: ``cfg.settings``, plus the top-level ``seed``
    and ``prior`` (as ``settings["seed"]`` / ``settings["prior"]``) for methods that take those
    keys, unless ``cfg.settings`` sets them. Methods reject keys they do not know, so nothing
    is added for a method that does not declare them."""
    settings = dict(cfg.settings)
    keys = _accepted_keys(cfg.method) or frozenset()
    if "seed" in keys:
        settings.setdefault("seed", cfg.seed)
    if "prior" in keys:
        settings.setdefault("prior", cfg.prior.ref)
    return settings


# --------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------
def _resample_mask(mask: Any, nx: int) -> Any:
    """Mask along a readout decimated from ``mask.shape[-1]`` to ``nx`` samples: output sample
    ``j`` covers the k-space position of input sample ``nx_enc//2 + (j - nx//2)·nx_enc/nx``."""
    n_enc = mask.shape[-1]
    idx = np.clip(
        np.round(n_enc // 2 + (np.arange(nx) - nx // 2) * (n_enc / nx)).astype(int), 0, n_enc - 1
    )
    return mask[..., get_xp(mask).asarray(idx)]


def preprocess(kspace: KSpace, cfg: ReconConfig) -> KSpace:
    """Prewhiten (when ``cfg.prewhiten`` and noise scans exist) and remove readout
    oversampling (when ``cfg.remove_oversampling``); each step runs at most once per KSpace.

    Works with numpy or cupy data (whatever ``kspace`` holds).
    """
    ks = kspace
    if cfg.prewhiten and ks.noise is not None and not ks.prewhitened:
        from mrprior.mr.noise import noise_covariance, prewhiten, whitening_matrix

        try:
            cov = np.asarray(noise_covariance(ks.noise))
            if ks.noise_dwell_us and ks.dwell_us:
                # noise variance scales with bandwidth = 1 / dwell time
                cov = cov * (ks.noise_dwell_us / ks.dwell_us)
            w = np.asarray(whitening_matrix(cov)).astype(np.complex64)
        except DataError as exc:  # e.g. an all-zero noise scan or a dead channel
            warnings.warn(f"noise scan unusable, data not prewhitened: {exc}", stacklevel=2)
        else:
            data = prewhiten(ks.data, ks.xp.asarray(w))
            ks = ks.replace(data=data.astype(np.complex64, copy=False), prewhitened=True)
    nx_recon = ks.encoding.recon_matrix[0]
    if cfg.remove_oversampling and not ks.oversampling_removed and ks.data.shape[-1] != nx_recon:
        from mrprior.mr.oversampling import remove_readout_oversampling

        if ks.data.shape[-1] < nx_recon:
            raise DataError(
                f"readout has {ks.data.shape[-1]} samples, fewer than the recon matrix "
                f"x = {nx_recon}: cannot remove oversampling"
            )
        data = remove_readout_oversampling(ks.data, nx_recon)
        ks = ks.replace(
            data=data.astype(np.complex64, copy=False),
            mask=_resample_mask(ks.mask, nx_recon),
            calib=_resample_mask(ks.calib, nx_recon),
            oversampling_removed=True,
        )
    return ks


def use_calib_as_data(cfg: ReconConfig, kspace: KSpace) -> bool:
    """Whether calibration-only lines join the measured data (resolves ``calib_as_data``)."""
    if cfg.calib_as_data != "auto":
        return bool(cfg.calib_as_data)
    mode = (kspace.encoding.calibration_mode or "").lower()
    return not method_needs_csm(cfg.method) and mode not in ("separate", "external")


def _noise_std(ks: KSpace) -> float | None:
    """Noise standard deviation per k-space sample: 1 after whitening, else from the scans."""
    if ks.prewhitened:
        return 1.0
    if ks.noise is None or ks.noise.shape[1] < 2:
        return None
    var = float(np.mean(np.abs(ks.noise - ks.noise.mean(axis=1, keepdims=True)) ** 2))
    if ks.noise_dwell_us and ks.dwell_us:
        var *= ks.noise_dwell_us / ks.dwell_us
    return math.sqrt(var)


# --------------------------------------------------------------------------------------------
# matrix size
# --------------------------------------------------------------------------------------------
def _fit_axis(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Centre-crop (image space) or k-space zero-pad (sinc interpolation) axis ``dim`` to ``n``."""
    m = x.shape[dim]
    if m == n:
        return x
    if m > n:
        start = m // 2 - n // 2
        return x.narrow(dim, start, n)
    real = not x.is_complex()
    k = fftc(x.movedim(dim, -1).to(torch.complex64), ndim=1)
    pad = torch.zeros((*k.shape[:-1], n), dtype=k.dtype, device=k.device)
    start = n // 2 - m // 2
    pad[..., start : start + m] = k
    out = ifftc(pad, ndim=1) * math.sqrt(n / m)
    out = out.movedim(-1, dim)
    return out.real if real else out


def fit_matrix(x: torch.Tensor, ny: int, nx: int) -> torch.Tensor:
    """Bring the last two axes of ``x`` to ``[ny, nx]`` (crop or k-space zero-fill)."""
    return _fit_axis(_fit_axis(x, ny, -2), nx, -1)


# --------------------------------------------------------------------------------------------
# reconstruction
# --------------------------------------------------------------------------------------------
def coil_maps(kspace: KSpace, cfg: ReconConfig, device: torch.device) -> torch.Tensor:
    """ESPIRiT coil maps ``[C, ky, kx]`` on ``device`` from every acquired line of ``kspace``
    (imaging and calibration), computed with numpy or cupy to match the device."""
    from mrprior.mr.espirit import espirit_maps

    ks = kspace.to(device)
    xp = ks.xp
    sampled = xp.logical_or(ks.mask, ks.calib)
    c = cfg.coil_maps
    maps = espirit_maps(
        ks.data * sampled[None],
        calib=c.calib_size,
        kernel=c.kernel_size,
        threshold=c.threshold,
        crop=c.crop,
        mask=sampled,
    )
    return to_torch(maps, device)


def reconstruct(kspace: KSpace, cfg: ReconConfig) -> ImageSeries:
    """Reconstruct one k-space group into an :class:`ImageSeries` at the recon matrix size.

    Steps: :func:`preprocess` → torch on ``cfg.device`` → ESPIRiT coil maps when the method
    needs them → the registered method → crop / interpolate to the recon matrix.

    Raises
    ------
    DataError
        3D k-space (not supported yet), or errors of the steps (e.g. no calibration region).
    ConfigError
        Unknown method or invalid settings.
    """
    t0 = time.perf_counter()
    check_cancelled()
    if kspace.is_3d:
        raise DataError(
            f"3D k-space {tuple(kspace.data.shape)} is not supported: the methods are 2D"
        )
    device = resolve_device(cfg.device)
    method = get_method(cfg.method)
    ks = preprocess(kspace.to(device), cfg)
    t_pre = time.perf_counter()
    csm = coil_maps(ks, cfg, device) if method_needs_csm(cfg.method) else None
    t_csm = time.perf_counter()
    data, mask, calib = ks.to_torch(device)
    used = mask | calib if use_calib_as_data(cfg, ks) else mask
    problem = ReconProblem(
        kspace=(data * used[None]).to(torch.complex64),
        mask=used,
        csm=csm,
        noise_std=_noise_std(ks),
        calib=calib,
    )
    check_cancelled()
    result = method(problem, method_settings(cfg))
    t_rec = time.perf_counter()
    ny, nx = ks.encoding.recon_matrix[1], ks.encoding.recon_matrix[0]
    image = to_numpy(fit_matrix(result.image, ny, nx)).astype(np.complex64)
    extras: dict[str, np.ndarray] = {}
    for name, value in result.extras.items():
        if isinstance(value, torch.Tensor) and value.ndim >= 2:
            value = fit_matrix(value, ny, nx)
        arr = to_numpy(value)
        extras[name] = arr.astype(np.complex64 if np.iscomplexobj(arr) else np.float32)
    if "csm" not in extras and csm is not None:
        extras["csm"] = to_numpy(fit_matrix(csm, ny, nx)).astype(np.complex64)
    info = {
        **result.info,
        "acceleration": float(kspace.acceleration),
        "prewhitened": ks.prewhitened,
        "device": str(device),
        "seconds_preprocess": t_pre - t0,
        "seconds_coil_maps": t_csm - t_pre,
        "seconds_method": t_rec - t_csm,
        "seconds_total": time.perf_counter() - t0,
    }
    return ImageSeries(
        image=image,
        encoding=ks.encoding,
        reference=ks.copy_reference(),
        indices=ks.indices,
        extras=extras,
        method=cfg.method,
        info=info,
    )


# --------------------------------------------------------------------------------------------
# ISMRMRD images
# --------------------------------------------------------------------------------------------
def _window(values: np.ndarray) -> tuple[float, float]:
    """Window centre/width covering the 0.5..99.5 percentile range of ``values``."""
    lo, hi = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
    if not hi - lo > 1e-6 * max(abs(hi), abs(lo), 1e-30):
        hi = lo + max(abs(lo), 1.0)
    return float((hi + lo) / 2), float(hi - lo)


def _make_image(
    array: np.ndarray,
    series: ImageSeries,
    image_type: int,
    series_index: int,
    image_index: int,
    role: str,
    history: list[str],
    window: tuple[float, float] | None = None,
) -> ismrmrd.Image:
    img = ismrmrd.Image.from_array(
        np.ascontiguousarray(array),
        acquisition=series.reference,
        transpose=False,
        image_type=image_type,
        image_index=image_index,
        image_series_index=series_index,
        field_of_view=tuple(float(v) for v in series.field_of_view),
    )
    center, width = window or _window(np.asarray(array, dtype=np.float64))
    meta = ismrmrd.Meta()
    meta["DataRole"] = role
    meta["WindowCenter"] = f"{center:.7g}"
    meta["WindowWidth"] = f"{width:.7g}"
    meta["ImageProcessingHistory"] = history
    meta["ImageComment"] = f"{role} {series.method}"
    meta["SequenceDescriptionAdditional"] = series.method
    meta["Keep_image_geometry"] = "1"  # scanners: keep the header's geometry as sent
    meta["ImageRowDir"] = [f"{float(v):.18f}" for v in img.read_dir]
    meta["ImageColumnDir"] = [f"{float(v):.18f}" for v in img.phase_dir]
    img.meta = meta
    return img


def images_from_series(
    series: ImageSeries,
    cfg: ReconConfig,
    series_index_start: int | None = None,
    image_index: int | None = None,
) -> list[ismrmrd.Image]:
    """ISMRMRD images of one :class:`ImageSeries`: magnitude, then ``cfg.output.extra_series``.

    Series numbering: magnitude ``series_index_start`` (default ``cfg.output.series_index_start``),
    extra series ``k`` of ``EXTRA_SERIES`` (phase, uncertainty) at ``start + 1 + k`` regardless of
    which are enabled. ``image_index`` defaults to
    :meth:`EncodingInfo.image_number` of the series' indices (unique per slice/repetition/...).
    Geometry (position, read/phase/slice directions, table position, time stamps, indices) is
    copied from the reference acquisition; ``field_of_view`` is the recon space FOV; meta
    attributes: DataRole, WindowCenter, WindowWidth, ImageProcessingHistory, ImageComment.

    Magnitude images are float32, or uint16 scaled so the maximum is ``uint16_max``. Phase is
    float32 radians in [-π, π], or uint16 mapping [-π, π] to [0, uint16_max].
    """
    out_cfg = cfg.output
    start = out_cfg.series_index_start if series_index_start is None else series_index_start
    index = series.encoding.image_number(series.indices) if image_index is None else image_index
    history = ["MRPRIOR", series.method.upper()]
    images = []
    mag = np.abs(series.image).astype(np.float32)
    if out_cfg.dtype == "uint16":
        peak = float(mag.max())
        scale = out_cfg.uint16_max / peak if peak > 0 else 0.0
        mag_out: np.ndarray = np.clip(np.round(mag * scale), 0, out_cfg.uint16_max).astype(
            np.uint16
        )
    else:
        mag_out = mag
    images.append(
        _make_image(mag_out, series, ismrmrd.IMTYPE_MAGNITUDE, start, index, "Image", history)
    )
    for name in out_cfg.extra_series:
        sidx = start + 1 + EXTRA_SERIES.index(name)
        if name == "phase":
            ph = np.angle(series.image).astype(np.float32)
            window = (0.0, 2 * np.pi)
            if out_cfg.dtype == "uint16":
                ph = np.round((ph + np.pi) / (2 * np.pi) * out_cfg.uint16_max).astype(np.uint16)
                window = (out_cfg.uint16_max / 2, float(out_cfg.uint16_max))
            images.append(
                _make_image(
                    ph,
                    series,
                    ismrmrd.IMTYPE_PHASE,
                    sidx,
                    index,
                    "Phase",
                    [*history, "PHASE"],
                    window,
                )
            )
        elif name == "uncertainty":
            unc = series.extras.get("uncertainty")
            if unc is None:
                logger.warning(
                    "method %r returned no uncertainty map; uncertainty series skipped",
                    series.method,
                )
                continue
            unc = np.abs(np.asarray(unc)).astype(np.float32)
            if unc.shape != mag.shape:
                raise DataError(f"uncertainty map {unc.shape} does not match image {mag.shape}")
            if out_cfg.dtype == "uint16":
                peak = float(mag.max())
                scale = out_cfg.uint16_max / peak if peak > 0 else 0.0
                unc = np.clip(np.round(unc * scale), 0, out_cfg.uint16_max).astype(np.uint16)
            images.append(
                _make_image(
                    unc,
                    series,
                    ismrmrd.IMTYPE_MAGNITUDE,
                    sidx,
                    index,
                    "Uncertainty",
                    [*history, "UNCERTAINTY"],
                )
            )
    return images


# --------------------------------------------------------------------------------------------
# files and streams
# --------------------------------------------------------------------------------------------
def reconstruct_stream(
    header: Any, acquisitions: Iterable[ismrmrd.Acquisition], cfg: ReconConfig
) -> Iterator[list[ismrmrd.Image]]:
    """Reconstruct a stream of acquisitions: yields the images of each group as it completes
    (on ``LAST_IN_SLICE``) and of the groups left at the end of the stream."""
    buffer = AcquisitionBuffer(header)
    for acq in acquisitions:
        for ks in buffer.add(acq):
            yield images_from_series(reconstruct(ks, cfg), cfg)
    for ks in buffer.flush():
        yield images_from_series(reconstruct(ks, cfg), cfg)


def reconstruct_file(
    path: str | Path, cfg: ReconConfig, progress: bool = True, dataset: str = "dataset"
) -> list[ismrmrd.Image]:
    """Reconstruct every group (slice, repetition, ...) of a raw ISMRMRD file.

    A tqdm progress bar over the groups is shown when ``progress`` is true.

    Raises
    ------
    DataError
        The file is not ISMRMRD raw data, is truncated, has no acquisitions, non-Cartesian
        data, NaNs, ... (the message names the file and the problem).
    """
    from tqdm.auto import tqdm

    header = read_header(path, dataset)
    groups = list(iter_kspace(path, dataset, header=header))
    images: list[ismrmrd.Image] = []
    bar = tqdm(groups, desc=Path(path).name, unit="slice", disable=not progress, leave=False)
    for ks in bar:
        try:
            series = reconstruct(ks, cfg)
        except MRPriorError as exc:
            where = ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(ks.indices).items() if v)
            raise type(exc)(f"{path}: group ({where or 'slice 0'}): {exc}") from exc
        images.extend(images_from_series(series, cfg))
    bar.close()
    return images
