"""The checks of a run's settings: ranges, choices, and values that are wrong together."""

from __future__ import annotations

import difflib
import math
from pathlib import Path

from ..errors import first_line
from .schema import CHOICES, DATA_NAMES, DATASETS, RANGES, STOP_SIGNALS, Config
from .values import ConfigError, short


def check_range(name: str, value) -> None:
    """A ConfigError unless ``value`` lies in key ``name``'s range (None and keys without one pass)."""
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
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {short(getattr(cfg, name))}")
    for name in RANGES:
        check_range(name, getattr(cfg, name))
    check_data(cfg.data)
    if cfg.data == "auto":
        cfg.data = "imagefolder" if cfg.data_path else "digits"
    if cfg.class_map is not None:
        if "/" not in cfg.data and cfg.data != "imagefolder":
            raise ConfigError(
                f"--class-map applies to timm datasets (hfds/, wds/, torch/) and ImageFolders in tar files, not data "
                f"'{cfg.data}'"
            )
        if not Path(cfg.class_map).is_file():
            raise ConfigError(f"--class-map '{cfg.class_map}' not found; pass a text file, one class name per line")
    if "/" in cfg.data and cfg.data.partition("/")[0].lower() in ("wds", "torch") and not cfg.data_path:
        raise ConfigError(f"data '{cfg.data}' needs --data-path DIR (the folder holding its files)")
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
                f"unknown teacher {short(cfg.teacher)}: neither a file nor a timm model name; {hint}see timm.list_models()"
            )
    from timm.optim import list_optimizers

    if cfg.opt.lower() not in list_optimizers():
        close = difflib.get_close_matches(cfg.opt.lower(), list_optimizers(), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown optimizer {short(cfg.opt)}; {hint}see timm.optim.list_optimizers()")
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
            f"{short(cfg.stop_signals)}"
        )
    if cfg.resume is not None and cfg.overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it; pass one of them")
    return cfg


def check_data(data: str) -> None:
    """A ConfigError unless ``data`` names a dataset: a fixed name, a transfer set or timm's PREFIX/NAME."""
    if data in DATA_NAMES or data in DATASETS:
        return
    if "/" in str(data):
        from ..data.factory import source_problem  # the data package only when a timm name is given

        problem = source_problem(str(data))
        if problem:
            raise ConfigError(f"data {problem}")
        return
    close = difflib.get_close_matches(str(data), [*DATA_NAMES, *DATASETS], n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(
        f"unknown data {short(data)}; {hint}use one of {', '.join((*DATA_NAMES, *DATASETS))}, or a timm dataset "
        "hfds/NAME, wds/NAME, torch/NAME"
    )


def check_auto_augment(aa: str | None) -> None:
    """A ConfigError unless timm can build the augmentation ``aa`` names (None and "none" mean off)."""
    if aa is None or str(aa).lower() == "none":
        return
    from timm.data import create_transform

    try:
        create_transform(32, is_training=True, auto_augment=str(aa))
    except Exception as e:  # timm reports a bad policy as an assertion, a KeyError or a ValueError
        detail = first_line(e, 80)
        raise ConfigError(
            f"aa {short(aa)} is not an augmentation timm knows ({detail}); use e.g. rand-m9-mstd0.5-inc1, "
            "augmix-m5-w4-d2, original, v0, or none"
        ) from None
