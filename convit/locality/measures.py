"""Locality analysis of vision transformers (d'Ascoli et al., 2021): attention maps, non-locality, gates,
the positional heads' centres and sharpness, attention rollout, head ablation.

Non-locality of block l, head h, over a batch of images and patch tokens only::

    D(l, h) = mean over images and queries i of  sum_j A_ij * ||p_i - p_j||

with patch positions p = (row, col) in units of patches. A is the attention the block really applies,
computed from the block's real input, captured by a forward pre-hook on its attention module (after
norm1, the position embedding and any class/register tokens), with the module's own projections. The
prefix tokens' rows and columns (class, register, distillation tokens) are dropped and each row
renormalised. Gates are sigmoid(lambda) per GPSA head: 1 is fully positional, 0 fully content.

Three families are supported, each by one small adapter: this package's ``ConViT``, timm's own
``ConVit`` (``timm.models.convit``) and timm's ``VisionTransformer`` family (ViT, DeiT, with or without
fused attention, q/k norms, register tokens), also inside DDP/DataParallel (``.module``) or
``torch.compile`` (``._orig_mod``).

The authors' per-head measures of a GPSA head with positional weights w = pos_proj.weight[h] (on the
offsets (dx, dy, dx^2 + dy^2)): the centre of its positional attention ``-(w0, w1) / (2 w2)`` in patch
units, (dx, dy) = (column, row) offset, and its sharpness ``-w2`` (the centre is NaN when the sharpness
is not positive: the score then has no peak).

    python -m convit.locality --model convit_tiny --data digits --out out/locality
    python -m convit.locality --log out/train/log.jsonl --out out/locality
"""

import contextlib
import math
import sys
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import GPSA, MHSA, relative_offsets
from ..errors import UserError
from ..model import ConViT


class LocalityError(UserError, ValueError):
    """Bad input to the locality measures or command (a query, a folder, a log, a model without attention)."""


# ---------------------------------------------------------------------------------------------- adapters


