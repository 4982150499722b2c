"""Training configuration: recipes that compose, a model named apart from its recipe, checked values.

A recipe (``configs/*.yaml``, shipped inside the package and found by name or path) holds only what
differs from its ``base:`` recipe. ``model:`` names a variant and ``model_kwargs:`` the constructor
arguments where the recipe departs from that variant; those kwargs belong to the model named beside
them, so ``--model X`` naming another model drops them (and says so). The command line overrides any
key as ``--key-name value``; constructor arguments have flags of their own (``--embed-dim 96``,
``--depth 6``, ...) that always apply. Every key and value is checked here, before anything runs.

    python train.py                                   # configs/digits.yaml
    python train.py --model convit_base --data-path /data/imagenet     # configs/in1k.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DIGITS_RECIPE = "digits"  # `python train.py` with no --config and no --data-path
IMAGENET_RECIPE = "in1k"  # with --data-path and no --config


class ConfigError(UserError, ValueError):
    """A configuration problem the user can fix (bad key, bad value, bad recipe)."""


@dataclass
class Config:
    # data
    data: str = "auto"  # "digits", "imagefolder", a transfer dataset (DATASETS), or "auto" (imagefolder with data_path)
    data_path: str | None = None  # ImageFolder root holding train/ and val/, or a transfer dataset's folder
    digits_classes: list[int] | None = None  # digits only: keep these digits (relabelled 0..k-1 in this order)
    sampling_ratio: float = 1.0  # keep this class-balanced fraction of the training images
    hold_images_seen: bool = False  # epochs/warm-up are given for the full data: divided by sampling_ratio
    num_workers: int = 8
    # model: a variant, the constructor arguments where the recipe departs from it, and the input size
    model: str = "convit_small"
    model_kwargs: dict = field(default_factory=dict)
    img_size: int = 224
    drop: float = 0.0
    drop_path: float = 0.0
    # optimisation
    epochs: int = 300
    batch_size: int = 64  # per process
    opt: str = "adamw"
    lr: float = 5e-4  # for a global batch of lr_base_batch images; scaled linearly
    lr_base_batch: int = 512  # 0 disables the linear scaling
    weight_decay: float = 0.05
    momentum: float = 0.9
    clip_grad: float | None = None
    sched: str = "cosine"
    warmup_epochs: float = 5
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
    model_ema_eval_interval: int = 1  # evaluate the EMA weights every N epochs and at the last (1: every epoch)
    # run
    seed: int = 0
    amp: bool = True  # autocast on CUDA (fp32 on CPU, always)
    amp_dtype: str = "bfloat16"  # or "float16", which adds a gradient scaler
    output_dir: str = "out"
    resume: str | None = None  # a checkpoint path, or "auto" for OUTPUT_DIR/last.pth if present
    overwrite: bool = False  # replace a previous run in output_dir instead of stopping
    stop_after: int = 0  # end this invocation after this many epochs (0: run to `epochs`)
    progress: bool = True  # a bar on a terminal, a log line every log_interval steps otherwise
    log_interval: int = 50
    tensorboard: bool = False  # also write TensorBoard scalars to OUTPUT_DIR/tensorboard
    locality_images: int = 64  # validation images whose locality goes into each epoch's log (0: off)
    stop_signals: str = "TERM,INT,USR1"  # signals that stop the run after the current step (TERM, INT, USR1, USR2)
    # fine-tuning and transfer (convit/training/finetune.py)
    finetune: str | None = None  # start from these weights: a file (ours, timm's, the authors'), or "pretrained"
    pretrained_file: str | None = None  # with --finetune pretrained: timm's published weights read from this file
    layer_decay: float | None = None  # layer-wise lr decay (timm's param_groups_layer_decay); None: off
    freeze: str = "none"  # none | head_only (train the head alone) | attn_only | gates | pos_proj
    gate_lr_scale: float = 1.0  # lr multiplier of the GPSA gating parameters (1: as in the paper)
    accum_steps: int = 1  # batches per optimizer update; the lr scales with the effective batch
    compile: bool = False  # torch.compile the model for training
    grad_checkpointing: bool = False  # recompute each block's activations in the backward pass
    # distillation, DeiT's (Touvron et al. 2021) on the class head (convit/training/distill.py)
    teacher: str | None = None  # a timm model name, or a checkpoint written by train.py
    teacher_pretrained: bool = False  # create a named teacher with timm's pretrained weights
    distillation_type: str = "none"  # none | soft | hard
    distillation_alpha: float = 0.5  # loss = (1 - alpha) * classification + alpha * distillation
    distillation_tau: float = 1.0  # temperature of soft distillation


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)
# Constructor arguments with a flag of their own; they go into model_kwargs and survive --model.
MODEL_FLAGS = (
    "patch_size",
    "in_chans",
    "embed_dim",
    "num_heads",
    "depth",
    "mlp_ratio",
    "local_up_to_layer",
    "locality_strength",
    "local_init",
)
# Set by the training system itself (from img_size, drop, drop_path, the data), never in model_kwargs.
_RESERVED_KWARGS = {"img_size", "num_classes", "drop_rate", "drop_path_rate", "pretrained", "norm_layer"}
# transfer datasets read from local files (convit/training/data.py), never downloaded
DATASETS = ("cifar10", "cifar100", "flowers102", "stanford_cars", "inat2018", "inat2019")
STOP_SIGNALS = ("TERM", "INT", "USR1", "USR2")
CHOICES = {
    "data": ("auto", "digits", "imagefolder", *DATASETS),
    "freeze": ("none", "head_only", "attn_only", "gates", "pos_proj"),
    "distillation_type": ("none", "soft", "hard"),
    "amp_dtype": ("bfloat16", "float16"),
    "interpolation": ("bicubic", "bilinear", "nearest", "random"),
    "remode": ("pixel", "rand", "const"),
    "mixup_mode": ("batch", "pair", "elem"),
    "sched": ("cosine", "tanh", "step", "multistep", "plateau", "poly", "none"),
}
# (low, high, low inclusive, high inclusive) for every number with a range
RANGES = {
    "sampling_ratio": (0, 1, False, True),
    "num_workers": (0, 1024, True, True),
    "seed": (0, 2**63 - 2**32, True, False),
    "img_size": (1, math.inf, True, False),
    "drop": (0, 1, True, False),
    "drop_path": (0, 1, True, False),
    "epochs": (1, math.inf, True, False),
    "batch_size": (1, math.inf, True, False),
    "lr": (0, 1e3, False, True),
    "lr_base_batch": (0, math.inf, True, False),
    "weight_decay": (0, math.inf, True, False),
    "momentum": (0, 1, True, True),
    "clip_grad": (0, math.inf, False, False),
    "warmup_epochs": (0, math.inf, True, False),
    "warmup_lr": (0, 1e3, True, True),
    "min_lr": (0, 1e3, True, True),
    "color_jitter": (0, math.inf, True, False),
    "hflip": (0, 1, True, True),
    "crop_pct": (0, 1, False, True),
    "reprob": (0, 1, True, True),
    "recount": (1, math.inf, True, False),
    "mixup": (0, math.inf, True, False),
    "cutmix": (0, math.inf, True, False),
    "mixup_prob": (0, 1, True, True),
    "mixup_switch_prob": (0, 1, True, True),
    "smoothing": (0, 1, True, False),
    "num_repeats": (1, math.inf, True, False),
    "model_ema_decay": (0, 1, False, False),
    "model_ema_eval_interval": (1, math.inf, True, False),
    "stop_after": (0, math.inf, True, False),
    "log_interval": (1, math.inf, True, False),
    "locality_images": (0, math.inf, True, False),
    "layer_decay": (0, 1, False, True),
    "gate_lr_scale": (0, math.inf, False, False),
    "accum_steps": (1, math.inf, True, False),
    "distillation_alpha": (0, 1, True, True),
    "distillation_tau": (0, math.inf, False, False),
}


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


def _parse_scalar(text: str):
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
    optional = type(None) in typing.get_args(_HINTS[name])
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
        raise ConfigError(f"config key '{name}': cannot use {_short(value)} ({str(e)[:80]})") from None


def parse_kwargs(text: str) -> dict:
    """``key=value,key=value`` (values read as YAML scalars) as a dict."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {item!r}")
        out[key.strip()] = _parse_scalar(value.strip())
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

    return set(inspect.signature(ConViT).parameters) - _RESERVED_KWARGS


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
            raise ConfigError(f"{where}: model argument {key} must be {expected}, not {_short(value)}")
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


