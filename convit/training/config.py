"""A run's settings: the ``Config`` of a command line, and its plain-dict and YAML forms.

A recipe (``configs/*.yaml``, shipped inside the package and found by name or path) holds only what
differs from its ``base:`` recipe. ``model:`` names a variant or any timm model and ``model_kwargs:`` the
constructor arguments where the recipe departs from it; those kwargs belong to the model named beside
them, so ``--model X`` naming another model drops them (and says so). The command line overrides any
key as ``--key-name value``; constructor arguments have flags of their own (``--embed-dim 96``,
``--depth 6``, ...) that always apply. Every key and value is checked before anything runs.

The keys are in ``schema``, the recipes in ``recipes``, the command line in ``cli``, the checks in ``checks``.

    python train.py                                   # configs/digits.yaml
    python train.py --model convit_base --data-path /data/imagenet     # configs/in1k.yaml
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from .checks import check_auto_augment, validate
from .cli import Resolved, build_parser, parse_args, resolve
from .recipes import CONFIG_DIR, find_config, list_configs, load_recipe, merge
from .schema import CHOICES, DATASETS, FIELDS, MODEL_FLAGS, RANGES, Config
from .values import ConfigError, coerce

__all__ = [
    "CHOICES",
    "CONFIG_DIR",
    "DATASETS",
    "FIELDS",
    "MODEL_FLAGS",
    "RANGES",
    "Config",
    "ConfigError",
    "Resolved",
    "budget",
    "build_parser",
    "check_auto_augment",
    "find_config",
    "from_dict",
    "list_configs",
    "load_recipe",
    "merge",
    "parse_args",
    "resolve",
    "save_yaml",
    "to_dict",
    "validate",
]


def budget(cfg: Config) -> tuple[int, float]:
    """(epochs, warm-up epochs) this run trains: divided by sampling_ratio when hold_images_seen is set.

    The paper's data-efficiency runs see the same number of images at every fraction: 10 % of the
    data for 10x the epochs.
    """
    if not cfg.hold_images_seen or cfg.sampling_ratio >= 1.0:
        return cfg.epochs, cfg.warmup_epochs
    return max(1, round(cfg.epochs / cfg.sampling_ratio)), cfg.warmup_epochs / cfg.sampling_ratio


def to_dict(cfg: Config) -> dict:
    """Plain dict of the config (tuples as lists), for YAML/JSON and checkpoints."""
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in dataclasses.asdict(cfg).items()}


def from_dict(values: dict) -> Config:
    """Rebuild a Config from ``to_dict`` output, ignoring keys this version no longer has."""
    return Config(**{k: coerce(k, v) for k, v in values.items() if k in FIELDS})


def save_yaml(cfg: Config, path: str | Path) -> None:
    """Write the resolved config, so a run records exactly what it ran."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
