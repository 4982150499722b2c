"""Reading weights files safely: ours, timm's (``.pth``, ``.safetensors``) and the original authors'.

Ours is train.py's dict (built by ``convit.training.checkpoint.build_checkpoint``, marked ``"format": FORMAT``);
timm's are plain state dicts (`.pth`/`.bin` or `.safetensors`); the original ConViT/DeiT code
saves {"model": state_dict, ...}. All three share timm's parameter names.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .errors import UserError, first_line
from .timm_models import takes
from .variants import create_model

FORMAT = "convit-train-v1"
# The only non-tensor class that weights files we read may pickle: the original authors' (and
# timm's train.py) checkpoints store their argparse.Namespace beside the weights.
SAFE_GLOBALS = [argparse.Namespace]


def is_training_checkpoint(ckpt) -> bool:
    """True for a checkpoint train.py wrote (it names its model and the model's arguments)."""
    return isinstance(ckpt, dict) and ckpt.get("format") == FORMAT


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model."""


def read_checkpoint(path: str | Path) -> dict:
    """Load any supported checkpoint file onto the CPU, or raise one clear CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found; check the path")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint '{path}' is corrupt or not a safetensors file ({e}); re-download or re-create it"
            ) from None
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_global(e)
        if refused:
            raise CheckpointError(
                f"checkpoint '{path}' holds code or objects other than weights ({refused}) and will not "
                "be loaded; re-save only its state dict (torch.save(model.state_dict(), ...)) from a "
                "source you trust"
            ) from None
        raise _corrupt(path, e) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise _corrupt(path, e) from None


def _refused_global(e: Exception) -> str | None:
    """The class or function torch's safe unpickler refused to import, or None for other damage."""
    match = re.search(r"GLOBAL ([\w.]+)", str(e))
    return match.group(1) if match else None


def _corrupt(path, e) -> CheckpointError:
    first = first_line(e, 10**6)
    advice = {
        "best.pth": "use another checkpoint, e.g. the run's last.pth",
        "last.pth": "a run cannot continue from it: restore a copy, or start over with --overwrite "
        "(best.pth may still hold the best weights)",
    }.get(Path(path).name, "use another checkpoint")
    return CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({first[:120]}); {advice}")


def extract_state_dict(ckpt: dict, use_ema: bool = False) -> dict:
    """The model weights inside any supported checkpoint, without DDP's `module.` prefix."""
    if not isinstance(ckpt, dict):
        raise CheckpointError("checkpoint holds no dict of weights")
    keys = ["model_ema", "state_dict_ema"] if use_ema else ["model", "state_dict"]
    found = [ckpt[k] for k in keys if isinstance(ckpt.get(k), dict)]
    if use_ema and not found:
        raise CheckpointError("checkpoint has no EMA weights; drop --use-ema")
    sd = found[0] if found else ckpt
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError("checkpoint holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_weights(model: torch.nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """Load a state dict with strict=True; mismatches become one CheckpointError line."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except ValueError as e:  # the model's own check of a position embedding it cannot resample
        raise CheckpointError(f"{source} does not fit the model ({e})") from None
    except RuntimeError as e:
        missing, unexpected = _diff(model.state_dict(), state_dict)
        detail = (
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
            if missing or unexpected
            else str(e).strip().splitlines()[-1].strip()[:200]
        )
        raise CheckpointError(
            f"{source} does not fit the model ({detail}); build the model the checkpoint was trained with"
        ) from None


def _diff(expected: dict, got: dict):
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))


def inferred_settings(ckpt: dict, state_dict: dict) -> dict:
    """What a foreign checkpoint says about its model: ``model`` from timm's ``arch`` (its train.py records
    the ``--model`` it was given), ``img_size`` from its ``args.img_size`` / ``args.input_size``, else from the
    grid of its position embedding times the patch size. Keys it does not tell are left out."""
    settings = {}
    arch = ckpt.get("arch")
    if isinstance(arch, str) and arch:
        settings["model"] = arch.split(":")[-1].split("/")[-1].split(".")[0]  # hf-hub:timm/convit_tiny.fb_in1k
    args = ckpt.get("args")
    size = getattr(args, "img_size", None)
    input_size = getattr(args, "input_size", None)
    if isinstance(input_size, (list, tuple)) and len(input_size) == 3:
        size = tuple(int(v) for v in input_size[1:])
    if isinstance(size, (list, tuple)):
        size = tuple(int(v) for v in size)
        size = size[0] if len(set(size)) == 1 else size
    if size is None and "pos_embed" in state_dict and "patch_embed.proj.weight" in state_dict:
        side = int(round(state_dict["pos_embed"].shape[1] ** 0.5))
        if side * side == state_dict["pos_embed"].shape[1]:
            size = side * int(state_dict["patch_embed.proj.weight"].shape[-1])
    if size is not None:
        settings["img_size"] = size
    return settings


def model_from_checkpoint(
    path: str | Path, name: str | None = None, use_ema: bool = False, **overrides
) -> tuple[torch.nn.Module, dict]:
    """(model holding the checkpoint's weights, the checkpoint) for ours, timm's or the authors' files.

    Ours name their model and its arguments; timm's train.py's name theirs (``arch``) and its input size
    (``args``); for the others pass `name` (the variant). The number of classes and input channels are read
    off the weights, the image size off ``args`` or the position embedding (``inferred_settings``);
    `overrides` go to the model's constructor.
    """
    ckpt = read_checkpoint(path)
    state_dict = extract_state_dict(ckpt, use_ema=use_ema)
    if is_training_checkpoint(ckpt):
        name = name or ckpt["model_name"]
        kwargs = {k: v for k, v in ckpt["model_kwargs"].items() if k not in ("drop_rate", "drop_path_rate")}
        overrides = {k: v for k, v in overrides.items() if k != "img_size" or takes(name, k)}  # a CNN: any size
        model = create_model(name, ckpt["num_classes"], **{**kwargs, **overrides})
    else:
        inferred = inferred_settings(ckpt, state_dict)
        name = name or inferred.get("model")
        if "img_size" in inferred and "img_size" not in overrides:
            overrides = {**overrides, "img_size": inferred["img_size"]}
        if not name:
            raise CheckpointError(
                f"'{path}' is not from train.py; name its variant with --model, e.g. --model convit_small"
            )
        if "head.weight" not in state_dict or "patch_embed.proj.weight" not in state_dict:
            raise CheckpointError(f"'{path}' holds no ConViT weights (no head/patch_embed)")
        model = create_model(
            name,
            state_dict["head.weight"].shape[0],
            in_chans=state_dict["patch_embed.proj.weight"].shape[1],
            **overrides,
        )
    load_weights(model, state_dict, f"checkpoint '{path}'")
    return model, ckpt
