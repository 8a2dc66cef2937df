"""The reconstruction pipeline: raw k-space group → image series → ISMRMRD images.

**The one path** that the CLI, the Gadgetron node, the MRD server and the benchmarks call::

    KSpace ──preprocess──▶ prewhitened, recon-matrix readout
           ──coil maps───▶ ESPIRiT (numpy or cupy, matching the device) when the method needs them
           ──planes──────▶ independent 2D problems, solved ``planes_per_batch`` at a time:
                           get_method(cfg.method)(ReconProblem [B, C, H, W], settings)
           ──crop────────▶ ImageSeries at the recon matrix size (a slice, or a volume)
           ──images──────▶ ismrmrd.Image list (magnitude + optional phase / uncertainty series)

Preprocessing happens here and only here (:func:`preprocess`): noise prewhitening with the
covariance of the group's noise scans (scaled by the dwell-time ratio of noise and imaging
samples, so whitened imaging noise has unit variance) and readout-oversampling removal.

**2D and 3D are one path** (:func:`plane_stack`). A 2D group ``[C, ky, kx]`` is one plane
``(ky, kx)``. A 3D group ``[C, kz, ky, kx]`` (readout fully sampled, undersampled in ky–kz) is
inverse-Fourier transformed along the readout, after which every readout position ``x`` is an
independent 2D problem in ``(kz, ky)`` with coil maps ``S[:, :, :, x]`` from one 3D ESPIRiT call
(what BART and the published method do). Planes are gathered, solved and scattered back
``cfg.planes_per_batch`` at a time, so besides the group's k-space the memory holds one
preprocessed copy of it (readout transformed in place), the coil maps and the image volume.
Planes whose coil maps are zero everywhere (outside the ESPIRiT support: background) are not
solved; their image is zero, which is what every SENSE-type method returns there.
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
from mrprior.io.containers import EncodedCentre, ImageSeries, KSpace
from mrprior.io.images import write_images
from mrprior.io.raw import AcquisitionBuffer, iter_kspace, read_header
from mrprior.mr.fft import fftc, ifftc
from mrprior.recon.problem import (
    ReconProblem,
    get_method,
    method_needs_csm,
    method_takes_whole_volume,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CoilMapConfig",
    "IncompleteReconstruction",
    "OutputConfig",
    "PlaneGeometry",
    "PlaneStack",
    "PriorConfig",
    "ReadoutCrop",
    "ReconConfig",
    "acquisition_buffer",
    "coil_maps",
    "default_config_path",
    "fit_matrix",
    "images_from_series",
    "load_recon_config",
    "method_settings",
    "plane_geometry",
    "plane_stack",
    "preprocess",
    "readout_reducer",
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
    """ESPIRiT settings (see :func:`mrprior.mr.espirit.espirit_maps`).

    ``encoded_fov``: with readout oversampling, calibrate from the k-space centre at the encoded
    readout (kept before the oversampling is removed) and compute the maps over the encoded
    field of view, cropped to the recon one — an object that fills the recon field of view
    along the readout (abdomen, spine, a 3D slab's planes) otherwise wraps around in the maps
    (their two readout ends meet on the recon grid).
    """

    calib_size: int = 24
    kernel_size: int = 6
    threshold: float = 0.001
    crop: float = 0.8
    encoded_fov: bool = True

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
    planes_per_batch : how many 2D planes one method call solves (a 3D volume has one plane per
        readout position); bounds the working memory of 3D reconstructions.
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
    planes_per_batch: int = 16
    coil_maps: CoilMapConfig = field(default_factory=CoilMapConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> None:
        get_method(self.method)  # ConfigError listing the valid names
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.planes_per_batch < 1:
            raise ConfigError(f"planes_per_batch must be >= 1, got {self.planes_per_batch}")


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


#: Partitions processed together when a 3D volume is preprocessed (bounds temporary memory).
PREPROCESS_CHUNK = 8


def _whitening(ks: KSpace) -> np.ndarray | None:
    """Whitening matrix ``[C, C]`` from the group's noise scans (dwell-time scaled), or None."""
    from mrprior.mr.noise import noise_covariance, whitening_matrix

    try:
        cov = np.asarray(noise_covariance(ks.noise))
        if ks.noise_dwell_us and ks.dwell_us:
            # noise variance scales with bandwidth = 1 / dwell time
            cov = cov * (ks.noise_dwell_us / ks.dwell_us)
        return np.asarray(whitening_matrix(cov)).astype(np.complex64)
    except DataError as exc:  # e.g. an all-zero noise scan or a dead channel
        warnings.warn(f"noise scan unusable, data not prewhitened: {exc}", stacklevel=3)
        return None


def preprocess(kspace: KSpace, cfg: ReconConfig) -> KSpace:
    """Prewhiten (when ``cfg.prewhiten`` and noise scans exist) and remove readout
    oversampling (when ``cfg.remove_oversampling``); each step runs at most once per KSpace.

    Works with numpy or cupy data (whatever ``kspace`` holds). The result never shares its
    data with ``kspace`` when a step ran. A 3D volume is processed
    :data:`PREPROCESS_CHUNK` partitions at a time into one output array, so the temporary
    memory is a few partitions, not a second and third copy of the volume.
    """
    ks = kspace
    w = None
    if cfg.prewhiten and ks.noise is not None and not ks.prewhitened:
        w = _whitening(ks)
    nx_recon = ks.encoding.recon_matrix[0]
    crop = cfg.remove_oversampling and not ks.oversampling_removed and ks.data.shape[-1] != nx_recon
    if crop and ks.data.shape[-1] < nx_recon:
        raise DataError(
            f"readout has {ks.data.shape[-1]} samples, fewer than the recon matrix "
            f"x = {nx_recon}: cannot remove oversampling"
        )
    if w is None and not crop:
        return ks
    from mrprior.mr.noise import prewhiten
    from mrprior.mr.oversampling import remove_readout_oversampling

    xp = ks.xp
    w_xp = None if w is None else xp.asarray(w)
    centre = ks.encoded_centre
    if crop and centre is None and cfg.coil_maps.encoded_fov:
        centre = encoded_centre(ks, cfg.coil_maps.calib_size)
    if centre is not None and w_xp is not None:
        centre = centre.replace(prewhiten(centre.data, w_xp).astype(np.complex64, copy=False))

    def run(chunk: Any) -> Any:
        if w_xp is not None:
            chunk = prewhiten(chunk, w_xp)
        if crop:
            chunk = remove_readout_oversampling(chunk, nx_recon)
        return chunk.astype(np.complex64, copy=False)

    if ks.is_3d:
        c, nz, ny, _ = ks.data.shape
        out = xp.empty((c, nz, ny, nx_recon if crop else ks.data.shape[-1]), np.complex64)
        for z0 in range(0, nz, PREPROCESS_CHUNK):
            out[:, z0 : z0 + PREPROCESS_CHUNK] = run(ks.data[:, z0 : z0 + PREPROCESS_CHUNK])
    else:
        out = run(ks.data)
    changes: dict[str, Any] = {"data": out, "encoded_centre": centre}
    if w is not None:
        changes["prewhitened"] = True
    if crop:
        changes.update(
            mask=_resample_mask(ks.mask, nx_recon),
            calib=_resample_mask(ks.calib, nx_recon),
            oversampling_removed=True,
        )
    return ks.replace(**changes)


def encoded_centre(ks: KSpace, size: int) -> EncodedCentre:
    """The central ``size`` lines (and partitions) of ``ks``'s k-space at its own (encoded)
    readout, as the buffer keeps them when it removes the oversampling line by line; the box
    also covers every flagged calibration line about the centre."""
    spatial = ks.data.shape[1:-1]
    calib = to_numpy(ks.calib).any(axis=-1)
    start, index = [], []
    for a, n in enumerate(spatial):
        rows = np.flatnonzero(calib.any(axis=tuple(b for b in range(len(spatial)) if b != a)))
        reach = int(np.max(np.abs(rows - n // 2))) if rows.size else 0
        c = min(n, max(size, 2 * reach + 1))
        start.append(n // 2 - c // 2)
        index.append(slice(n // 2 - c // 2, n // 2 - c // 2 + c))
    return EncodedCentre(ks.data[(slice(None), *index)].copy(), tuple(start))


@dataclass(frozen=True)
class ReadoutCrop:
    """Readout-oversampling removal of one line at a time (a
    :class:`~mrprior.io.raw.ReadoutReducer`): the same
    :func:`~mrprior.mr.oversampling.remove_readout_oversampling` and mask resampling that
    :func:`preprocess` applies to a whole group. ``keep_centre`` lines (and partitions) about
    the k-space centre are also kept at the encoded readout (for the coil maps)."""

    size: int
    keep_centre: int = 0

    def __call__(self, line: np.ndarray) -> np.ndarray:
        from mrprior.mr.oversampling import remove_readout_oversampling

        return remove_readout_oversampling(line, self.size)

    def mask(self, covered: np.ndarray) -> np.ndarray:
        return _resample_mask(covered, self.size)


def readout_reducer(header: Any, cfg: ReconConfig) -> ReadoutCrop | None:
    """The per-line readout reduction the pipeline's buffers apply (None when the config keeps
    the oversampling or the header has none)."""
    from mrprior.io.containers import EncodingInfo
    from mrprior.io.raw import parse_header

    enc = EncodingInfo.from_header(parse_header(header))
    nx_enc, nx = enc.encoded_matrix[0], enc.recon_matrix[0]
    if not cfg.remove_oversampling or nx_enc <= nx:
        return None
    return ReadoutCrop(nx, cfg.coil_maps.calib_size if cfg.coil_maps.encoded_fov else 0)


def acquisition_buffer(header: Any, cfg: ReconConfig) -> AcquisitionBuffer:
    """The :class:`~mrprior.io.raw.AcquisitionBuffer` every pipeline entry point (files,
    streams, the node) fills: it removes the readout oversampling line by line when ``cfg``
    asks for it, so a buffered 3D volume takes its recon-size memory, not twice that."""
    return AcquisitionBuffer(header, readout=readout_reducer(header, cfg))


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
def coil_maps(kspace: KSpace, cfg: ReconConfig, device: torch.device) -> Any:
    """ESPIRiT coil maps from every acquired line of ``kspace`` (imaging and calibration), in
    one call, computed with numpy or cupy to match the device.

    Returns ``[C, ky, kx]`` for a 2D group and ``[C, z, y, x]`` for a 3D volume (from the 3D
    calibration region), on the array module of ``device`` (numpy or cupy, not torch: the
    planes take their slices of the maps batch by batch).

    Raises
    ------
    DataError
        No calibration region, or maps that are zero everywhere (nothing to reconstruct).
    """
    from mrprior.mr.espirit import espirit_maps

    ks = kspace.to(device)
    xp = ks.xp
    sampled = xp.logical_or(ks.mask, ks.calib)
    c = cfg.coil_maps
    # the buffer leaves unacquired positions zero: no masked copy of a 3D volume is needed
    data = ks.data if ks.is_3d else ks.data * sampled[None]
    centre = ks.encoded_centre if c.encoded_fov else None
    maps = espirit_maps(
        data,
        calib=c.calib_size,
        kernel=c.kernel_size,
        threshold=c.threshold,
        crop=c.crop,
        mask=sampled,
        encoded=None if centre is None else centre.data,
        encoded_start=() if centre is None else centre.start,
    )
    if not bool(xp.any(maps)):
        raise DataError(
            "ESPIRiT coil maps are zero everywhere (no eigenvalue above coil_maps.crop = "
            f"{c.crop}): the calibration region is too small for kernel_size = {c.kernel_size}, "
            "or crop is too high"
        )
    return maps


@dataclass
class PlaneStack:
    """A group's k-space as a stack of independent 2D problems (see the module docstring).

    Attributes
    ----------
    hybrid : complex64, numpy or cupy. 2D: ``[C, ky, kx]`` (one plane). 3D: ``[C, kz, ky, x]``,
        k-space in ``(kz, ky)`` and image space along the readout.
    maps : coil maps shaped like ``hybrid`` (image space on all axes), or None.
    mask, calib : bool ``[H, W]`` shared by every plane (``(ky, kx)`` or ``(kz, ky)``).
    data_scale : BART's data scale of the group's whole (2D or 3D) k-space as the methods see
        it (:func:`~mrprior.recon.fista.bart_scaling`, computed before the readout transform),
        shared by every plane: ``ReconProblem.data_scale``.
    """

    hybrid: Any
    maps: Any
    mask: Any
    calib: Any
    is_volume: bool = field(init=False)
    count: int = field(init=False)  # planes: 1 for a 2D group, the readout length for a volume
    data_scale: float | None = None

    def __post_init__(self) -> None:
        self.is_volume = self.hybrid.ndim == 4
        self.count = int(self.hybrid.shape[-1]) if self.is_volume else 1

    def planes(
        self,
        start: int,
        stop: int,
        device: torch.device,
        which: np.ndarray | None = None,
        release: bool = False,
    ) -> tuple[Any, Any]:
        """k-space ``[B, C, H, W]`` and coil maps ``[B, C, H, W]`` (or None) of planes
        ``start:stop`` (of those, the indices ``which`` when given) as torch tensors on
        ``device`` (gathered copies). ``release``: drop the stack's own arrays as soon as each
        is gathered (when every plane is taken at once), so that a volume is held once."""

        def take(name: str) -> torch.Tensor | None:
            a = getattr(self, name)
            if a is None:
                return None
            if release:
                setattr(self, name, None)
            if not self.is_volume:
                return to_torch(a, device)[None]
            t = to_torch(a[..., start:stop], device)
            if which is not None and len(which) < stop - start:
                t = t[..., torch.as_tensor(which, device=t.device)]
            return t.permute(3, 0, 1, 2).contiguous()

        return take("hybrid"), take("maps")

    def active(self, start: int, stop: int) -> np.ndarray:
        """bool ``[B]``: planes with non-zero coil maps (all True without maps)."""
        if self.maps is None:
            return np.ones(stop - start, bool)
        if not self.is_volume:
            return np.array([bool(get_xp(self.maps).any(self.maps))])
        sub = self.maps[..., start:stop]
        return to_numpy(get_xp(sub).any(sub != 0, axis=(0, 1, 2)))


def plane_stack(ks: KSpace, maps: Any, use_calib: bool, copy: bool = False) -> PlaneStack:
    """The independent 2D problems of a preprocessed group.

    2D: the group itself, unsampled positions zeroed. 3D: the inverse centred FFT along the
    readout is applied in place, :data:`PREPROCESS_CHUNK` partitions at a time, to ``ks.data``
    (pass ``copy=True`` when ``ks`` shares its data with someone: :func:`preprocess` copies
    whenever it runs). The plane mask is the readout centre's sampling, which is the sampling
    of every readout position when the readout is fully sampled (a partial echo is zero-filled
    along the readout and only blurs x).

    Parameters
    ----------
    ks : preprocessed group.
    maps : its coil maps (from :func:`coil_maps`) or None.
    use_calib : calibration-only lines join the measured data (:func:`use_calib_as_data`).
    copy : transform a copy of a 3D volume instead of ``ks.data`` itself.
    """
    from mrprior.recon.fista import bart_scaling

    sampled = ks.mask | ks.calib if use_calib else ks.mask
    if not ks.is_3d:
        data2 = ks.data * sampled[None]
        scale = bart_scaling(to_torch(data2), to_torch(sampled))
        return PlaneStack(data2, maps, sampled, ks.calib, scale)
    xp = ks.xp
    centre = ks.data.shape[-1] // 2
    mask2 = sampled[:, :, centre]
    calib2 = ks.calib[:, :, centre]
    # the k-space every plane sees: the readout centre's (kz, ky) sampling at every x
    scale = bart_scaling(
        to_torch(ks.data), to_torch(xp.broadcast_to(mask2[..., None], sampled.shape))
    )
    data = ks.data.copy() if copy else ks.data
    for z0 in range(0, data.shape[1], PREPROCESS_CHUNK):
        chunk = data[:, z0 : z0 + PREPROCESS_CHUNK]
        chunk *= mask2[None, z0 : z0 + PREPROCESS_CHUNK, :, None]
        data[:, z0 : z0 + PREPROCESS_CHUNK] = ifftc(chunk, ndim=1)
    return PlaneStack(data, maps, xp.asarray(mask2), xp.asarray(calib2), scale)


def _fit_volume(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Bring the trailing axes of ``x`` to ``shape`` (``(ny, nx)`` or ``(nz, ny, nx)``)."""
    if len(shape) == 3:
        x = _fit_axis(x, shape[0], -3)
    return fit_matrix(x, shape[-2], shape[-1])


def reconstruct(kspace: KSpace, cfg: ReconConfig) -> ImageSeries:
    """Reconstruct one k-space group into an :class:`ImageSeries` at the recon matrix size.

    Steps: :func:`preprocess` → ESPIRiT coil maps when the method needs them (one call, 2D or
    3D) → :func:`plane_stack` → the registered method on ``cfg.planes_per_batch`` planes at a
    time → crop / interpolate to the recon matrix. A 2D group gives an image ``[ny, nx]``, a 3D
    group a volume ``[nz, ny, nx]`` (recon matrix z, y, x).

    Raises
    ------
    DataError
        Errors of the steps (e.g. no calibration region).
    ConfigError
        Unknown method or invalid settings.
    """
    t0 = time.perf_counter()
    check_cancelled()
    device = resolve_device(cfg.device)
    method = get_method(cfg.method)
    ks = preprocess(kspace.to(device), cfg)
    t_pre = time.perf_counter()
    logger.debug("preprocessed %s in %.1f s", tuple(ks.data.shape), t_pre - t0)
    maps = coil_maps(ks, cfg, device) if method_needs_csm(cfg.method) else None
    t_csm = time.perf_counter()
    logger.debug("coil maps in %.1f s", t_csm - t_pre)
    noise_std, prewhitened = _noise_std(ks), ks.prewhitened
    stack = plane_stack(ks, maps, use_calib_as_data(cfg, ks), copy=ks.data is kspace.data)
    del ks  # the stack owns the (transformed) data now
    maps_2d = None if stack.is_volume else maps  # a volume's maps: the stack holds them alone
    del maps
    settings = method_settings(cfg)
    mask = to_torch(stack.mask, device)
    calib = to_torch(stack.calib, device)
    n, h, w = stack.count, int(mask.shape[0]), int(mask.shape[1])
    image = torch.zeros((n, h, w), dtype=torch.complex64)
    extras: dict[str, torch.Tensor] = {}
    plane_extras: dict[str, Any] = {}
    info: dict[str, Any] = {}
    solved = 0
    whole = stack.is_volume and method_takes_whole_volume(cfg.method)
    per_batch = n if whole else cfg.planes_per_batch
    for start in range(0, n, per_batch):
        stop = min(start + per_batch, n)
        in_object = stack.active(start, stop)
        active = np.flatnonzero(in_object)
        if active.size == 0:
            continue
        kdata, kmaps = stack.planes(start, stop, device, active, release=whole)
        if stack.is_volume:
            volume = torch.as_tensor(in_object, device=device) if whole else None
            problem = ReconProblem(kdata, mask, kmaps, noise_std, calib, stack.data_scale, volume)
        else:  # one plane: the unbatched form every method has always taken
            problem = ReconProblem(
                kdata[0],
                mask,
                None if kmaps is None else kmaps[0],
                noise_std,
                calib,
                stack.data_scale,
            )
        check_cancelled()
        result = method(problem, settings)
        batched = result.image.ndim == 3
        rows = torch.as_tensor(active + start)
        plane_images = result.image if batched else result.image[None]
        image[rows] = plane_images.detach().to("cpu", torch.complex64)
        for name, value in result.extras.items():
            if isinstance(value, torch.Tensor) and not batched:
                value = value[None]
            if not (isinstance(value, torch.Tensor) and tuple(value.shape[1:]) == (h, w)):
                if not stack.is_volume:  # e.g. NLINV's coil maps [C, ny, nx] of a 2D slice
                    plane_extras[name] = value[0] if isinstance(value, torch.Tensor) else value
                else:
                    logger.debug("extra %r of shape %s not kept for a volume", name, value.shape)
                continue
            if name not in extras:
                dtype = torch.complex64 if value.is_complex() else torch.float32
                extras[name] = torch.zeros((n, h, w), dtype=dtype)
            extras[name][rows] = value.detach().to("cpu", extras[name].dtype)
        if not stack.is_volume:
            info = dict(result.info)
        elif not info:  # a volume: the first batch's scalars (per-plane lists left out)
            info = {k: v for k, v in result.info.items() if not isinstance(v, list | tuple)}
        solved += int(active.size)
        logger.debug("planes %d:%d of %d done (%d solved so far)", start, stop, n, solved)
    t_rec = time.perf_counter()
    nx, ny, nz = kspace.encoding.recon_matrix
    shape = (nz, ny, nx) if stack.is_volume else (ny, nx)

    def assemble(x: torch.Tensor) -> np.ndarray:
        # planes [x, kz-image, ky-image] -> volume [z, y, x]; a 2D group is plane 0
        vol = x.permute(1, 2, 0) if stack.is_volume else x[0]
        out = to_numpy(_fit_volume(vol, shape))
        return out.astype(np.complex64 if np.iscomplexobj(out) else np.float32)

    out_extras = {name: assemble(v) for name, v in extras.items()}
    for name, value in plane_extras.items():
        if isinstance(value, torch.Tensor) and value.ndim >= 2:
            value = fit_matrix(value, ny, nx)
        arr = to_numpy(value)
        out_extras[name] = arr.astype(np.complex64 if np.iscomplexobj(arr) else np.float32)
    if "csm" not in out_extras and maps_2d is not None:
        out_extras["csm"] = to_numpy(fit_matrix(to_torch(maps_2d, "cpu"), ny, nx)).astype(
            np.complex64
        )
    info = {
        **info,
        "planes": n,
        "planes_solved": solved,
        "planes_per_batch": cfg.planes_per_batch,
        "acceleration": float(kspace.acceleration),
        "prewhitened": prewhitened,
        "device": str(device),
        "seconds_preprocess": t_pre - t0,
        "seconds_coil_maps": t_csm - t_pre,
        "seconds_method": t_rec - t_csm,
        "seconds_total": time.perf_counter() - t0,
    }
    return ImageSeries(
        image=assemble(image),
        encoding=kspace.encoding,
        reference=kspace.copy_reference(),
        indices=kspace.indices,
        extras=out_extras,
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


@dataclass(frozen=True)
class PlaneGeometry:
    """Where one 2D image of a series sits: ISMRMRD ``position`` (LPS, mm, centre of pixel
    ``(nx // 2, ny // 2)``), ``slice`` counter, ``image_index`` and slice thickness (mm)."""

    position: tuple[float, float, float]
    slice: int
    image_index: int
    thickness: float


def plane_geometry(series: ImageSeries, image_index: int | None = None) -> list[PlaneGeometry]:
    """Geometry of the 2D images of a series: one for a slice, ``nz`` for a volume.

    Conventions for a 3D volume ``[nz, ny, nx]`` (documented for scanners and viewers):

    - The reference acquisition's ``position`` is the centre of the encoded slab; partition
      image ``k`` (0-based, the volume's first axis) is centred at
      ``position + (k - nz // 2) · Δz · slice_dir``: ``k`` increases along ``slice_dir``, as
      rows increase along ``phase_dir`` and columns along ``read_dir``. The recon matrix z is
      centred in the encoded one (slab oversampling is cropped symmetrically).
    - ``Δz`` = encoded FOV z / encoded matrix z (:attr:`EncodingInfo.partition_thickness`);
      it is each image's slice thickness (``field_of_view[2]``) and the spacing between images.
    - ``slice`` = ``indices.slice · nz + k`` (slab-major, then partition), and ``image_index`` =
      ``(n - 1) · nz + k + 1`` with ``n`` the group's :meth:`EncodingInfo.image_number` (or
      ``image_index``): unique and ordered by repetition/contrast/... then slab then partition.

    A 2D slice keeps the acquisition's position and slice counter, its slice thickness is the
    recon FOV z, and ``image_index`` is ``n``.
    """
    enc = series.encoding
    base = enc.image_number(series.indices) if image_index is None else image_index
    ref = series.reference
    position = np.asarray(ref.position, dtype=np.float64)
    if not series.is_volume:
        return [
            PlaneGeometry(
                tuple(float(v) for v in position),
                int(series.indices.slice),
                base,
                float(enc.recon_fov[2]),
            )
        ]
    nz = int(series.image.shape[0])
    dz = float(enc.partition_thickness)
    direction = np.asarray(ref.slice_dir, dtype=np.float64)
    out = []
    for k in range(nz):
        pos = position + (k - nz // 2) * dz * direction
        out.append(
            PlaneGeometry(
                tuple(float(v) for v in pos),
                int(series.indices.slice) * nz + k,
                (base - 1) * nz + k + 1,
                dz,
            )
        )
    return out


def _make_image(
    array: np.ndarray,
    series: ImageSeries,
    geometry: PlaneGeometry,
    image_type: int,
    series_index: int,
    role: str,
    history: list[str],
    window: tuple[float, float],
) -> ismrmrd.Image:
    fov = series.field_of_view
    img = ismrmrd.Image.from_array(
        np.ascontiguousarray(array),
        acquisition=series.reference,
        transpose=False,
        image_type=image_type,
        image_index=geometry.image_index,
        image_series_index=series_index,
        field_of_view=(float(fov[0]), float(fov[1]), geometry.thickness),
    )
    img.position[:] = geometry.position
    img.slice = geometry.slice
    center, width = window
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


def _series_window(values: np.ndarray) -> tuple[float, float]:
    """One window for a whole series (every image of a volume is displayed alike)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size > 1 << 20:  # percentiles of a strided subsample are as good and much faster
        flat = flat[:: flat.size // (1 << 20)]
    return _window(flat)


def _to_uint16(values: np.ndarray, peak: float, top: int) -> np.ndarray:
    scale = top / peak if peak > 0 else 0.0
    return np.clip(np.round(values * scale), 0, top).astype(np.uint16)


def images_from_series(
    series: ImageSeries,
    cfg: ReconConfig,
    series_index_start: int | None = None,
    image_index: int | None = None,
) -> list[ismrmrd.Image]:
    """ISMRMRD images of one :class:`ImageSeries`: magnitude, then ``cfg.output.extra_series``.

    A 2D slice gives one image per series; a 3D volume ``[nz, ny, nx]`` gives ``nz`` 2D images
    per series, one per partition, in partition order, with the geometry of
    :func:`plane_geometry` (position per image, slice counter, image index, slice thickness),
    which is what Gadgetron, FIRE clients and scanners expect of a 3D series sent as slices.

    Series numbering: magnitude ``series_index_start`` (default ``cfg.output.series_index_start``),
    extra series ``k`` of ``EXTRA_SERIES`` (phase, uncertainty) at ``start + 1 + k`` regardless of
    which are enabled. ``image_index`` (the group's number) defaults to
    :meth:`EncodingInfo.image_number` of the series' indices (unique per slice/repetition/...).
    Directions, table position, time stamps and counters are copied from the reference
    acquisition; ``field_of_view`` is the recon space FOV in x and y and the slice thickness in
    z; meta attributes: DataRole, WindowCenter, WindowWidth (one window per series, over the
    whole volume), ImageProcessingHistory, ImageComment, SequenceDescriptionAdditional,
    ``Keep_image_geometry``, ImageRowDir / ImageColumnDir.

    Magnitude images are float32, or uint16 scaled so the maximum of the slice or volume is
    ``uint16_max``. Phase is float32 radians in [-π, π], or uint16 mapping [-π, π] to
    [0, uint16_max]. Uncertainty uses the magnitude's scale.
    """
    out_cfg = cfg.output
    start = out_cfg.series_index_start if series_index_start is None else series_index_start
    geometry = plane_geometry(series, image_index)
    history = ["MRPRIOR", series.method.upper()]
    mag = np.abs(series.image).astype(np.float32)
    peak = float(mag.max()) if mag.size else 0.0
    uint16 = out_cfg.dtype == "uint16"
    top = out_cfg.uint16_max
    # (values [nz?, ny, nx], image type, series index, role, history, window)
    planned: list[tuple[np.ndarray, int, int, str, list[str], tuple[float, float]]] = []
    mag_out = _to_uint16(mag, peak, top) if uint16 else mag
    planned.append(
        (mag_out, ismrmrd.IMTYPE_MAGNITUDE, start, "Image", history, _series_window(mag_out))
    )
    for name in out_cfg.extra_series:
        sidx = start + 1 + EXTRA_SERIES.index(name)
        if name == "phase":
            ph = np.angle(series.image).astype(np.float32)
            window = (0.0, 2 * np.pi)
            if uint16:
                ph = np.round((ph + np.pi) / (2 * np.pi) * top).astype(np.uint16)
                window = (top / 2, float(top))
            planned.append((ph, ismrmrd.IMTYPE_PHASE, sidx, "Phase", [*history, "PHASE"], window))
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
            if uint16:
                unc = _to_uint16(unc, peak, top)
            planned.append(
                (
                    unc,
                    ismrmrd.IMTYPE_MAGNITUDE,
                    sidx,
                    "Uncertainty",
                    [*history, "UNCERTAINTY"],
                    _series_window(unc),
                )
            )
    images = []
    for values, image_type, sidx, role, hist, window in planned:
        planes = values if series.is_volume else values[None]
        for plane, geo in zip(planes, geometry, strict=True):
            images.append(_make_image(plane, series, geo, image_type, sidx, role, hist, window))
    return images


# --------------------------------------------------------------------------------------------
# files and streams
# --------------------------------------------------------------------------------------------
class IncompleteReconstruction(DataError):
    """Some groups of a file could not be reconstructed (bad data); ``images`` holds those of
    every other group, so a caller can still keep them (nothing is lost)."""

    def __init__(self, message: str, images: list[ismrmrd.Image]) -> None:
        super().__init__(message)
        self.images = images


def reconstruct_stream(
    header: Any, acquisitions: Iterable[ismrmrd.Acquisition], cfg: ReconConfig
) -> Iterator[list[ismrmrd.Image]]:
    """Reconstruct a stream of acquisitions: yields the images of each group as it completes
    (see :class:`~mrprior.io.raw.AcquisitionBuffer`) and of the groups left at the end of the
    stream; then raises :class:`DataError` if groups had bad data."""
    buffer = acquisition_buffer(header, cfg)
    for acq in acquisitions:
        for ks in buffer.add(acq):
            yield images_from_series(reconstruct(ks, cfg), cfg)
    for ks in buffer.flush():
        yield images_from_series(reconstruct(ks, cfg), cfg)
    buffer.raise_errors()


def reconstruct_file(
    path: str | Path, cfg: ReconConfig, progress: bool = True, dataset: str = "dataset"
) -> list[ismrmrd.Image]:
    """Reconstruct every group (slice, repetition, 3D volume, ...) of a raw ISMRMRD file.

    Groups are reconstructed as the file is read (one group's k-space in memory at a time). A
    tqdm progress bar over the groups is shown when ``progress`` is true.

    Raises
    ------
    DataError
        The file is not ISMRMRD raw data, is truncated, has no acquisitions, non-Cartesian
        data, ... (the message names the file and the problem).
    IncompleteReconstruction
        Some groups had bad data (NaN, lines or partitions outside the encoding, missing
        partitions, ...): the message names them; ``.images`` holds every other group's images.
    """
    from tqdm.auto import tqdm

    header = read_header(path, dataset)
    images: list[ismrmrd.Image] = []
    bar = tqdm(desc=Path(path).name, unit="group", disable=not progress, leave=False)
    groups = iter_kspace(path, dataset, header=header, readout=readout_reducer(header, cfg))
    try:
        while True:
            try:
                ks = next(groups)
            except StopIteration:
                break
            except DataError as exc:  # raised by the reader after every good group
                if images:
                    raise IncompleteReconstruction(str(exc), images) from None
                raise
            try:
                series = reconstruct(ks, cfg)
            except MRPriorError as exc:
                raise type(exc)(f"{path}: group ({ks.indices.label()}): {exc}") from exc
            del ks
            images.extend(images_from_series(series, cfg))
            bar.update()
    finally:
        bar.close()
    return images
