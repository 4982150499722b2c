"""What the locality command reads: models (by name, from checkpoints, timm's) and batches of images."""

import os

import torch
from torch import nn

from ..data import DigitsDataset, digits_split
from ..errors import error_line
from ..variants import VARIANTS, create_model
from ..weights import extract_state_dict, load_weights, model_from_checkpoint, read_checkpoint
from .adapters import resolve_model
from .errors import LocalityError

# ---------------------------------------------------------------------------------------------- inputs


def _timm_model(name: str, pretrained: bool = False, checkpoint: str | None = None) -> nn.Module:
    """Any timm model by name (pretrained=False unless asked), with a checkpoint's weights if given."""
    import timm

    if not timm.is_model(name):
        raise LocalityError(
            f"unknown model '{name}': neither a convit variant ({', '.join(VARIANTS)}) nor a timm model"
        )
    kwargs, state_dict = {}, None
    if checkpoint is not None:
        state_dict = extract_state_dict(read_checkpoint(checkpoint))
        if "head.weight" in state_dict:
            kwargs["num_classes"] = state_dict["head.weight"].shape[0]
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as error:  # a download or construction failure of someone else's model: one line
        line = error_line(error)
        raise LocalityError(f"cannot create timm model {name}: {line}") from None
    if state_dict is not None:
        load_weights(model, state_dict, f"checkpoint '{checkpoint}'")
    return model


def load_model(name: str | None = None, checkpoint: str | None = None, pretrained: bool = False) -> nn.Module:
    """A ConViT or any timm vision transformer by name, with weights from ``checkpoint`` if given.

    ConViT checkpoints are read by ``convit.weights.model_from_checkpoint``: ours (which name the model,
    so ``name`` may be None), timm's state dicts and safetensors, and the original authors' files.
    Other timm names (``deit_tiny_patch16_224``, ``vit_small_patch16_224`` ...) are built by timm.
    A model whose attention the measures cannot read is a LocalityError naming its class.
    """
    if checkpoint is not None and (not name or name in VARIANTS):
        model, ckpt = model_from_checkpoint(checkpoint, name)
        model.class_names = ckpt.get("class_names")  # ours store them; timm's and the authors' files do not
    elif not name:
        raise LocalityError("no model name: pass --model (or a --checkpoint written by train.py)")
    elif name in VARIANTS:
        model = create_model(name, num_classes=1000, pretrained=pretrained)
    else:
        model = _timm_model(name, pretrained, checkpoint)
    resolve_model(model)
    return model


def model_input_size(model: nn.Module) -> tuple[int, int]:
    # The patch embedding's size is the one the model was built (and trained) at; pretrained_cfg can be
    # stale when img_size was overridden at creation.
    size = getattr(resolve_model(model).model.patch_embed, "img_size", None)
    if size is None:
        size = model.pretrained_cfg["input_size"][-2:]
    return int(size[0]), int(size[1])


def model_in_chans(model: nn.Module) -> int:
    core = resolve_model(model).model
    return int(getattr(core, "in_chans", None) or core.patch_embed.proj.in_channels)


def digits_batch(model: nn.Module, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_images`` digits of the fixed validation split, as train.py feeds them, and labels."""
    _, (images, labels) = digits_split()
    if not 0 < num_images <= len(labels):
        raise LocalityError(f"--num-images must be between 1 and {len(labels)} for the digits validation split")
    size = model_input_size(model)
    if size[0] != size[1]:
        raise LocalityError(f"the digits are square; this model takes {size} images")
    dataset = DigitsDataset(images[:num_images], labels[:num_images], size[0], model_in_chans(model), train=False)
    return dataset.images, torch.tensor(dataset.targets)


def folder_batch(model: nn.Module, path: str, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_images`` evenly spaced images of an ImageFolder, with timm's eval transform for the model."""
    from timm.data import create_transform, resolve_data_config

    from ..data import UniqueImageFolder

    if not os.path.isdir(path):
        raise LocalityError(f"data folder {path} does not exist")
    config = resolve_data_config({"input_size": (model_in_chans(model), *model_input_size(model))}, model=model)
    try:
        dataset = UniqueImageFolder(path, transform=create_transform(**config))
    except (FileNotFoundError, OSError) as error:
        raise LocalityError(f"{path} is not an image folder (class sub-folders of images): {error}") from None
    if {"train", "val"} <= set(dataset.classes):
        raise LocalityError(
            f"'{path}' holds train/ and val/ folders, not class folders: pass {os.path.join(path, 'val')}"
        )
    count = min(num_images, len(dataset))
    indices = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
    samples = []
    for i in indices:
        try:
            samples.append(dataset[i])
        except OSError as error:  # PIL's UnidentifiedImageError, truncated files
            raise LocalityError(f"cannot read image {dataset.samples[i][0]}: {error}") from None
    return torch.stack([image for image, _ in samples]), torch.tensor([label for _, label in samples])


def parse_query(text: str | None, grid_size: tuple[int, int]) -> tuple[int, int]:
    if text is None:
        return grid_size[0] // 2, grid_size[1] // 2
    try:
        row, col = (int(part) for part in text.split(","))
    except ValueError:
        raise LocalityError(f"--query must be ROW,COL (two integers), got {text!r}") from None
    if not (0 <= row < grid_size[0] and 0 <= col < grid_size[1]):
        raise LocalityError(f"--query {row},{col} is outside the {grid_size[0]}x{grid_size[1]} patch grid")
    return row, col


def parse_images(text: str, count: int) -> list[int]:
    """``--images``: N (the first N images) or comma-separated indices (``3,`` for image 3 alone)."""
    try:
        if "," in text:
            indices = [int(part) for part in text.split(",") if part.strip()]
        else:
            indices = list(range(int(text)))
    except ValueError:
        raise LocalityError(f"--images must be a count N or indices I,J,... got {text!r}") from None
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise LocalityError(f"--images index {bad[0]} is outside the {count} images analysed (see --num-images)")
    return indices
