"""Training configuration: one flat dataclass, YAML recipes, command-line overrides.

The defaults are the digits demo (``python train.py`` with no arguments). A recipe in
``configs/*.yaml`` sets any subset of the keys; ``--some-key value`` on the command line
overrides both. Any key that is not a field below is an error, in YAML or on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration problem the user can fix (bad key, bad value)."""


@dataclass
class Config:
    # data
    data: str = "auto"  # "digits", "imagefolder", or "auto" (imagefolder when data_path is set)
    data_path: str | None = None  # ImageFolder root holding train/ and val/
    sampling_ratio: float = 1.0  # keep this class-balanced fraction of the training images
    num_workers: int = 0
    # model (None: the variant's own value)
    model: str = "convit_tiny"
    img_size: int = 16
    patch_size: int | None = 4
    in_chans: int = 1
    embed_dim: int | None = 96  # total width (all heads together)
    num_heads: int | None = 4
    depth: int | None = 6
    mlp_ratio: float | None = None
    local_up_to_layer: int | None = 4
    locality_strength: float | None = None
    local_init: bool = True
    drop: float = 0.0
    drop_path: float = 0.0
    # optimisation
    epochs: int = 30
    batch_size: int = 64  # per process
    opt: str = "adamw"
    lr: float = 8e-3  # for a global batch of lr_base_batch images; scaled linearly
    lr_base_batch: int = 512  # 0 disables the linear scaling
    weight_decay: float = 0.05
    momentum: float = 0.9
    clip_grad: float | None = None
    sched: str = "cosine"
    warmup_epochs: int = 2
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    # augmentation and regularisation (ImageFolder data; digits use only mixup/cutmix/smoothing)
    aa: str | None = None  # e.g. rand-m9-mstd0.5-inc1
    color_jitter: float = 0.4
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    reprob: float = 0.0
    remode: str = "pixel"
    recount: int = 1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.0
    repeated_aug: bool = False
    num_repeats: int = 3
    model_ema: bool = False
    model_ema_decay: float = 0.99996
    # run
    seed: int = 0
    amp: bool = True  # autocast on CUDA (fp32 on CPU, always)
    amp_dtype: str = "bfloat16"  # or "float16", which adds a gradient scaler
    output_dir: str = "out"
    resume: str | None = None  # a checkpoint path, or "auto" for OUTPUT_DIR/last.pth if present
    stop_after: int = 0  # end this invocation after this many epochs (0: run to `epochs`)
    progress: bool = True
    locality_images: int = 64  # validation images whose non-locality and gates go into each epoch's log (0: off)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)


def _base_type(name: str):
    hint = _HINTS[name]
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


def coerce(name: str, value):
    """Convert a YAML or command-line value to the type of field `name`."""
    if name not in FIELDS:
        raise ConfigError(unknown_key_message(name))
    kind = _base_type(name)
    optional = type(None) in typing.get_args(_HINTS[name])
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ConfigError(f"config key '{name}' cannot be null")
    try:
        if kind is bool:
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if typing.get_origin(kind) is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            if len(items) != 2:
                raise ValueError("expected two numbers")
            return tuple(float(v) for v in items)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("expected an integer")
        if kind is float and isinstance(value, str):
            return float(value)
        return kind(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key '{name}': cannot use {value!r} ({e})") from None


def unknown_key_message(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, FIELDS, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown config key '{name}'; {hint}see convit/config.py for the valid keys"


def load_yaml(path: str | Path) -> dict:
    """Read a recipe file into a dict of validated, typed values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found; pass an existing file to --config")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must be a mapping of key: value")
    out = {}
    for key, value in raw.items():
        if key not in FIELDS:
            raise ConfigError(f"{path}: {unknown_key_message(key)}")
        out[key] = coerce(key, value)
    return out


def parse_args(argv: list[str] | None = None) -> Config:
    """Build the Config from defaults, then `--config FILE`, then `--key value` overrides."""
    parser = argparse.ArgumentParser(
        description="Train a ConViT. Every config key is also a flag: --batch-size 128, --lr 1e-3.",
        allow_abbrev=False,
    )
    parser.add_argument("--config", default=None, help="YAML recipe (see configs/)")
    for name in FIELDS:
        # nargs="?" lets a boolean be given as a bare flag: --model-ema
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, nargs="?", const="true"
        )
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("--")), unknown[0])
        if flag.startswith("--"):
            raise ConfigError(unknown_key_message(flag[2:].split("=")[0].replace("-", "_")))
        raise ConfigError(f"unexpected argument {flag!r}; flags look like --key value")
    values = load_yaml(args.config) if args.config else {}
    for name, value in vars(args).items():
        if name != "config":
            values[name] = coerce(name, value)
    return validate(Config(**values))


def validate(cfg: Config) -> Config:
    """Check values that are individually typed but jointly wrong; resolve `data: auto`."""
    if cfg.data == "auto":
        cfg.data = "imagefolder" if cfg.data_path else "digits"
    if cfg.data not in ("digits", "imagefolder"):
        raise ConfigError(f"data must be 'digits', 'imagefolder' or 'auto', not {cfg.data!r}")
    if cfg.data == "imagefolder" and not cfg.data_path:
        raise ConfigError("data 'imagefolder' needs --data-path DIR (a folder with train/ and val/)")
    if not 0.0 < cfg.sampling_ratio <= 1.0:
        raise ConfigError(f"sampling_ratio must be in (0, 1], not {cfg.sampling_ratio}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError("epochs and batch_size must be at least 1")
    if cfg.amp_dtype not in ("bfloat16", "float16"):
        raise ConfigError(f"amp_dtype must be 'bfloat16' or 'float16', not {cfg.amp_dtype!r}")
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size % 2:
        raise ConfigError("mixup/cutmix need an even --batch-size")
    return cfg


def to_dict(cfg: Config) -> dict:
    """Plain dict of the config (tuples as lists), for YAML/JSON and checkpoints."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def from_dict(values: dict) -> Config:
    """Rebuild a Config from `to_dict` output, ignoring keys this version no longer has."""
    return Config(**{k: coerce(k, v) for k, v in values.items() if k in FIELDS})


def save_yaml(cfg: Config, path: str | Path) -> None:
    """Write the resolved config, so a run records exactly what it ran."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
