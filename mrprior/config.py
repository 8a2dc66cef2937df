"""Typed job configurations loaded from YAML and validated on load.

A config is a (possibly nested) dataclass. :func:`from_dict` rejects unknown keys (naming them and
listing the valid ones), checks ``Literal`` choices, coerces numbers, and calls the dataclass's
``validate()`` when it has one (range checks). :func:`apply_overrides` applies flat
``name=value`` strings (Gadgetron XML ``<property>`` values, CLI ``--set``), matched by field name
at any nesting depth.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from mrprior.errors import ConfigError

T = TypeVar("T")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors) or f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "1",
            "yes",
            "on",
            "false",
            "0",
            "no",
            "off",
        ):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if f != f:
            raise ConfigError(f"{key}: NaN is not allowed")
        return f
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build and validate config dataclass ``cls`` from a mapping; unknown keys are an error."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + u for u in unknown)}; valid keys: "
            f"{', '.join(prefix + k for k in fields)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Load config ``cls`` from a YAML file (an empty file gives the defaults)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain YAML-able data."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def apply_overrides(cfg: T, overrides: dict[str, Any], strict: bool = True) -> T:
    """Return a copy of ``cfg`` with flat ``name: value`` overrides applied.

    Names may be dotted (``prior.name``) or bare field names found anywhere in the tree
    (first match, breadth-first). With ``strict`` an unmatched name raises :class:`ConfigError`.
    """
    data = to_dict(cfg)

    def find(d: dict[str, Any], name: str) -> dict[str, Any] | None:
        queue = [d]
        while queue:
            cur = queue.pop(0)
            if name in cur:
                return cur
            queue.extend(v for v in cur.values() if isinstance(v, dict))
        return None

    for name, value in overrides.items():
        parts = name.split(".")
        target: dict[str, Any] | None = data
        for p in parts[:-1]:
            target = target.get(p) if isinstance(target, dict) else None
        if isinstance(target, dict) and parts[-1] in target:
            target[parts[-1]] = value
            continue
        holder = find(data, parts[-1]) if len(parts) == 1 else None
        if holder is None:
            if strict:
                raise ConfigError(f"unknown setting {name!r}")
            continue
        holder[parts[-1]] = value
    return from_dict(type(cfg), data)
