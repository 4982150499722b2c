"""Locality analysis of ConViT (d'Ascoli et al., 2021): attention maps, non-locality, gates, head ablation.

Non-locality of block l, head h, over a batch of images and patch tokens only::

    D(l, h) = mean over images and queries i of  sum_j A_ij * ||p_i - p_j||

with patch positions p = (row, col) in units of patches. A is the attention the block really applies,
captured by a forward pre-hook on its attention module (input after norm1, position embedding and
class token); in the self-attention blocks the class token's row and column are dropped and each row
renormalised. Gates are sigmoid(lambda) per GPSA head: 1 is fully positional, 0 fully content.

    python -m convit.locality --model convit_tiny --data digits --out out/locality
    python -m convit.locality --log out/train/log.jsonl --out out/locality
"""

import contextlib
import math
import sys
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..attention import GPSA, relative_offsets
from ..errors import UserError
from ..model import ConViT


class LocalityError(UserError, ValueError):
    """Bad input to the locality measures or command (a query, a folder, a log, a model without attention)."""


@contextlib.contextmanager
def _analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad inside; every module's own training flag restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def _unwrap(model: nn.Module) -> ConViT:
    """The ConViT inside a DistributedDataParallel / DataParallel wrapper or a torch.compile module."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    if not isinstance(model, ConViT):
        raise LocalityError(f"expected a ConViT, got {type(model).__name__}")
    return model


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def _chunks(images: torch.Tensor, batch_size: int, progress: bool, desc: str) -> Iterator[torch.Tensor]:
    starts = range(0, images.shape[0], batch_size)
    if progress and len(starts) > 1:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", file=sys.stderr)
    for start in starts:
        yield images[start : start + batch_size]


def _attention_maps(
    model: ConViT, images: torch.Tensor, batch_size: int = 32, progress: bool = False
) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """Image-averaged patch-only attention maps (H x N x N per block, float32 on CPU) and the patch grid."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise LocalityError(f"images must be a non-empty batch shaped (B, C, H, W), got shape {list(images.shape)}")
    model = _unwrap(model)
    device, dtype = _model_device_dtype(model)
    sums: dict[int, torch.Tensor] = {}
    grid: list[tuple[int, int]] = []

    def make_hook(index: int):
        def hook(attn: nn.Module, args: tuple) -> None:
            x, grid_size = args[0], tuple(args[1])
            probs = attn.attention_probs(x, grid_size).float()
            num_patches = grid_size[0] * grid_size[1]
            if probs.shape[-1] == num_patches + 1:  # class token first: drop it, renormalise the rows
                probs = probs[..., 1:, 1:]
                probs = probs / probs.sum(dim=-1, keepdim=True)
            total = probs.sum(dim=0)
            sums[index] = total if index not in sums else sums[index] + total
            if index == 0:
                grid.append(grid_size)

        return hook

    handles = []
    with _analysis_mode(model):
        try:
            for index, block in enumerate(model.blocks):
                handles.append(block.attn.register_forward_pre_hook(make_hook(index)))
            for chunk in _chunks(images, batch_size, progress, "attention maps"):
                model(chunk.to(device=device, dtype=dtype))
        finally:
            for handle in handles:
                handle.remove()
    maps = [sums[i].div_(images.shape[0]).cpu() for i in range(len(model.blocks))]
    return maps, grid[0]


def attention_maps(
    model: ConViT, images: torch.Tensor, batch_size: int = 32, progress: bool = False
) -> list[torch.Tensor]:
    """One tensor per block, heads x N x N: the attention over patch tokens, averaged over ``images``.

    Captured from the model's own forward pass; in the blocks after the class token joins, its row and
    column are dropped and each row renormalised to sum to 1. Returned as float32 on the CPU.
    """
    return _attention_maps(model, images, batch_size, progress)[0]


def patch_distances(grid_size: tuple[int, int]) -> torch.Tensor:
    """Euclidean distance between patches i and j in patch units, N x N, patches numbered row by row."""
    return relative_offsets(grid_size, torch.device("cpu"))[..., 2].sqrt()


def _nonlocality_from_maps(maps: Sequence[torch.Tensor], grid_size: tuple[int, int]) -> torch.Tensor:
    distance = patch_distances(grid_size)
    # D is linear in A, so the mean over images of per-image D is D of the image-averaged map.
    return torch.stack([(attn * distance).sum(dim=-1).mean(dim=-1) for attn in maps])


