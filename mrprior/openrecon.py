"""OpenRecon (Siemens): the container label and the mapping of its UI parameters to recon settings.

The label (``mrprior/configs/openrecon_label.json``; ``docker/openrecon/OpenReconLabel.json``
links to it) follows OpenRecon label schema 1.1.0 (``docker/openrecon/OpenReconSchema_1.1.0.json``).
Its ``parameters`` are what the scanner's UI offers; at run time the scanner connects to port
9002 with config ``openrecon`` and sends their values as a JSON TEXT message
``{"parameters": {"<id>": <value>, ...}}``. :func:`openrecon_overrides` validates every value
against its label definition (type, range, choices) and turns the set into
:class:`~mrprior.pipeline.ReconConfig` overrides; a bad value is a
:class:`~mrprior.errors.ConfigError` naming the parameter.

Mapping (every label parameter is used):

=============  =================================================================================
parameter      recon setting
=============  =================================================================================
config         selects this mapping (only ``openrecon``)
method         ``method``
prior          ``prior.name`` (prior-* methods)
strength       × the method's tuned regularization: ``settings.lam`` of ``l1`` (0.01),
               ``settings.kappa`` of ``prior-pics`` (0.35) / ``prior-nlinv`` (0.5); unused
               otherwise.
               At 1.0 prior-PICS chooses κ from the data on a 3D volume (``kappa_search``);
               any other value fixes κ (``settings.kappa_search: never``): the user's choice
iterations     ``settings.max_iterations`` (sense, l1), ``settings.iterations`` (prior-pics,
               prior-nlinv), ``settings.levels`` (prior-sample); 0 keeps the default
samples        ``settings.num_samples`` (prior-sample)
seed           ``seed``
device         ``device``
prewhiten      ``prewhiten``
calibsize      ``coil_maps.calib_size``
phase          ``output.extra_series`` gets ``phase``
uncertainty    ``output.extra_series`` gets ``uncertainty`` (prior-sample)
seriesindex    ``output.series_index_start``
dtype          ``output.dtype`` (uint16 images are scaled to 0..4095)
=============  =================================================================================
"""

from __future__ import annotations

import functools
import json
import math
from importlib import resources
from typing import Any

from mrprior.errors import ConfigError

__all__ = [
    "CONFIG_NAME",
    "LABEL_KEY",
    "label",
    "label_parameters",
    "openrecon_overrides",
    "parse_parameter",
]

#: The config name the scanner sends.
CONFIG_NAME = "openrecon"
#: Docker label key that carries the base64 of the label JSON.
LABEL_KEY = "com.siemens-healthineers.magneticresonance.openrecon.metadata:1.1.0"

#: Tuned regularization each method's ``strength = 1`` stands for: (setting, value); ``None``:
#: the shipped default of ``mrprior/configs/prior_methods.yaml``.
_STRENGTH = {"l1": ("lam", 0.01), "prior-pics": ("kappa", None), "prior-nlinv": ("kappa", None)}
#: The setting ``iterations`` sets, per method.
_ITERATIONS = {
    "sense": "max_iterations",
    "l1": "max_iterations",
    "prior-pics": "iterations",
    "prior-nlinv": "iterations",
    "prior-sample": "levels",
}


@functools.cache
def label() -> dict[str, Any]:
    """The OpenRecon label (parsed JSON)."""
    text = (resources.files("mrprior") / "configs" / "openrecon_label.json").read_text("utf-8")
    return json.loads(text)


def label_parameters() -> dict[str, dict[str, Any]]:
    """The label's parameter definitions by id, in label order."""
    return {p["id"]: p for p in label()["parameters"]}


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_parameter(definition: dict[str, Any], value: Any) -> Any:
    """Check ``value`` against a label parameter ``definition``; returns it as a Python value.

    Values may arrive as JSON numbers/booleans or as strings (``"1.5"``, ``"true"``).

    Raises
    ------
    ConfigError
        Wrong type, out of range, or not one of the choices; the message names the parameter.
    """
    pid, kind = definition["id"], definition["type"]
    where = f"OpenRecon parameter {pid!r}"
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"{where}: {value!r} is not a boolean (true or false)")
    if kind == "choice":
        ids = [v["id"] for v in definition["values"]]
        if str(value) not in ids:
            raise ConfigError(f"{where}: {value!r} is not one of {ids}")
        return str(value)
    if kind == "string":
        return str(value)
    if kind in ("int", "double"):
        number: float | int
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if kind == "int":
                if not number.is_integer():
                    raise ValueError
                number = int(number)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{where}: {value!r} is not a valid {kind}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: {value!r} is not finite")
        lo, hi = definition["minimum"], definition["maximum"]
        if not lo <= number <= hi:
            raise ConfigError(f"{where}: {value!r} is outside [{lo}, {hi}]")
        return number
    raise ConfigError(f"{where}: unsupported parameter type {kind!r}")


def openrecon_overrides(parameters: dict[str, Any]) -> dict[str, Any]:
    """Recon-setting overrides for the UI parameter values the scanner sent.

    Parameters missing from ``parameters`` take their label default; ids the label does not
    define are ignored (the scanner may send more, e.g. ``customconfig``).

    Returns
    -------
    dict
        Flat overrides for :func:`mrprior.pipeline.load_recon_config` (``settings.<key>`` for
        method settings).

    Raises
    ------
    ConfigError
        A value that does not fit its parameter (named in the message).
    """
    defs = label_parameters()
    values = {pid: parse_parameter(d, d["default"]) for pid, d in defs.items()}
    for pid, raw in parameters.items():
        if pid in defs:
            values[pid] = parse_parameter(defs[pid], raw)
    if values["config"] != CONFIG_NAME:
        raise ConfigError(
            f"OpenRecon parameter 'config': {values['config']!r} is not {CONFIG_NAME!r}"
        )
    method = values["method"]
    out: dict[str, Any] = {
        "method": method,
        "prior.name": values["prior"],
        "seed": values["seed"],
        "device": values["device"],
        "prewhiten": values["prewhiten"],
        "coil_maps.calib_size": values["calibsize"],
        "output.series_index_start": values["seriesindex"],
        "output.dtype": values["dtype"],
    }
    extra = [name for name in ("phase", "uncertainty") if values[name]]
    if method != "prior-sample" and "uncertainty" in extra:
        extra.remove("uncertainty")  # only posterior sampling yields an uncertainty map
    out["output.extra_series"] = extra
    if method in _STRENGTH:
        key, base = _STRENGTH[method]
        if base is None:
            from mrprior.recon.prior_methods import default_settings  # torch: only when needed

            base = float(default_settings()[method][key])
        out[f"settings.{key}"] = base * values["strength"]
        if method == "prior-pics" and values["strength"] != 1.0:
            out["settings.kappa_search"] = "never"  # a chosen strength is not searched away
    if values["iterations"] and method in _ITERATIONS:
        out[f"settings.{_ITERATIONS[method]}"] = values["iterations"]
    if method == "prior-sample":
        out["settings.num_samples"] = values["samples"]
    return out