def _short(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so that a huge recipe value never makes a huge message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------- recipes


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
                raise ConfigError(f"key {_short(key, 40)} appears twice (line {line}); keep one of them")
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
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
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
    if "model_kwargs" in own:
        check_model_kwargs(own["model_kwargs"], str(path))
    return merge(values, own)


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``; model_kwargs merge when the model stays, and are dropped when it changes."""
    out = {**base, **over}
    same_model = "model" not in over or over["model"] == base.get("model")
    if same_model and "model_kwargs" in over:
        out["model_kwargs"] = {**base.get("model_kwargs", {}), **over["model_kwargs"]}
    elif not same_model and "model_kwargs" not in over:
        out.pop("model_kwargs", None)
    return out


# ------------------------------------------------------------------------------------- command line


@dataclass
class Resolved:
    """The config and what the user should be told about how it was resolved."""

    config: Config
    recipe: str
    notes: list[str]
    overrides: dict


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a ConViT. Every config key is also a flag: --batch-size 128, --lr 1e-3.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config", default=None, help=f"recipe: a YAML file or a shipped name ({', '.join(list_configs())})"
    )
    parser.add_argument("--list-configs", action="store_true", help="print the shipped recipes and exit")
    for name in FIELDS:
        # nargs="?" lets a boolean be given as a bare flag: --model-ema
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, nargs="?", const="true"
        )
    for name in MODEL_FLAGS:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest="model_arg_" + name,
            default=argparse.SUPPRESS,
            nargs="?",
            const="true",
            help=f"model argument {name} (goes into model_kwargs)",
        )
    return parser


def resolve(argv: list[str] | None = None, prog: str = "train.py") -> Resolved:
    """Defaults, then the recipe (with its bases), then the command line; every value checked."""
    parser = build_parser(prog)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("--")), unknown[0])
        if flag.startswith("--"):
            valid = set(FIELDS) | set(MODEL_FLAGS) | {"config"}
            raise ConfigError(unknown_key_message(flag[2:].split("=")[0].replace("-", "_"), valid))
        raise ConfigError(f"unexpected argument {flag!r}; flags look like --key value")
    cli = {k: v for k, v in vars(args).items() if k not in ("config", "list_configs")}
    model_args = {k.removeprefix("model_arg_"): _parse_scalar(v) for k, v in cli.items() if k.startswith("model_arg_")}
    cli = {k: coerce(k, v) for k, v in cli.items() if not k.startswith("model_arg_")}
    recipe = args.config or (IMAGENET_RECIPE if cli.get("data_path") else DIGITS_RECIPE)
    values = load_recipe(recipe)
    notes = []
    if "model" in cli and cli["model"] != values.get("model") and values.get("model_kwargs"):
        dropped = ", ".join(f"{k}={v}" for k, v in values["model_kwargs"].items())
        notes.append(
            f"--model {cli['model']} replaces the recipe's {values.get('model')}: "
            f"its model_kwargs ({dropped}) are dropped"
        )
    values = merge(values, cli)
    if model_args:
        values["model_kwargs"] = {**values.get("model_kwargs", {}), **check_model_kwargs(model_args, "command line")}
    if "model_kwargs" in cli:
        check_model_kwargs(cli["model_kwargs"], "--model-kwargs")
    cfg = validate(Config(**values))
    overrides = {**{k: v for k, v in cli.items() if k != "model_kwargs"}, **model_args}
    return Resolved(cfg, str(find_config(recipe).resolve()), notes, overrides)


def parse_args(argv: list[str] | None = None) -> Config:
    """The resolved Config of a command line (see ``resolve``)."""
    return resolve(argv).config


def _check_range(name: str, value) -> None:
    if value is None or name not in RANGES:
        return
    low, high, low_in, high_in = RANGES[name]
    ok = math.isfinite(value) or high == math.inf and value == math.inf
    ok = ok and (value >= low if low_in else value > low) and (value <= high if high_in else value < high)
    if not ok:
        lo = f"[{low}" if low_in else f"({low}"
        hi = f"{high}]" if high_in else f"{high})"
        raise ConfigError(f"{name} must lie in {lo}, {hi}, not {value}")


def validate(cfg: Config) -> Config:
    """Check every value's range and choice, and those that are jointly wrong; resolve ``data: auto``."""
    for name, choices in CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {_short(getattr(cfg, name))}")
    for name in RANGES:
        _check_range(name, getattr(cfg, name))
    if cfg.data == "auto":
        cfg.data = "imagefolder" if cfg.data_path else "digits"
    if cfg.data == "imagefolder" and not cfg.data_path:
        raise ConfigError("data 'imagefolder' needs --data-path DIR (a folder with train/ and val/)")
    if cfg.data in DATASETS and not cfg.data_path:
        raise ConfigError(
            f"data '{cfg.data}' needs --data-path DIR (the folder holding its files; nothing is downloaded)"
        )
    if cfg.digits_classes is not None:
        if cfg.data != "digits":
            raise ConfigError(f"digits_classes applies to the digits only, not data '{cfg.data}'")
        if not cfg.digits_classes or len(set(cfg.digits_classes)) != len(cfg.digits_classes):
            raise ConfigError(f"digits_classes must list distinct digits, not {cfg.digits_classes}")
        if any(not 0 <= d <= 9 for d in cfg.digits_classes):
            raise ConfigError(f"digits_classes must lie in 0..9, not {cfg.digits_classes}")
    # a resumed run does not reload its source, which may be gone by then (train.py checks it when used)
    if cfg.finetune not in (None, "pretrained") and cfg.resume is None and not Path(cfg.finetune).is_file():
        raise ConfigError(
            f"--finetune '{cfg.finetune}' not found; pass a weights file (.pth, .safetensors) or 'pretrained'"
        )
    if cfg.pretrained_file is not None:
        if cfg.finetune != "pretrained":
            raise ConfigError("--pretrained-file is read only with --finetune pretrained")
        if not Path(cfg.pretrained_file).is_file():
            raise ConfigError(f"--pretrained-file '{cfg.pretrained_file}' not found")
    if cfg.gate_lr_scale != 1 and cfg.freeze == "gates":
        raise ConfigError("gate_lr_scale has nothing to scale with freeze: gates; drop one of them")
    if cfg.distillation_type != "none" and not cfg.teacher:
        raise ConfigError(
            f"distillation_type '{cfg.distillation_type}' needs --teacher (a timm model name or a checkpoint)"
        )
    if cfg.teacher and cfg.distillation_type == "none":
        raise ConfigError("--teacher is used only with --distillation-type soft or hard")
    if cfg.teacher and not Path(cfg.teacher).is_file():
        import timm

        if not timm.is_model(cfg.teacher):
            close = difflib.get_close_matches(cfg.teacher, timm.list_models(), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"unknown teacher {_short(cfg.teacher)}: neither a file nor a timm model name; {hint}see timm.list_models()"
            )
    from timm.optim import list_optimizers

    if cfg.opt.lower() not in list_optimizers():
        close = difflib.get_close_matches(cfg.opt.lower(), list_optimizers(), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown optimizer {_short(cfg.opt)}; {hint}see timm.optim.list_optimizers()")
    check_auto_augment(cfg.aa)
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size % 2:
        raise ConfigError("mixup/cutmix need an even --batch-size")
    if cfg.scale[0] > cfg.scale[1] or not 0 < cfg.scale[0] <= 1:
        raise ConfigError(f"scale must be two numbers 0 < low <= high <= 1, not {cfg.scale}")
    if cfg.ratio[0] > cfg.ratio[1] or cfg.ratio[0] <= 0:
        raise ConfigError(f"ratio must be two numbers 0 < low <= high, not {cfg.ratio}")
    if cfg.resume is not None and cfg.resume != "auto" and not Path(cfg.resume).is_file():
        raise ConfigError(f"--resume '{cfg.resume}' not found; pass a last.pth, or --resume auto")
    unknown = [n for n in cfg.stop_signals.split(",") if n.strip().upper().removeprefix("SIG") not in STOP_SIGNALS]
    if unknown or not cfg.stop_signals.strip():
        raise ConfigError(
            f"stop_signals must list signals among {', '.join(STOP_SIGNALS)} (comma-separated), not "
            f"{_short(cfg.stop_signals)}"
        )
    if cfg.resume is not None and cfg.overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it; pass one of them")
    return cfg


def check_auto_augment(aa: str | None) -> None:
    """A ConfigError unless timm can build the augmentation ``aa`` names (None and "none" mean off)."""
    if aa is None or str(aa).lower() == "none":
        return
    from timm.data import create_transform

    try:
        create_transform(32, is_training=True, auto_augment=str(aa))
    except Exception as e:  # timm reports a bad policy as an assertion, a KeyError or a ValueError
        detail = str(e).strip().splitlines()[0][:80] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"aa {_short(aa)} is not an augmentation timm knows ({detail}); use e.g. rand-m9-mstd0.5-inc1, "
            "augmix-m5-w4-d2, original, v0, or none"
        ) from None


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
