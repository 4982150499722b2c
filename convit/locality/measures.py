"""Locality analysis of vision transformers (d'Ascoli et al., 2021): attention maps, non-locality, gates,
the positional heads' centres and sharpness, attention rollout, head ablation.

Non-locality of block l, head h, over a batch of images and patch tokens only::

    D(l, h) = mean over images and queries i of  sum_j A_ij * ||p_i - p_j||

with patch positions p = (row, col) in units of patches. A is the attention the block really applies to
its real input (after norm1, the position embedding and any class/register tokens): this package's
layers hand over the probabilities their reference path computes in the forward pass; timm's modules
have theirs recomputed by a forward pre-hook from that input with the module's own projections. The
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
import sys
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..attention import relative_offsets
from .adapters import patch_grid, resolve_model
from .errors import LocalityError

# ---------------------------------------------------------------------------------------------- capture


@contextlib.contextmanager
def analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad inside; every module's own training flag restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
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


class AttentionRecorder:
    """Captures every block's attention (and, with ``parts``, GPSA's content and positional parts) while the
    model runs on batches handed to ``forward``: the model's own forward pass, so its outputs are the
    model's. ``result()`` is the ``Capture`` over all the images seen so far.

        recorder = AttentionRecorder(model, images.shape[-2:])
        logits = recorder.forward(images)        # as many batches as wanted
        captured = recorder.result()
    """

    def __init__(self, model: nn.Module, image_size: Sequence[int], per_image: bool = False, parts: bool = True):
        self.resolved = resolve_model(model)
        self.grid_size = patch_grid(self.resolved.model, image_size)
        self.per_image, self.parts = per_image, parts
        self.num_images = 0
        self._store: dict[tuple[str, int], list[torch.Tensor]] = {}

    def _keep(self, kind: str, index: int, value: torch.Tensor) -> None:
        value = value.float()
        if self.per_image:
            self._store.setdefault((kind, index), []).append(value.cpu())
        else:
            total = value.sum(dim=0).cpu()
            previous = self._store.get((kind, index))
            self._store[(kind, index)] = [total if previous is None else previous[0] + total]

    def _observer(self, index: int):
        num_patches = self.grid_size[0] * self.grid_size[1]

        def seen(probs: torch.Tensor, content: torch.Tensor | None, positional: torch.Tensor | None) -> None:
            self._keep("maps", index, _patches_only(probs, num_patches))
            if self.parts and content is not None:
                self._keep("content", index, content)
                self._store[("positional", index)] = [positional.float().cpu()]

        return seen

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The model's output on ``images`` (moved to its device and dtype), in eval mode without gradients,
        with every block's attention recorded."""
        core, adapter = self.resolved.model, self.resolved.adapter
        device, dtype = model_device_dtype(core)
        undo = []
        with analysis_mode(core):
            try:
                for index, attn in enumerate(self.resolved.attention):
                    undo.append(adapter.observe(attn, self.grid_size, self.parts, self._observer(index)))
                output = core(images.to(device=device, dtype=dtype))
            finally:
                for restore in undo:
                    restore()
        self.num_images += images.shape[0]
        return output

    def result(self) -> Capture:
        """Every block's attention over the images seen (averaged over them, or per image with ``per_image``)."""
        if not self.num_images:
            raise LocalityError("no images were recorded: run the recorder's forward on a batch first")

        def gather(kind: str, index: int) -> torch.Tensor:
            parts = self._store[(kind, index)]
            return torch.cat(parts) if self.per_image else parts[0] / self.num_images

        blocks = range(len(self.resolved.attention))
        gpsa = self.resolved.gpsa() if self.parts else []
        return Capture(
            [gather("maps", i) for i in blocks],
            self.grid_size,
            {i: gather("content", i) for i in gpsa},
            {i: self._store[("positional", i)][0] for i in gpsa},
        )


def capture(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 32,
    progress: bool = False,
    per_image: bool = False,
    parts: bool = True,
) -> Capture:
    """Run ``model`` on ``images`` and capture every block's attention (and, with ``parts``, GPSA's content and
    positional parts) as each attention module runs."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise LocalityError(f"images must be a non-empty batch shaped (B, C, H, W), got shape {list(images.shape)}")
    recorder = AttentionRecorder(model, images.shape, per_image, parts)
    for chunk in _chunks(images, batch_size, progress, "attention maps"):
        recorder.forward(chunk)
    return recorder.result()


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


def nonlocality_from_maps(maps: Sequence[torch.Tensor], grid_size: tuple[int, int]) -> torch.Tensor:
    distance = patch_distances(grid_size)
    # D is linear in A, so the mean over images of per-image D is D of the image-averaged map.
    if not maps:
        return torch.zeros(0, 0)
    return torch.stack([(attn * distance).sum(dim=-1).mean(dim=-1) for attn in maps])


def nonlocality(model: nn.Module, images: torch.Tensor, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
    """Non-locality D(l, h) in patch units, shape blocks x heads (see the module docstring)."""
    maps, grid_size = _attention_maps(model, images, batch_size, progress)
    return nonlocality_from_maps(maps, grid_size)


def parts_nonlocality(captured: Capture, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    gpsa = sorted(captured.content)
    if not gpsa:
        return torch.zeros(0, num_heads), torch.zeros(0, num_heads)
    content = nonlocality_from_maps([captured.content[i] for i in gpsa], captured.grid_size)
    positional = nonlocality_from_maps([captured.positional[i] for i in gpsa], captured.grid_size)
    return content, positional


def nonlocality_parts(
    model: nn.Module, images: torch.Tensor, batch_size: int = 32, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-locality of each GPSA head's content and positional attention before gating, GPSA-blocks x heads each."""
    return parts_nonlocality(capture(model, images, batch_size, progress), resolve_model(model).num_heads)


def gates(model: nn.Module) -> torch.Tensor:
    """sigmoid(lambda) of every GPSA head, shape GPSA-blocks x heads (float32, CPU); 0 rows for a ViT."""
    resolved = resolve_model(model)
    values = [torch.sigmoid(resolved.attention[i].gating_param.detach().float()).cpu() for i in resolved.gpsa()]
    return torch.stack(values) if values else torch.zeros(0, resolved.num_heads)


def _pos_weights(model: nn.Module) -> torch.Tensor:
    resolved = resolve_model(model)
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