def _qk_softmax(attn: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) from a fused ``qkv`` projection (timm's Attention and MHSA), B x H x N x N."""
    B, N, _ = x.shape
    heads = attn.num_heads
    head_dim = getattr(attn, "head_dim", attn.qkv.out_features // (3 * heads))
    q, k, _ = attn.qkv(x).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = getattr(attn, "q_norm", nn.Identity())(q), getattr(attn, "k_norm", nn.Identity())(k)
    score = (q * attn.scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask

        score = maybe_add_mask(score, resolve_self_attn_mask(N, score, attn_mask))
    return score.softmax(dim=-1)


def _gpsa_parts(attn: nn.Module, x: torch.Tensor, grid_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Content (B x H x N x N) and positional (H x N x N) attention of a GPSA module (ours or timm's).

    Both GPSA classes share timm's parameter names: ``qk``, ``scale``, ``pos_proj``, ``gating_param``.
    """
    B, N, C = x.shape
    heads = attn.num_heads
    q, k = attn.qk(x).reshape(B, N, 2, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
    content = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
    rel = relative_offsets(grid_size, x.device)
    score = F.linear(rel, attn.pos_proj.weight.float(), attn.pos_proj.bias.float())
    return content, score.permute(2, 0, 1).softmax(dim=-1)


class _Adapter:
    """What the measures need of one model family: its attention modules and their attention matrices."""

    family = ""
    gpsa_types: tuple[type, ...] = ()
    attention_types: tuple[type, ...] = ()

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def probs(self, attn: nn.Module, args: tuple, kwargs: dict, grid_size: tuple[int, int]) -> torch.Tensor:
        """The attention the module applies to its input (hook arguments), B x H x N x N, prefix tokens included."""
        raise NotImplementedError

    def is_gpsa(self, attn: nn.Module) -> bool:
        return isinstance(attn, self.gpsa_types)

    def local_up_to_layer(self, model: nn.Module) -> int:
        return int(getattr(model, "local_up_to_layer", 0))


class _OursAdapter(_Adapter):
    family = "convit"
    gpsa_types = (GPSA,)
    attention_types = (GPSA, MHSA)

    def matches(self, model):
        return isinstance(model, ConViT)

    def probs(self, attn, args, kwargs, grid_size):
        return attn.attention_probs(args[0], grid_size)


class _TimmConVitAdapter(_Adapter):
    family = "timm convit"

    def __init__(self):
        from timm.models import convit

        self.model_type = convit.ConVit
        self.gpsa_types = (convit.GPSA,)
        self.attention_types = (convit.GPSA, convit.MHSA)

    def matches(self, model):
        return isinstance(model, self.model_type)

    def probs(self, attn, args, kwargs, grid_size):
        x = args[0]
        if isinstance(attn, self.gpsa_types):
            if attn.rel_indices.shape[1] != x.shape[1]:  # what its forward does first anyway
                attn.rel_indices = attn.get_rel_indices(x.shape[1])
            return attn.get_attention(x)
        return _qk_softmax(attn, x)


class _TimmViTAdapter(_Adapter):
    family = "timm vision_transformer"

    def __init__(self):
        from timm.layers import Attention
        from timm.models.vision_transformer import VisionTransformer

        self.model_type = VisionTransformer
        self.attention_types = (Attention,)

    def matches(self, model):
        return isinstance(model, self.model_type)

    def probs(self, attn, args, kwargs, grid_size):
        return _qk_softmax(attn, args[0], kwargs.get("attn_mask", args[1] if len(args) > 1 else None))


def _adapters() -> list[_Adapter]:
    return [_OursAdapter(), _TimmConVitAdapter(), _TimmViTAdapter()]


class _Model(NamedTuple):
    model: nn.Module  # unwrapped
    adapter: _Adapter
    attention: list[nn.Module]  # one per block

    @property
    def num_heads(self) -> int:
        return int(self.attention[0].num_heads)

    def gpsa(self) -> list[int]:
        return [i for i, attn in enumerate(self.attention) if self.adapter.is_gpsa(attn)]


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel wrappers and torch.compile modules."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _resolve(model: nn.Module) -> _Model:
    """The unwrapped model, its family's adapter and its attention modules; a LocalityError if unsupported."""
    model = _unwrap(model)
    for adapter in _adapters():
        if adapter.matches(model):
            attention = [getattr(block, "attn", None) for block in getattr(model, "blocks", [])]
            for index, attn in enumerate(attention):
                if not isinstance(attn, adapter.attention_types):
                    raise LocalityError(
                        f"{type(model).__name__} block {index} has attention {type(attn).__name__}, which the "
                        f"locality measures do not support (they read {adapter.family}'s "
                        f"{', '.join(t.__name__ for t in adapter.attention_types)})"
                    )
            if not attention:
                raise LocalityError(f"{type(model).__name__} has no attention blocks")
            return _Model(model, adapter, attention)
    raise LocalityError(
        f"{type(model).__name__} has no attention the locality measures support: expected a ConViT, "
        "timm's ConVit or a timm VisionTransformer (ViT, DeiT)"
    )


def patch_grid(model: nn.Module, image_size: Sequence[int]) -> tuple[int, int]:
    """The (rows, cols) patch grid the model makes of an image of ``image_size`` (height, width)."""
    embed = _resolve(model).model.patch_embed
    size = (int(image_size[-2]), int(image_size[-1]))
    if hasattr(embed, "dynamic_feat_size"):
        rows, cols = embed.dynamic_feat_size(size)
    else:
        rows, cols = embed.grid_size
    return int(rows), int(cols)


# ---------------------------------------------------------------------------------------------- capture


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


def _patches_only(probs: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Drop the prefix tokens (class, registers: they come first) and renormalise the rows."""
    prefix = probs.shape[-1] - num_patches
    if prefix < 0:
        raise LocalityError(f"attention over {probs.shape[-1]} tokens cannot hold {num_patches} patches")
    if prefix:
        probs = probs[..., prefix:, prefix:]
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


class Capture(NamedTuple):
    """Attention captured from a forward pass over patch tokens (float32, CPU).

    ``maps``: one tensor per block, heads x N x N averaged over the images (or B x heads x N x N per
    image); ``content``/``positional``: the two parts of each GPSA block by block index, before gating
    (content averaged over the images like ``maps``; positional does not depend on the image).
    """

    maps: list[torch.Tensor]
    grid_size: tuple[int, int]
    content: dict[int, torch.Tensor]
    positional: dict[int, torch.Tensor]


def capture(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 32,
    progress: bool = False,
    per_image: bool = False,
    parts: bool = True,
) -> Capture:
    """Run ``model`` on ``images`` and capture every block's attention (and, with ``parts``, GPSA's content and
    positional parts) through hooks."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise LocalityError(f"images must be a non-empty batch shaped (B, C, H, W), got shape {list(images.shape)}")
    resolved = _resolve(model)
    core, adapter = resolved.model, resolved.adapter
    grid_size = patch_grid(core, images.shape)
    num_patches = grid_size[0] * grid_size[1]
    device, dtype = _model_device_dtype(core)
    store: dict[tuple[str, int], list[torch.Tensor]] = {}

    def keep(kind: str, index: int, value: torch.Tensor) -> None:
        value = value.float()
        if per_image:
            store.setdefault((kind, index), []).append(value.cpu())
        else:
            total = value.sum(dim=0).cpu()
            previous = store.get((kind, index))
            store[(kind, index)] = [total if previous is None else previous[0] + total]

    def make_hook(index: int):
        def hook(attn: nn.Module, args: tuple, kwargs: dict) -> None:
            keep("maps", index, _patches_only(adapter.probs(attn, args, kwargs, grid_size), num_patches))
            if parts and adapter.is_gpsa(attn):
                content, positional = _gpsa_parts(attn, args[0], grid_size)
                keep("content", index, content)
                store[("positional", index)] = [positional.float().cpu()]

        return hook

    handles = []
    with _analysis_mode(core):
        try:
            for index, attn in enumerate(resolved.attention):
                handles.append(attn.register_forward_pre_hook(make_hook(index), with_kwargs=True))
            for chunk in _chunks(images, batch_size, progress, "attention maps"):
                core(chunk.to(device=device, dtype=dtype))
        finally:
            for handle in handles:
                handle.remove()

    def gather(kind: str, index: int) -> torch.Tensor:
        parts = store[(kind, index)]
        return torch.cat(parts) if per_image else parts[0] / images.shape[0]

    blocks = range(len(resolved.attention))
    gpsa = resolved.gpsa() if parts else []
    return Capture(
        [gather("maps", i) for i in blocks],
        grid_size,
        {i: gather("content", i) for i in gpsa},
        {i: store[("positional", i)][0] for i in gpsa},
    )


def _attention_maps(
    model: nn.Module, images: torch.Tensor, batch_size: int = 32, progress: bool = False
) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """Image-averaged patch-only attention maps (H x N x N per block, float32 on CPU) and the patch grid."""
    captured = capture(model, images, batch_size, progress)
    return captured.maps, captured.grid_size


def attention_maps(
    model: nn.Module, images: torch.Tensor, batch_size: int = 32, progress: bool = False, per_image: bool = False
) -> list[torch.Tensor]:
    """One tensor per block, heads x N x N: the attention over patch tokens, averaged over ``images``.

    Captured from the model's own forward pass; the prefix tokens' (class, register) rows and columns
    are dropped and each row renormalised to sum to 1. With ``per_image``, B x heads x N x N per block.
    Returned as float32 on the CPU.
    """
    return capture(model, images, batch_size, progress, per_image).maps


# ---------------------------------------------------------------------------------------------- measures


def patch_distances(grid_size: tuple[int, int]) -> torch.Tensor:
    """Euclidean distance between patches i and j in patch units, N x N, patches numbered row by row."""
    return relative_offsets(grid_size, torch.device("cpu"))[..., 2].sqrt()


def _nonlocality_from_maps(maps: Sequence[torch.Tensor], grid_size: tuple[int, int]) -> torch.Tensor:
    distance = patch_distances(grid_size)
    # D is linear in A, so the mean over images of per-image D is D of the image-averaged map.
    if not maps:
        return torch.zeros(0, 0)
    return torch.stack([(attn * distance).sum(dim=-1).mean(dim=-1) for attn in maps])


def nonlocality(model: nn.Module, images: torch.Tensor, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
    """Non-locality D(l, h) in patch units, shape blocks x heads (see the module docstring)."""
    maps, grid_size = _attention_maps(model, images, batch_size, progress)
    return _nonlocality_from_maps(maps, grid_size)


def _parts_nonlocality(captured: Capture, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    gpsa = sorted(captured.content)
    if not gpsa:
        return torch.zeros(0, num_heads), torch.zeros(0, num_heads)
    content = _nonlocality_from_maps([captured.content[i] for i in gpsa], captured.grid_size)
    positional = _nonlocality_from_maps([captured.positional[i] for i in gpsa], captured.grid_size)
    return content, positional


def nonlocality_parts(
    model: nn.Module, images: torch.Tensor, batch_size: int = 32, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-locality of each GPSA head's content and positional attention before gating, GPSA-blocks x heads each."""
    return _parts_nonlocality(capture(model, images, batch_size, progress), _resolve(model).num_heads)


def gates(model: nn.Module) -> torch.Tensor:
    """sigmoid(lambda) of every GPSA head, shape GPSA-blocks x heads (float32, CPU); 0 rows for a ViT."""
    resolved = _resolve(model)
    values = [torch.sigmoid(resolved.attention[i].gating_param.detach().float()).cpu() for i in resolved.gpsa()]
    return torch.stack(values) if values else torch.zeros(0, resolved.num_heads)


def _pos_weights(model: nn.Module) -> torch.Tensor:
    resolved = _resolve(model)
    weights = [resolved.attention[i].pos_proj.weight.detach().float().cpu() for i in resolved.gpsa()]
    return torch.stack(weights) if weights else torch.zeros(0, resolved.num_heads, 3)


def positional_centres(model: nn.Module) -> torch.Tensor:
    """Centre (dx, dy) of each GPSA head's positional attention, -(w0, w1) / (2 w2), GPSA-blocks x heads x 2.

    In patch units: dx is the column offset, dy the row offset from the query patch. NaN where the
    sharpness -w2 is not positive (no peak).
    """
    weight = _pos_weights(model)
    centre = -weight[..., :2] / (2 * weight[..., 2:3])
    return centre.masked_fill((weight[..., 2:3] >= 0).expand_as(centre), float("nan"))


def positional_sharpness(model: nn.Module) -> torch.Tensor:
    """Sharpness -w2 of each GPSA head's positional attention (locality_strength after local init), GPSA-blocks x heads."""
    return -_pos_weights(model)[..., 2]


def attention_rollout(maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Attention rollout (Abnar & Zuidema, 2020) up to each block: one N x N (or B x N x N) tensor per block.

    Per block the heads are averaged, the identity added (the residual) and rows renormalised; the
    rollout up to block l is the product of these matrices from block l down to block 0. ``maps`` are
    per-block attention maps, heads x N x N or B x heads x N x N (GPSA's gated maps for GPSA blocks).
    """
    rollouts, total = [], None
    for attn in maps:
        mixed = attn.float().mean(dim=-3)
        mixed = mixed + torch.eye(mixed.shape[-1])
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        total = mixed if total is None else mixed @ total
        rollouts.append(total)
    return rollouts


def _finite(values: torch.Tensor) -> list:
    """Nested lists for JSON, non-finite numbers as None."""
    if values.dim() == 0:
        value = values.item()
        return value if math.isfinite(value) else None
    return [_finite(v) for v in values]


def _report(model: nn.Module, captured: Capture, num_images: int) -> dict:
    resolved = _resolve(model)
    maps, grid_size = captured.maps, captured.grid_size
    distance = _nonlocality_from_maps(maps, grid_size)
    gate, centre, sharp = gates(model), positional_centres(model), positional_sharpness(model)
    content, positional = _parts_nonlocality(captured, resolved.num_heads)
    gpsa = resolved.gpsa()
    blocks = []
    for index in range(len(resolved.attention)):
        row = {"block": index, "type": "GPSA" if index in gpsa else "MHSA", "nonlocality": distance[index].tolist()}
        if index in gpsa:
            g = gpsa.index(index)
            row.update(
                gate=gate[g].tolist(),
                nonlocality_content=content[g].tolist(),
                nonlocality_positional=positional[g].tolist(),
                centre=_finite(centre[g]),
                sharpness=sharp[g].tolist(),
            )
        else:
            row.update(gate=None, nonlocality_content=None, nonlocality_positional=None, centre=None, sharpness=None)
        blocks.append(row)
    return {
        "architecture": type(resolved.model).__name__,
        "family": resolved.adapter.family,
        "grid_size": list(grid_size),
        "num_images": num_images,
        "num_heads": resolved.num_heads,
        "num_prefix_tokens": int(getattr(resolved.model, "num_prefix_tokens", 0)),
        "local_up_to_layer": resolved.adapter.local_up_to_layer(resolved.model),
        "nonlocality": distance.tolist(),
        "gates": gate.tolist(),
        "nonlocality_content": content.tolist(),
        "nonlocality_positional": positional.tolist(),
        "centres": _finite(centre),
        "sharpness": sharp.tolist(),
        "blocks": blocks,
    }


def locality_report(model: nn.Module, images: torch.Tensor, batch_size: int = 32, progress: bool = False) -> dict:
    """A JSON-serialisable dict: non-locality (blocks x heads), gates, the GPSA parts' non-locality, centres
    and sharpness (GPSA-blocks x heads), and all of them per block under ``blocks``."""
    return _report(model, capture(model, images, batch_size, progress), images.shape[0])


def epoch_locality(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> dict[str, list]:
    """What a training loop logs each epoch under ``locality``: non-locality (blocks x heads), ``gates``,
    ``nonlocality_content``/``nonlocality_positional``, ``sharpness`` (GPSA-blocks x heads) and
    ``centres`` (GPSA-blocks x heads x (dx, dy), None where a head has no peak)."""
    report = locality_report(model, images, batch_size)
    keys = ("nonlocality", "gates", "nonlocality_content", "nonlocality_positional", "centres", "sharpness")
    return {key: report[key] for key in keys}


# ---------------------------------------------------------------------------------------------- ablation


@contextlib.contextmanager
def _ablate_head(model: nn.Module, block: int, head: int) -> Iterator[None]:
    """Zero one head's output (its channels of the attention output, before ``proj``) while inside."""
    attn = _resolve(model).attention[block]
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
    resolved = _resolve(model)
    model = resolved.model
    device, dtype = _model_device_dtype(model)
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
    with _analysis_mode(model):
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
                    with _ablate_head(model, b, h):
                        y = model.blocks[b](inputs[b], grid_size)
                    for index in range(b + 1, blocks):
                        y = model.blocks[index](model.join_class_token(index, y), grid_size)
                    return y

                correct_base += hits(x)
            else:

                def hits(y: torch.Tensor, target: torch.Tensor = target) -> int:
                    return (y.argmax(dim=-1) == target).sum().item()

                def ablated_output(b: int, h: int, batch=batch) -> torch.Tensor:
                    with _ablate_head(model, b, h):
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