def nonlocality(model: ConViT, images: torch.Tensor, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
    """Non-locality D(l, h) in patch units, shape blocks x heads (see the module docstring)."""
    maps, grid_size = _attention_maps(model, images, batch_size, progress)
    return _nonlocality_from_maps(maps, grid_size)


def gates(model: ConViT) -> torch.Tensor:
    """sigmoid(lambda) of every GPSA head, shape GPSA-blocks x heads (float32, CPU)."""
    model = _unwrap(model)
    values = [block.attn.gate().detach().float().cpu() for block in model.blocks if isinstance(block.attn, GPSA)]
    return torch.stack(values) if values else torch.zeros(0, model.num_heads)


def _report(model: ConViT, maps: Sequence[torch.Tensor], grid_size: tuple[int, int], num_images: int) -> dict:
    distance = _nonlocality_from_maps(maps, grid_size)
    gate = gates(model)
    blocks = []
    for index, block in enumerate(model.blocks):
        is_gpsa = isinstance(block.attn, GPSA)
        blocks.append(
            {
                "block": index,
                "type": "GPSA" if is_gpsa else "MHSA",
                "nonlocality": distance[index].tolist(),
                "gate": gate[index].tolist() if is_gpsa else None,
            }
        )
    return {
        "grid_size": list(grid_size),
        "num_images": num_images,
        "num_heads": model.num_heads,
        "local_up_to_layer": model.local_up_to_layer,
        "nonlocality": distance.tolist(),
        "gates": gate.tolist(),
        "blocks": blocks,
    }


def locality_report(model: ConViT, images: torch.Tensor, batch_size: int = 32, progress: bool = False) -> dict:
    """A JSON-serialisable dict: non-locality (blocks x heads), gates (GPSA-blocks x heads), and both per block."""
    maps, grid_size = _attention_maps(model, images, batch_size, progress)
    return _report(_unwrap(model), maps, grid_size, images.shape[0])


def epoch_locality(model: ConViT, images: torch.Tensor, batch_size: int = 32) -> dict[str, list[list[float]]]:
    """What a training loop logs each epoch under ``locality``: ``{"nonlocality": [[...]], "gates": [[...]]}``."""
    return {"nonlocality": nonlocality(model, images, batch_size).tolist(), "gates": gates(model).tolist()}


@contextlib.contextmanager
def _ablate_head(model: ConViT, block: int, head: int) -> Iterator[None]:
    """Zero one head's output (its channels of the attention output, before ``proj``) while inside."""
    attn = model.blocks[block].attn
    channels = slice(head * attn.head_dim, (head + 1) * attn.head_dim)

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0].clone()
        x[..., channels] = 0
        return (x,) + tuple(args[1:])

    handle = attn.proj.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def head_ablation(
    model: ConViT, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64, progress: bool = False
) -> tuple[float, torch.Tensor]:
    """Top-1 accuracy on (images, labels) and its drop, blocks x heads, when each head alone is zeroed.

    Drops are in accuracy units (0.05 = five points); negative when removing a head helps.
    The blocks before the ablated one run once per batch of images: their outputs are reused for every
    head of the later blocks (an exact shortcut, about twice as fast as a full forward per head).
    """
    model = _unwrap(model)
    device, dtype = _model_device_dtype(model)
    blocks, heads = len(model.blocks), model.num_heads
    correct_base, correct = 0, torch.zeros(blocks, heads)
    progress_bar = None
    if progress:
        from tqdm import tqdm

        progress_bar = tqdm(
            total=math.ceil(images.shape[0] / batch_size) * blocks * heads,
            desc="head ablation",
            unit="head",
            file=sys.stderr,
        )
    with _analysis_mode(model):
        for start in range(0, images.shape[0], batch_size):
            x, grid_size = model.embed(images[start : start + batch_size].to(device=device, dtype=dtype))
            target = labels[start : start + batch_size].to(device)
            inputs = []  # the input of each block, class token joined, as the model's forward computes it
            for index, block in enumerate(model.blocks):
                x = model.join_class_token(index, x)
                inputs.append(x)
                x = block(x, grid_size)

            def hits(y: torch.Tensor, target: torch.Tensor = target) -> int:
                return (model.forward_head(model.norm(y)).argmax(dim=-1) == target).sum().item()

            correct_base += hits(x)
            for b in range(blocks):
                for h in range(heads):
                    with _ablate_head(model, b, h):
                        y = model.blocks[b](inputs[b], grid_size)
                    for index in range(b + 1, blocks):
                        y = model.blocks[index](model.join_class_token(index, y), grid_size)
                    correct[b, h] += hits(y)
                    if progress_bar is not None:
                        progress_bar.update()
    if progress_bar is not None:
        progress_bar.close()
    base = correct_base / images.shape[0]
    return base, base - correct / images.shape[0]
