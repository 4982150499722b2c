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


def model_arguments(model: str | None = None) -> set[str] | None:
    """The names ``model_kwargs`` may hold: ConViT's constructor arguments the recipe may set (for a ConViT
    variant, or no model named), those of the class timm builds for any other ``model`` (None: it takes any)."""
    from ..timm_models import constructor_arguments, is_convit, model_name_problem

    if model is not None and not is_convit(model) and model_name_problem(model) is None:
        params = constructor_arguments(model)
        return None if params is None else set(params) - RESERVED_KWARGS - {"device", "dtype"}
    from ..model import ConViT

    return set(inspect.signature(ConViT).parameters) - RESERVED_KWARGS


def _defaults(model: str | None) -> dict:
    from ..timm_models import constructor_arguments, is_convit

    if model is not None and not is_convit(model):
        return constructor_arguments(model) or {}
    from ..model import ConViT

    return {n: p.default for n, p in inspect.signature(ConViT).parameters.items()}


def check_model_kwargs(kwargs: dict, where: str, model: str | None = None) -> dict:
    """``kwargs`` unchanged, or a ConfigError naming the first key ``model`` does not take (ConViT's arguments when
    no other timm model is named; a ConViT option another model lacks is named as such) or a value of the wrong
    kind (a word where the default is a number, a number where it is a boolean)."""
    from ..timm_models import convit_only, is_convit

    valid = model_arguments(model)
    defaults = _defaults(model)
    for key, value in kwargs.items():
        if valid is not None and key not in valid:
            if model is not None and convit_only(model, key):
                option = f"--{key.replace('_', '-')}" if where == "command line" else f"{where} {key}"
                raise ConfigError(
                    f"{option} is a ConViT option and {model} does not take {key}; drop it or train a convit_* model"
                )
            message = unknown_key_message(key, valid, "model argument")
            if model is not None and not is_convit(model):
                message = f"{model}: {message}"
            raise ConfigError(f"{where}: {message}")
        expected = _kind_of(defaults.get(key))
        if expected and not _is_kind(value, expected):
            raise ConfigError(f"{where}: model argument {key} must be {expected}, not {short(value)}")
    return kwargs


def fit_model_kwargs(model: str, kwargs: dict) -> tuple[dict, list[str]]:
    """(the recipe's ``kwargs`` that timm model ``model`` takes, a note naming those left out): a recipe's ConViT
    arguments do not apply to another model. A ConViT variant keeps them all (``check_model_kwargs`` checks them)."""
    from ..timm_models import is_convit, model_name_problem

    valid = model_arguments(model)
    left = (
        {}
        if valid is None or is_convit(model) or model_name_problem(model)
        else {k: v for k, v in kwargs.items() if k not in valid}
    )
    if not left:
        return kwargs, []
    listed = ", ".join(f"{k}={v}" for k, v in left.items())
    kept = {k: v for k, v in kwargs.items() if k not in left}
    return kept, [f"{model} does not take the recipe's model_kwargs {listed}: left out"]


def unused_drop_rates(cfg) -> list[str]:
    """Notes for the drop rates set above 0 that the run's model does not take (a timm model without them)."""
    from ..timm_models import takes

    notes = []
    for key, argument in (("drop", "drop_rate"), ("drop_path", "drop_path_rate")):
        value = getattr(cfg, key)
        if value and not takes(cfg.model, argument):
            notes.append(f"{cfg.model} takes no {argument}: {key} {value} is not used")
    return notes


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
