"""Starting a run from trained weights: fine-tuning at another resolution, transfer to other classes, freezing.

``--finetune SOURCE`` reads SOURCE with ``convit.weights`` (ours, timm's ``.pth``/``.safetensors``,
the original authors' ``{"model": ...}``) or, for ``pretrained``, timm's published weights of the
recipe's variant (``--pretrained-file PATH`` reads them offline). Every tensor but the head must fit
the recipe's model; the position embedding is resampled to the recipe's grid by the model itself;
the head is kept when the classes match and re-initialised otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError, first_line
from ..model import ConViT
from ..weights import CheckpointError, extract_state_dict, is_training_checkpoint, read_checkpoint
from .config import Config

HEAD_KEYS = ("head.weight", "head.bias")


class FinetuneError(UserError):
    """Weights that cannot start this run."""


@dataclass
class Source:
    """Weights to start from, where they came from, and the class names they carry (None: none)."""

    state_dict: dict
    description: str
    class_names: list[str] | None
    notes: list[str] = field(default_factory=list)


def read_source(cfg: Config) -> Source:
    """The weights ``cfg.finetune`` names, read onto the CPU."""
    if cfg.finetune == "pretrained":
        if cfg.pretrained_file:
            sd = _state_dict(cfg.pretrained_file)
            return Source(sd, f"timm's {cfg.model} weights from '{cfg.pretrained_file}'", None)
        return Source(_hub_weights(cfg.model), f"timm's published {cfg.model} weights (hub)", None)
    ckpt = read_checkpoint(cfg.finetune)
    sd = _state_dict(cfg.finetune, ckpt)
    if is_training_checkpoint(ckpt):
        return Source(sd, f"'{cfg.finetune}' ({ckpt.get('model_name')}, train.py)", ckpt.get("class_names"))
    kind = "the original authors' checkpoint" if isinstance(ckpt.get("model"), dict) else "a state dict"
    return Source(sd, f"'{cfg.finetune}' ({kind})", None)


def _state_dict(path, ckpt=None) -> dict:
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    try:
        return extract_state_dict(ckpt)
    except CheckpointError as e:
        raise FinetuneError(f"--finetune '{path}': {e}") from None


def _hub_weights(name: str) -> dict:
    """timm's published weights of ``name`` through the hub, or one line saying why not."""
    import timm

    from ..variants import PUBLISHED_WEIGHTS, VARIANTS, create_model

    if name in VARIANTS and name not in PUBLISHED_WEIGHTS:
        raise FinetuneError(
            f"timm publishes no weights for {name}; --finetune pretrained works for {', '.join(PUBLISHED_WEIGHTS)}"
        )
    published = name in VARIANTS or bool(timm.list_pretrained(name.split(".")[0] + ".*"))
    if not published:
        raise FinetuneError(f"timm publishes no weights for {name}; pass a weights file with --pretrained-file PATH")
    try:
        if name in VARIANTS:
            return create_model(name, 1000, pretrained=True).state_dict()
        return timm.create_model(name, pretrained=True).state_dict()
    except UserError:
        raise
    except Exception as e:  # the hub's many network/cache errors
        first = first_line(e)
        raise FinetuneError(
            f"timm's {name} weights could not be fetched ({type(e).__name__}: {first}); "
            "download them elsewhere and pass --pretrained-file PATH"
        ) from None


