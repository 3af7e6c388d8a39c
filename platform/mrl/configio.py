"""Loading typed, frozen dataclass configs from YAML files plus `key=value` overrides.

Every stage has one config dataclass (see `mrl.config`). A file is parsed, overrides are applied on the
nested dict (dotted keys), then the dict is turned into the dataclass tree: unknown keys and values of the
wrong type are rejected here with the field's dotted name; each dataclass's `__post_init__` checks ranges.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is invalid. The message names the field, the value and what is accepted."""


def check(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`: the one way config classes reject a value."""
    if not ok:
        raise ConfigError(message)


def registered(name: str, value: str, registry) -> None:
    """`value` must be a name in `registry` (an `mrl.registry.Registry`), checked when the config is built: an
    encoder, head, loss, index kind or search mode registered by any module (even after this one is imported) is
    accepted."""
    check(value in registry, f"{name} {value!r} is not accepted; choose one of {list(registry)}")


def positive(name: str, value: int | float | None, allow_none: bool = False) -> None:
    """`value` must be > 0 (or None, when `allow_none`)."""
    if value is None and allow_none:
        return
    check(value is not None and value > 0, f"{name} must be > 0, got {value!r}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse `a.b=value` strings into a nested dict; values are read as YAML (`3`, `[8, 16]`, `null`).

    Args:
        items: command-line overrides.

    Returns:
        Nested dict of overrides.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.epochs=2)")
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Return `base` updated by `extra`, recursing into nested dicts."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(tp: Any) -> str:
    """How a type reads in an error message: `true/false`, `one of ['auto']`, `null`, `a number`."""
    if typing.get_origin(tp) is typing.Literal:
        return f"one of {list(typing.get_args(tp))}"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if tp in names:
        return names[tp]
    if typing.get_origin(tp) in (list, tuple):
        return "a list"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check `value` against the annotation `tp`, converting where it is lossless (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), name)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{name}: {value!r} is not accepted; choose one of {list(allowed)}")
        return value
    if origin in (tuple, list):
        return _coerce_sequence(value, origin, typing.get_args(tp), name)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2:
            return {_coerce(k, args[0], name): _coerce(v, args[1], f"{name}.{k}") for k, v in value.items()}
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{name}.")
    return _coerce_scalar(value, tp, name)


def _coerce_union(value: Any, args: tuple, name: str) -> Any:
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:  # Optional[X]: X's own message, which names the bad element
        return _coerce(value, options[0], name)
    lengths = [_fixed_length(a) for a in options]
    if isinstance(value, (list, tuple)) and None not in lengths:  # tuples told apart by length, e.g. 2 or 3 items
        fits = [a for a, n in zip(options, lengths) if n == len(value)]
        if len(fits) == 1:  # the one shape of that length: its own message names the bad item
            return _coerce(value, fits[0], name)
        if not fits:
            shapes = " or ".join(f"{n} items ({', '.join(_describe(t) for t in typing.get_args(a))})"
                                 for a, n in zip(options, lengths))
            raise ConfigError(f"{name}: expected {shapes}, got {list(value)!r}")
    for arg in options:
        try:
            return _coerce(value, arg, name)
        except ConfigError:
            pass
    raise ConfigError(f"{name}: {value!r} is not accepted; expected {' or '.join(_describe(a) for a in args)}")


def _fixed_length(tp: Any) -> int | None:
    """The item count of a fixed-length tuple annotation (tuple[X, Y] -> 2), else None."""
    args = typing.get_args(tp)
    return len(args) if typing.get_origin(tp) is tuple and args and args[-1] is not Ellipsis else None


def _coerce_sequence(value: Any, origin: type, args: tuple, name: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name}: expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length: tuple[X, Y]
        if len(value) != len(args):
            raise ConfigError(f"{name}: expected {len(args)} items ({', '.join(_describe(a) for a in args)}), "
                              f"got {list(value)!r}")
        return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    item_tp = args[0] if args else Any
    items = [_coerce(v, item_tp, f"{name}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_scalar(value: Any, tp: Any, name: str) -> Any:
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        return float(value)
    expected = {int: "an integer", bool: "true or false", str: "a string"}
    if tp in expected and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{name}: expected {expected[tp]}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build the dataclass `cls` from a nested dict, rejecting unknown keys and wrong types.

    Args:
        cls: a dataclass type whose fields may themselves be dataclasses.
        data: the values; missing fields take their defaults.
        prefix: dotted path of `cls` inside the whole config, used in error messages.

    Returns:
        The validated instance (its `__post_init__` has run).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; accepted keys here: {sorted(fields)}"
        )
    kwargs = {key: _coerce(value, hints[key], prefix + key) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # __post_init__ messages name fields relative to `cls`; add where `cls` sits in the whole config.
        # Errors already raised by a nested from_dict carry their full path (they start with `prefix`).
        if prefix and not str(exc).startswith(prefix):
            raise ConfigError(f"{prefix}{exc}") from None
        raise


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists (for YAML, JSON, MLflow params and Ray payloads)."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys (MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from a YAML file (optional) and `key=value` overrides, validating everything.

    Args:
        cls: the stage's config dataclass.
        path: YAML file; None means defaults only.
        overrides: `a.b=value` strings applied after the file.

    Returns:
        The validated config.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or out-of-range value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
        data = loaded
    data = deep_merge(data, parse_overrides(overrides or []))
    return from_dict(cls, data)
