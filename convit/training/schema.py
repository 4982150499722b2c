"""Every key of a training run: its type and default, one line of help, its group, and its allowed values.

The command lines (``train.py``, ``eval.py``), the recipes and the checks all read this one table, so a key
added here is a flag with its help, a recipe key and a checked value everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

DATA_NAMES = (
    "auto",
    "digits",
    "cluttered",
    "imagefolder",
)  # besides DATASETS and timm's PREFIX/NAME (convit/data/factory.py)
# transfer datasets read from local files (convit/data/transfer.py), never downloaded
DATASETS = ("cifar10", "cifar100", "flowers102", "stanford_cars", "inat2018", "inat2019")
STOP_SIGNALS = ("TERM", "INT", "USR1", "USR2")
INF = math.inf
GROUPS = ("data", "model", "optimisation", "augmentation", "run", "fine-tuning", "distillation")


def key(default, help: str, group: str, choices: tuple | None = None, range: tuple | None = None, factory=None):
    """A Config field: ``range`` is (low, high, low inclusive, high inclusive)."""
    meta = {"help": help, "group": group, "choices": choices, "range": range}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class Config:
    """The settings of a training run (see ``key`` for what each field carries)."""

    # data
    data: str = key(
        "auto",
        "dataset: digits, cluttered (digits placed among fragments), imagefolder, a transfer dataset ("
        + ", ".join(DATASETS)
        + "), a timm dataset (hfds/NAME, wds/NAME, torch/NAME), or auto (imagefolder with --data-path, else digits)",
        "data",
    )
    data_path: str | None = key(
        None,
        "ImageFolder root with train/ and val/ (folders or train.tar and val.tar) or a .tar of one, a transfer "
        "dataset's folder, or a timm dataset's root",
        "data",
    )
    train_split: str = key("train", "timm datasets: the training split (a webdataset split may be 'PATTERN|N')", "data")
    val_split: str = key("validation", "timm datasets: the evaluation split", "data")
    class_map: str | None = key(
        None, "timm datasets and tarred ImageFolders: a text file of class names, one per line, in label order", "data"
    )
    digits_classes: list[int] | None = key(None, "digits only: keep these digits, relabelled 0..k-1 (e.g. 3,8)", "data")
    sampling_ratio: float = key(
        1.0, "keep this class-balanced fraction of the training images", "data", range=(0, 1, False, True)
    )
    hold_images_seen: bool = key(
        False, "epochs and warm-up are given for the full data: divide them by sampling_ratio", "data"
    )
    num_workers: int = key(
        8, "loader processes per training process (0: load in the main process)", "data", range=(0, 1024, True, True)
    )
    # model
    model: str = key(
        "convit_small",
        "a ConViT variant (convit_tiny ... convit_base_plus) or any timm model name (resnet18, ...)",
        "model",
    )
    model_kwargs: dict = key(
        None, "constructor arguments where the recipe departs from the variant (k=v,k=v)", "model", factory=dict
    )
    img_size: int = key(224, "input size in pixels (square)", "model", range=(1, INF, True, False))
    drop: float = key(0.0, "dropout rate", "model", range=(0, 1, True, False))
    drop_path: float = key(0.0, "stochastic depth rate", "model", range=(0, 1, True, False))
    # optimisation
    epochs: int = key(300, "epochs to train", "optimisation", range=(1, INF, True, False))
    batch_size: int = key(64, "images per process and step", "optimisation", range=(1, INF, True, False))
    opt: str = key("adamw", "optimizer, any of timm.optim.list_optimizers()", "optimisation")
    lr: float = key(
        5e-4,
        "learning rate for a global batch of lr_base_batch images (scaled linearly)",
        "optimisation",
        range=(0, 1e3, False, True),
    )
    lr_base_batch: int = key(
        512, "the global batch lr is given for (0: no scaling)", "optimisation", range=(0, INF, True, False)
    )
    weight_decay: float = key(
        0.05, "weight decay (none on norms, biases, embeddings, gates)", "optimisation", range=(0, INF, True, False)
    )
    momentum: float = key(0.9, "momentum of SGD-type optimizers", "optimisation", range=(0, 1, True, True))
    clip_grad: float | None = key(
        None, "clip the gradient norm at this value (none: off)", "optimisation", range=(0, INF, False, False)
    )
    sched: str = key(
        "cosine",
        "learning-rate schedule (timm's)",
        "optimisation",
        choices=("cosine", "tanh", "step", "multistep", "plateau", "poly", "none"),
    )
    warmup_epochs: float = key(5, "epochs of linear warm-up", "optimisation", range=(0, INF, True, False))
    warmup_lr: float = key(
        1e-6, "learning rate at the start of the warm-up", "optimisation", range=(0, 1e3, True, True)
    )
    min_lr: float = key(1e-5, "learning rate at the end of the schedule", "optimisation", range=(0, 1e3, True, True))
    # augmentation and regularisation (ImageFolder data; the digits use only mixup, cutmix and smoothing)
    aa: str | None = key(None, "timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (none: off)", "augmentation")
    color_jitter: float = key(0.4, "colour jitter strength", "augmentation", range=(0, INF, True, False))
    scale: tuple[float, float] = key((0.08, 1.0), "random-resized-crop area range (low,high)", "augmentation")
    ratio: tuple[float, float] = key((3 / 4, 4 / 3), "random-resized-crop aspect range (low,high)", "augmentation")
    hflip: float = key(0.5, "probability of a horizontal flip", "augmentation", range=(0, 1, True, True))
    interpolation: str = key(
        "bicubic", "resize interpolation", "augmentation", choices=("bicubic", "bilinear", "nearest", "random")
    )
    crop_pct: float = key(
        0.875, "evaluation: centre crop as a fraction of the resized image", "augmentation", range=(0, 1, False, True)
    )
    reprob: float = key(0.0, "random-erasing probability", "augmentation", range=(0, 1, True, True))
    remode: str = key("pixel", "random-erasing fill", "augmentation", choices=("pixel", "rand", "const"))
    recount: int = key(1, "random-erasing regions per image", "augmentation", range=(1, INF, True, False))
    mixup: float = key(0.0, "mixup alpha (0: off)", "augmentation", range=(0, INF, True, False))
    cutmix: float = key(0.0, "cutmix alpha (0: off)", "augmentation", range=(0, INF, True, False))
    mixup_prob: float = key(1.0, "probability of mixup or cutmix per batch", "augmentation", range=(0, 1, True, True))
    mixup_switch_prob: float = key(
        0.5, "probability of cutmix rather than mixup when both are on", "augmentation", range=(0, 1, True, True)
    )
    mixup_mode: str = key("batch", "mix per batch, pair or element", "augmentation", choices=("batch", "pair", "elem"))
    smoothing: float = key(0.0, "label smoothing", "augmentation", range=(0, 1, True, False))
    repeated_aug: bool = key(False, "repeated augmentation (DeiT's RASampler)", "augmentation")
    num_repeats: int = key(3, "repeats of each image with repeated_aug", "augmentation", range=(1, INF, True, False))
    model_ema: bool = key(False, "keep an exponential moving average of the weights and evaluate it", "augmentation")
    model_ema_eval_interval: int = key(
        1, "evaluate the weight average every N epochs, and after the last", "augmentation", range=(1, INF, True, False)
    )
    model_ema_decay: float = key(0.99996, "decay of the weight average", "augmentation", range=(0, 1, False, False))
    # run
    seed: int = key(
        0, "random seed of weights, data order and augmentation", "run", range=(0, 2**63 - 2**32, True, False)
    )
    amp: bool = key(True, "autocast on CUDA (fp32 on CPU, always)", "run")
    amp_dtype: str = key(
        "bfloat16", "autocast type; float16 adds a gradient scaler", "run", choices=("bfloat16", "float16")
    )
    output_dir: str = key("out", "the run folder: checkpoints, log.jsonl, summary.csv, config.yaml", "run")
    resume: str | None = key(None, "continue from a last.pth, or auto for OUTPUT_DIR/last.pth if present", "run")
    overwrite: bool = key(False, "replace a previous run in output_dir instead of stopping", "run")
    stop_after: int = key(
        0, "end this invocation after this many epochs (0: run to epochs)", "run", range=(0, INF, True, False)
    )
    progress: bool = key(True, "a bar on a terminal (a line every log_interval steps otherwise)", "run")
    log_interval: int = key(50, "steps between progress lines and loss checks", "run", range=(1, INF, True, False))
    tensorboard: bool = key(False, "also write TensorBoard scalars to OUTPUT_DIR/tensorboard", "run")
    locality_images: int = key(
        64, "validation images whose locality goes into each epoch's log (0: off)", "run", range=(0, INF, True, False)
    )
    stop_signals: str = key(
        "TERM,INT,USR1", "signals that stop the run after the current step (TERM, INT, USR1, USR2)", "run"
    )
    checkpoint_hist: int | None = key(
        None,
        "also keep the best K epochs by validation top-1 as epoch_N.pth (none: only last.pth and best.pth)",
        "run",
        range=(1, INF, True, False),
    )
    save_every: int = key(0, "also keep every N-th epoch as epoch_N.pth (0: off)", "run", range=(0, INF, True, False))
    compile: bool = key(False, "torch.compile the model for training", "run")
    grad_checkpointing: bool = key(False, "recompute each block's activations in the backward pass", "run")
    # fine-tuning and transfer (convit/training/finetune.py)
    finetune: str | None = key(
        None, "start from these weights: a file (ours, timm's, the authors'), or pretrained", "fine-tuning"
    )
    pretrained_file: str | None = key(
        None, "with --finetune pretrained: timm's published weights from this file", "fine-tuning"
    )
    layer_decay: float | None = key(None, "layer-wise lr decay (none: off)", "fine-tuning", range=(0, 1, False, True))
    freeze: str = key(
        "none", "parameters kept fixed", "fine-tuning", choices=("none", "head_only", "attn_only", "gates", "pos_proj")
    )
    gate_lr_scale: float = key(
        1.0,
        "lr multiplier of the GPSA gating parameters (1: as in the paper)",
        "fine-tuning",
        range=(0, INF, False, False),
    )
    accum_steps: int = key(
        1,
        "batches per optimizer update; the lr scales with the effective batch",
        "optimisation",
        range=(1, INF, True, False),
    )
    # distillation, DeiT's (Touvron et al. 2021) on the class head (convit/training/distill.py)
    teacher: str | None = key(None, "a timm model name, or a checkpoint written by train.py", "distillation")
    teacher_pretrained: bool = key(False, "create a named teacher with timm's pretrained weights", "distillation")
    distillation_type: str = key(
        "none", "none, soft or hard distillation", "distillation", choices=("none", "soft", "hard")
    )
    distillation_alpha: float = key(
        0.5, "loss = (1 - alpha) * classification + alpha * distillation", "distillation", range=(0, 1, True, True)
    )
    distillation_tau: float = key(1.0, "temperature of soft distillation", "distillation", range=(0, INF, False, False))


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
HINTS = typing.get_type_hints(Config)
CHOICES = {name: f.metadata["choices"] for name, f in FIELDS.items() if f.metadata["choices"]}
RANGES = {name: f.metadata["range"] for name, f in FIELDS.items() if f.metadata["range"]}
# Constructor arguments with a flag of their own; they go into model_kwargs and survive --model.
MODEL_FLAGS = {
    "patch_size": "patch size in pixels",
    "in_chans": "input channels",
    "embed_dim": "width",
    "num_heads": "attention heads",
    "depth": "blocks",
    "mlp_ratio": "MLP width / width",
    "local_up_to_layer": "GPSA blocks (the first ones; 0: a DeiT)",
    "locality_strength": "alpha of the convolutional init",
    "local_init": "start GPSA heads as convolution-like positional attention",
}
# Set by the training system itself (from img_size, drop, drop_path, the data), never in model_kwargs.
RESERVED_KWARGS = {"img_size", "num_classes", "drop_rate", "drop_path_rate", "pretrained", "norm_layer"}


def help_line(name: str) -> str:
    """The help of key ``name`` with its default and allowed values, for ``--help``."""
    f = FIELDS[name]
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    parts = [f.metadata["help"]]
    if f.metadata["choices"]:
        parts.append("one of " + ", ".join(map(str, f.metadata["choices"])))
    if f.metadata["range"]:
        low, high, low_in, high_in = f.metadata["range"]
        parts.append(f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}")
    shown = ",".join(f"{v:g}" for v in default) if isinstance(default, tuple) else default
    parts.append(f"default: {shown if shown not in (None, {}) else 'none'}")
    return "; ".join(parts).replace("%", "%%")
