"""Recipes: YAML files holding only what differs from their ``base:``, shipped in the package and found by name."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import first_line
from .schema import FIELDS
from .values import ConfigError, check_model_kwargs, coerce, fit_model_kwargs, short, unknown_key_message

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DIGITS_RECIPE = "digits"  # `python train.py` with no --config and no --data-path
IMAGENET_RECIPE = "in1k"  # with --data-path and no --config


def list_configs() -> list[str]:
    """Names of the recipes that ship with the package."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def find_config(name_or_path: str | Path) -> Path:
    """A recipe file by path, or by name among the shipped recipes (``in1k`` or ``in1k.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise ConfigError(
        f"config '{name_or_path}' not found: pass a YAML file or one of the shipped recipes: {', '.join(list_configs())}"
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"key {short(key, 40)} appears twice (line {line}); keep one of them")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_recipe(path: Path) -> dict:
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as e:
        raise ConfigError(f"config file '{path}': {e}") from None
    except RecursionError:
        raise ConfigError(f"config file '{path}' is nested too deeply to be a recipe; fix or replace it") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        problem = first_line(e)
        raise ConfigError(f"config file '{path}' is not valid YAML ({problem}); fix or replace it") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must be a mapping of key: value")
    return raw


def load_recipe(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A recipe's typed values with its ``base:`` chain resolved (a base path is relative to the recipe)."""
    path = find_config(path) if not _chain else Path(path)
    if not path.is_file():
        raise ConfigError(f"{_chain[-1]}: base recipe '{path}' not found; fix its 'base:' line")
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, resolved))
        raise ConfigError(f"recipes form a cycle ({cycle}); remove one 'base:' line")
    raw = _read_recipe(path)
    values: dict = {}
    if "base" in raw:
        base = raw.pop("base")
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must name a recipe file, not {base!r}")
        values = load_recipe(resolved.parent / base, (*_chain, resolved))
    own = {}
    for key, value in raw.items():
        if key not in FIELDS:
            raise ConfigError(f"{path}: {unknown_key_message(key)}")
        own[key] = coerce(key, value)
    merged = merge(values, own)
    if "model_kwargs" in own:
        # the arguments of the recipe's model; a ConViT argument another timm model lacks is left out later
        model = str(merged.get("model", FIELDS["model"].default))
        check_model_kwargs(fit_model_kwargs(model, own["model_kwargs"])[0], str(path), model)
    return merged


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``; model_kwargs merge when the model stays, and are dropped when it changes."""
    out = {**base, **over}
    same_model = "model" not in over or over["model"] == base.get("model")
    if same_model and "model_kwargs" in over:
        out["model_kwargs"] = {**base.get("model_kwargs", {}), **over["model_kwargs"]}
    elif not same_model and "model_kwargs" not in over:
        out.pop("model_kwargs", None)
    return out
