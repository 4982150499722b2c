"""The model families the measures read, one small adapter each: this package's ConViT, timm's ``ConVit`` and
timm's ``VisionTransformer`` family (also inside DDP/DataParallel or ``torch.compile``), and how each one's
attention probabilities are read as the model runs: handed over by this package's layers, recomputed from
the real input of timm's modules with their own projections."""

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import GPSA, MHSA, relative_offsets
from ..model import ConViT
from .errors import LocalityError

Observer = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], None]


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


def gpsa_parts(attn: nn.Module, x: torch.Tensor, grid_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
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

    def observe(self, attn: nn.Module, grid_size: tuple[int, int], parts: bool, seen: Observer) -> Callable[[], None]:
        """Call ``seen(probs, content, positional)`` on every forward of ``attn`` (probs B x H x N x N with the
        prefix tokens; content and positional GPSA's parts when ``parts``, else None); returns the undo.

        Here a forward pre-hook recomputes them from the module's input with its own projections.
        """

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            content = positional = None
            if parts and self.is_gpsa(module):
                content, positional = gpsa_parts(module, args[0], grid_size)
            seen(self.probs(module, args, kwargs, grid_size), content, positional)

        return attn.register_forward_pre_hook(hook, with_kwargs=True).remove

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

    def observe(self, attn, grid_size, parts, seen):
        """The module runs its reference path, which hands its own probabilities (and GPSA's parts) to ``seen``:
        nothing is computed twice."""
        fused, attn.fused_attn = attn.fused_attn, False

        def undo() -> None:
            attn.fused_attn, attn.attention_observer = fused, None

        attn.attention_observer = seen
        return undo


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


def resolve_model(model: nn.Module) -> _Model:
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
    embed = resolve_model(model).model.patch_embed
    size = (int(image_size[-2]), int(image_size[-1]))
    if hasattr(embed, "dynamic_feat_size"):
        rows, cols = embed.dynamic_feat_size(size)
    else:
        rows, cols = embed.grid_size
    return int(rows), int(cols)