def prepare(source: Source, model: torch.nn.Module, class_names: list[str]) -> tuple[dict, list[str]]:
    """(the state dict to load, notes): every non-head tensor checked against ``model``; the head kept or dropped.

    The position embedding may hold another grid (the model resamples it when loading); every other
    tensor must have the model's shape, else one FinetuneError line names what does not fit.
    """
    source = converted_source(source, model)  # a ViT/DeiT's weights for a ConViT: converted (convit.convert)
    sd = dict(source.state_dict)
    expected = model.state_dict()
    heads = head_keys(model)
    body = {k for k in expected if k not in heads}
    missing = sorted(body - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        what = "is not a ConViT" if "patch_embed.proj.weight" not in sd else "does not fit the recipe's model"
        if not isinstance(model, ConViT):
            what = f"does not fit the recipe's {type(model).__name__}"
        raise FinetuneError(
            f"--finetune {source.description} {what} ({_shape(model)}): "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    for key in sorted(body):
        if expected[key].is_floating_point() and not sd[key].is_floating_point():
            raise FinetuneError(
                f"--finetune {source.description} holds {key} as {sd[key].dtype}, not floating point: loading "
                "it would truncate the weights; pass the float weights file this model was saved to"
            )
        got, want = tuple(sd[key].shape), tuple(expected[key].shape)
        if key == "pos_embed" and len(got) == 3 and got[-1] == want[-1]:
            continue  # another grid: resampled by the model
        if got != want:
            raise FinetuneError(
                f"--finetune {source.description} does not fit the recipe's model: {key} is {list(got)} "
                f"there, {list(want)} here; set the recipe's model_kwargs (width, heads, depth) to the source's"
            )
    notes = list(source.notes)
    weight = next((k for k in heads if k.endswith(".weight")), "head.weight")
    n = len(class_names)
    source_classes = sd[weight].shape[0] if weight in sd else 0
    if source.class_names is None:
        notes.append(f"{source.description} carries no class names")
    if source_classes != n:
        notes.append(f"the head is re-initialised: the source predicts {source_classes} classes, the data {n}")
        keep_head = False
    elif source.class_names is not None and list(source.class_names) != list(class_names):
        notes.append("the head is re-initialised: the source's class names differ from the data's")
        keep_head = False
    else:
        keep_head = tuple(sd[weight].shape) == tuple(expected[weight].shape)
        if keep_head:
            notes.append(f"the source's head ({n} classes) is kept")
    if not keep_head:
        sd = {k: v for k, v in sd.items() if k not in heads}
    return sd, notes


def load_source(model: torch.nn.Module, source: Source, class_names: list[str]) -> list[str]:
    """Load ``source`` into ``model`` (head kept or left at its fresh init); returns the notes to print."""
    sd, notes = prepare(source, model, class_names)
    try:
        result = model.load_state_dict(sd, strict=False)
    except (ValueError, RuntimeError) as e:
        raise FinetuneError(f"--finetune {source.description} does not fit the model ({e})") from None
    left = [k for k in result.missing_keys if k not in head_keys(model)]
    if left or result.unexpected_keys:  # prepare() has checked; this guards the invariant
        raise FinetuneError(
            f"--finetune {source.description}: missing {left[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    return notes  # a dropped head keeps the fresh initialisation the model was built with


def head_keys(model: torch.nn.Module) -> tuple[str, ...]:
    """The state-dict keys of the model's classifier (timm's ``pretrained_cfg["classifier"]``: ``head``, ``fc``, ...)."""
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or "head"
    names = (names,) if isinstance(names, str) else tuple(names)
    keys = tuple(k for k in model.state_dict() if any(k.startswith(n + ".") for n in names))
    return keys or HEAD_KEYS


def _shape(model: torch.nn.Module) -> str:
    if hasattr(model, "blocks") and hasattr(model, "embed_dim"):
        return f"{len(model.blocks)} blocks, width {model.embed_dim}"
    return type(model).__name__


def converted_source(source: Source, model: torch.nn.Module) -> Source:
    """``source`` unchanged, or, when it holds a timm ViT/DeiT's (or a DeiT twin's) weights and ``model`` has GPSA
    blocks, those weights converted with ``convit.convert`` (gates at its default), with a note saying so."""
    from ..convert import DEFAULT_GATE, ConversionError, convert_state_dict, is_vit_state_dict

    if not (isinstance(model, ConViT) and model.local_up_to_layer > 0 and is_vit_state_dict(source.state_dict)):
        return source
    try:
        sd = convert_state_dict(source.state_dict, model)
    except ConversionError as e:
        raise FinetuneError(f"--finetune {source.description}: {e}") from None
    sd = {k: v for k, v in sd.items() if k in source.state_dict or k not in HEAD_KEYS}
    note = (
        f"{source.description} holds ViT/DeiT weights: converted to ConViT (qkv split into qk and v in the first "
        f"{model.local_up_to_layer} blocks, convolutional pos_proj, gates sigmoid = {DEFAULT_GATE}; convit.from_vit)"
    )
    return Source(sd, source.description, source.class_names, [*source.notes, note])


def _frozen(name: str, mode: str) -> bool:
    if mode == "head_only":
        return not name.startswith("head.")
    if mode == "attn_only":  # Touvron et al. 2022 ("Three things"): attention weights only, and the new head
        return not (name.startswith("head.") or ".attn." in name)
    if mode == "gates":
        return name.endswith("gating_param")
    if mode == "pos_proj":
        return ".pos_proj." in name
    return False


def apply_freeze(model: torch.nn.Module, mode: str) -> int:
    """Set ``requires_grad=False`` on the parameters ``mode`` freezes; returns how many tensors were frozen."""
    if mode == "none":
        return 0
    count = 0
    for name, p in model.named_parameters():
        if _frozen(name, mode):
            p.requires_grad_(False)
            count += 1
    if count == 0:
        raise FinetuneError(f"--freeze {mode} matches no parameter of this model")
    if not any(p.requires_grad for p in model.parameters()):
        raise FinetuneError(f"--freeze {mode} leaves nothing to train")
    return count
