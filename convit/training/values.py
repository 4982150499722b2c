"""Reading values into a run's settings: YAML and command-line text to each key's type, model arguments checked."""

from __future__ import annotations

import difflib
import inspect
import types
import typing

import yaml

from ..errors import UserError
from .schema import FIELDS, HINTS, RESERVED_KWARGS


class ConfigError(UserError, ValueError):
    """A configuration problem the user can fix (bad key, bad value, bad recipe)."""


def _base_type(name: str):
    hint = HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_scalar(text: str):
    """A command-line value as YAML would read it (numbers, booleans, null), else the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def coerce(name: str, value):
    """Convert a YAML or command-line value to the type of field ``name``; YAML booleans are not numbers."""
    if name not in FIELDS:
        raise ConfigError(unknown_key_message(name))
    kind = _base_type(name)
    optional = type(None) in typing.get_args(HINTS[name])
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ConfigError(f"config key '{name}' cannot be null")
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                return _parse_bool(value)
            raise ValueError("expected true or false")
        if kind is dict:
            if isinstance(value, str):
                return parse_kwargs(value)
            if not isinstance(value, dict):
                raise ValueError("expected a mapping")
            return dict(value)
        if typing.get_origin(kind) is list:
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or any(isinstance(v, bool) for v in items):
                raise ValueError("expected a list of integers")
            out = [float(v) for v in items]
            if any(not v.is_integer() for v in out):
                raise ValueError("expected integers")
            return [int(v) for v in out]
        if typing.get_origin(kind) is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            if len(items) != 2 or any(isinstance(v, bool) for v in items):
                raise ValueError("expected two numbers")
            return tuple(float(v) for v in items)
        if isinstance(value, bool):
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, not a boolean")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("expected an integer")
        if kind is int and isinstance(value, str):
            return int(value)
        if kind is float and isinstance(value, str):
            return float(value)
        return kind(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key '{name}': cannot use {short(value)} ({str(e)[:80]})") from None


def parse_kwargs(text: str) -> dict:
    """``key=value,key=value`` (values read as YAML scalars) as a dict."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {item!r}")
        out[key.strip()] = parse_scalar(value.strip())
    return out


def unknown_key_message(name: str, valid=None, where: str = "config key") -> str:
    """``unknown config key 'x'; did you mean 'y'?`` with a pointer to the valid keys."""
    valid = FIELDS if valid is None else valid
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown {where} '{name}'; {hint}valid: {', '.join(sorted(valid))}"


def model_arguments() -> set[str]:
    """The names ``model_kwargs`` may hold: ConViT's constructor arguments the recipe may set."""
    from ..model import ConViT

    return set(inspect.signature(ConViT).parameters) - RESERVED_KWARGS


def check_model_kwargs(kwargs: dict, where: str) -> dict:
    """``kwargs`` unchanged, or a ConfigError naming the first key ConViT does not take or a value of the
    wrong kind (a word where the default is a number, a number where it is a boolean)."""
    from ..model import ConViT

    valid = model_arguments()
    defaults = {n: p.default for n, p in inspect.signature(ConViT).parameters.items()}
    for key, value in kwargs.items():
        if key not in valid:
            raise ConfigError(f"{where}: {unknown_key_message(key, valid, 'model argument')}")
        expected = _kind_of(defaults.get(key))
        if expected and not _is_kind(value, expected):
            raise ConfigError(f"{where}: model argument {key} must be {expected}, not {short(value)}")
    return kwargs


def _kind_of(default) -> str | None:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    return None


def _is_kind(value, kind: str) -> bool:
    if kind == "true or false":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind == "a number" or float(value).is_integer()


def short(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so that a huge recipe value never makes a huge message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
