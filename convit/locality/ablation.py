"""Head ablation: the accuracy lost when one attention head's output is zeroed, for every block and head."""

import contextlib
import math
import sys
from collections.abc import Iterator

import torch
from torch import nn

from ..model import ConViT
from .adapters import resolve_model
from .measures import analysis_mode, model_device_dtype

# ---------------------------------------------------------------------------------------------- ablation


@contextlib.contextmanager
def ablate_head(model: nn.Module, block: int, head: int) -> Iterator[None]:
    """Zero one head's output (its channels of the attention output, before ``proj``) while inside."""
    attn = resolve_model(model).attention[block]
    head_dim = attn.proj.in_features // attn.num_heads
    channels = slice(head * head_dim, (head + 1) * head_dim)

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
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64, progress: bool = False
) -> tuple[float, torch.Tensor]:
    """Top-1 accuracy on (images, labels) and its drop, blocks x heads, when each head alone is zeroed.

    Drops are in accuracy units (0.05 = five points); negative when removing a head helps.
    On a ConViT the blocks before the ablated one run once per batch of images: their outputs are reused
    for every head of the later blocks (an exact shortcut, about twice as fast as a full forward per
    head); other models run a full forward per head.
    """
    resolved = resolve_model(model)
    model = resolved.model
    device, dtype = model_device_dtype(model)
    blocks, heads = len(resolved.attention), resolved.num_heads
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
    with analysis_mode(model):
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device=device, dtype=dtype)
            target = labels[start : start + batch_size].to(device)
            if isinstance(model, ConViT):
                x, grid_size = model.embed(batch)
                inputs = []  # the input of each block, class token joined, as the model's forward computes it
                for index, block in enumerate(model.blocks):
                    x = model.join_class_token(index, x)
                    inputs.append(x)
                    x = block(x, grid_size)

                def hits(y: torch.Tensor, target: torch.Tensor = target) -> int:
                    return (model.forward_head(model.norm(y)).argmax(dim=-1) == target).sum().item()

                def ablated_output(b: int, h: int, inputs=inputs, grid_size=grid_size) -> torch.Tensor:
                    with ablate_head(model, b, h):
                        y = model.blocks[b](inputs[b], grid_size)
                    for index in range(b + 1, blocks):
                        y = model.blocks[index](model.join_class_token(index, y), grid_size)
                    return y

                correct_base += hits(x)
            else:

                def hits(y: torch.Tensor, target: torch.Tensor = target) -> int:
                    return (y.argmax(dim=-1) == target).sum().item()

                def ablated_output(b: int, h: int, batch=batch) -> torch.Tensor:
                    with ablate_head(model, b, h):
                        return model(batch)

                correct_base += hits(model(batch))
            for b in range(blocks):
                for h in range(heads):
                    correct[b, h] += hits(ablated_output(b, h))
                    if progress_bar is not None:
                        progress_bar.update()
    if progress_bar is not None:
        progress_bar.close()
    base = correct_base / images.shape[0]
    return base, base - correct / images.shape[0]
