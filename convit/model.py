"""ConViT: GPSA blocks on patch tokens, then a class token and self-attention blocks.

The module tree and parameter names are those of ``timm.models.convit.ConVit``, so state dicts load both
ways with ``strict=True``. Unlike timm's constructor, ``embed_dim`` here is the total width (as in a
ViT). As in timm's ViT, ``dynamic_img_size=True`` lets any image size divisible by the patch size run, the
position embedding being resampled; otherwise another input size is a one-line error.
"""

import torch
from timm.layers import (
    DropPath,
    LayerNorm,
    Mlp,
    PatchEmbed,
    calculate_drop_path_rates,
    trunc_normal_,
)
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import GPSA, MHSA
from .pos_embed import check_image, resample_pos_embed

VARIANT_WIDTHS = {
    "convit_tiny": (4, 48),
    "convit_tiny_plus": (4, 64),
    "convit_small": (9, 48),
    "convit_small_plus": (9, 64),
    "convit_base": (16, 48),
    "convit_base_plus": (16, 64),
}

# Leaf calls for every torch.fx tracer (torchvision's create_feature_extractor too, not only timm's).
torch.fx.wrap("check_image")
torch.fx.wrap("resample_pos_embed")


class Block(nn.Module):
    """Pre-norm transformer block whose attention is GPSA (patches only) or MHSA."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = LayerNorm,
        use_gpsa: bool = True,
        locality_strength: float = 1.0,
        fused_attn: bool = True,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.use_gpsa = use_gpsa
        if use_gpsa:
            self.attn = GPSA(dim, num_heads, qkv_bias, attn_drop, proj_drop, locality_strength, fused_attn)
        else:
            self.attn = MHSA(dim, num_heads, qkv_bias, attn_drop, proj_drop, fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid_size))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class ConViT(nn.Module):
    """ConViT (d'Ascoli et al., 2021): ``local_up_to_layer`` GPSA blocks, then the class token, then MHSA blocks."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: type[nn.Module] | None = None,
        local_up_to_layer: int = 10,
        locality_strength: float = 1.0,
        local_init: bool = True,
        use_pos_embed: bool = True,
        fused_attn: bool = True,
        dynamic_img_size: bool = False,
    ):
        super().__init__()
        if global_pool not in ("", "avg", "token"):
            raise ValueError(f"global_pool={global_pool!r} is not supported: use 'token', 'avg' or ''")
        for name, value in (("patch_size", patch_size), ("in_chans", in_chans), ("depth", depth)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if num_heads < 1 or embed_dim < 1 or mlp_ratio <= 0 or num_classes < 0:
            raise ValueError(
                f"num_heads={num_heads}, embed_dim={embed_dim} and mlp_ratio={mlp_ratio} must be positive, "
                f"num_classes={num_classes} not negative"
            )
        sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if any(size < 1 or size % patch_size for size in sizes):
            raise ValueError(
                f"img_size={img_size} is not a positive multiple of patch_size={patch_size}: "
                f"use e.g. img_size={max(1, sizes[0] // patch_size) * patch_size}"
            )
        if not 0 <= local_up_to_layer <= depth:
            raise ValueError(f"local_up_to_layer={local_up_to_layer} must lie between 0 and depth={depth}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} (total width) is not divisible by num_heads={num_heads}")
        norm_layer = norm_layer or LayerNorm
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.local_up_to_layer = local_up_to_layer
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.locality_strength = locality_strength
        self.use_pos_embed = use_pos_embed
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            output_fmt="NHWC",
            strict_img_size=not dynamic_img_size,  # timm reads fixed_input_size off it
        )
        self.patch_size: tuple[int, int] = (int(self.patch_embed.patch_size[0]), int(self.patch_embed.patch_size[1]))
        self.trained_grid: tuple[int, int] = (int(self.patch_embed.grid_size[0]), int(self.patch_embed.grid_size[1]))
        self.img_size: tuple[int, int] = (int(self.patch_embed.img_size[0]), int(self.patch_embed.img_size[1]))
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.num_prefix_tokens = 1
        self.pos_drop = nn.Dropout(p=pos_drop_rate)
        if use_pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))

        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            [
                Block(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[i],
                    norm_layer=norm_layer,
                    use_gpsa=i < local_up_to_layer,
                    locality_strength=locality_strength,
                    fused_attn=fused_attn,
                )
                for i in range(depth)
            ]
        )
        self.norm = norm_layer(embed_dim)
        reduction = self.patch_embed.feat_ratio()
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f"blocks.{i}") for i in range(depth)]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        self.init_weights(local_init)
        self._register_load_state_dict_pre_hook(self._resample_loaded_pos_embed)

    def init_weights(self, local_init: bool = True) -> None:
        """timm's initialisation (truncated normal, std 0.02), then the convolutional init of every GPSA."""
        if self.use_pos_embed:
            trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)
        if local_init:
            for module in self.modules():
                if isinstance(module, GPSA):
                    module.local_init()

    def _resample_loaded_pos_embed(self, state_dict: dict[str, torch.Tensor], prefix: str, *args) -> None:
        """Resample a checkpoint's square position embedding when its grid differs from this model's."""
        key = prefix + "pos_embed"
        if not self.use_pos_embed or key not in state_dict or state_dict[key].shape == self.pos_embed.shape:
            return
        loaded = state_dict[key]
        side = int(round(loaded.shape[1] ** 0.5))
        if loaded.dim() != 3 or side * side != loaded.shape[1] or loaded.shape[2] != self.embed_dim:
            raise ValueError(
                f"checkpoint pos_embed has shape {list(loaded.shape)}; expected [1, N, {self.embed_dim}] "
                f"on a square grid (this model: {list(self.pos_embed.shape)})"
            )
        state_dict[key] = resample_pos_embed(loaded, self.trained_grid, (side, side))

    @property
    @torch.jit.unused
    def _model_args(self) -> dict:
        """The arguments timm's ``save_for_hf`` records, in timm's ``ConVit`` convention (``embed_dim`` per head),
        so that plain timm builds a saved folder whenever its ConVit can; arguments that change neither the weights
        nor the output (``fused_attn``, ``local_init``, ``dynamic_img_size=False``) are left out, and so are the
        variant's own width and heads (its entry point, ours or timm's, supplies them)."""
        args = dict(self.__dict__.get("_factory_args", {}))
        for key in ("fused_attn", "local_init"):
            args.pop(key, None)
        if not args.get("dynamic_img_size", False):
            args.pop("dynamic_img_size", None)
        for key in ("embed_dim", "num_heads"):
            args.pop(key, None)
        heads, width = VARIANT_WIDTHS.get(getattr(self, "pretrained_cfg", {}).get("architecture"), (0, 0))
        if (heads, width) != (self.num_heads, self.embed_dim // self.num_heads):
            args.update(embed_dim=self.embed_dim // self.num_heads, num_heads=self.num_heads)
        return args

    @_model_args.setter
    def _model_args(self, args: dict) -> None:  # timm's factory records the create_model arguments here
        self.__dict__["_factory_args"] = dict(args)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^cls_token|pos_embed|patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("", "avg", "token"):
                raise ValueError(f"global_pool={global_pool!r} is not supported: use 'token', 'avg' or ''")
            self.global_pool = global_pool
        weight = self.patch_embed.proj.weight
        self.head = (
            nn.Linear(self.embed_dim, num_classes, device=weight.device, dtype=weight.dtype)
            if num_classes > 0
            else nn.Identity()
        )

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens (B x N x C) with the position embedding added, and their (rows, cols) grid."""
        x = check_image(x, self.in_chans, self.patch_size, self.img_size, self.dynamic_img_size)
        x = self.patch_embed(x)
        grid_size = (x.shape[1], x.shape[2])
        x = x.flatten(1, 2)
        if self.use_pos_embed:
            pos_embed = self.pos_embed
            if self.dynamic_img_size:  # a fixed-size model refused other sizes in check_image
                pos_embed = resample_pos_embed(pos_embed, grid_size, self.trained_grid)
            x = pos_embed + x
        # token-major: left in the convolution's channel-major strides, every residual add and LayerNorm of the
        # GPSA blocks (which run before the class token's concatenation makes a copy) works on strided memory.
        # The sum above takes its first operand's token-major layout, so contiguous() copies only without it.
        return self.pos_drop(x.contiguous()), grid_size

    def join_class_token(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """The tokens that block ``index`` takes: the class token is prepended before the first MHSA block."""
        if index == self.local_up_to_layer and self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, grid_size = self.embed(x)
        for i, block in enumerate(self.blocks):
            x = self.join_class_token(i, x)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, grid_size, use_reentrant=False)
            else:
                x = block(x, grid_size)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Final features and the outputs of the blocks in ``indices`` (patch tokens only), as timm's."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r} is not supported: use 'NCHW' or 'NLC'")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0]
        x, grid_size = self.embed(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[: max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = block(self.join_class_token(i, x), grid_size)
            if i in take_indices:
                y = self.norm(x) if norm else x
                intermediates.append(y[:, 1:] if i >= self.local_up_to_layer else y)
        if output_fmt == "NCHW":
            intermediates = [
                y.reshape(B, grid_size[0], grid_size[1], -1).permute(0, 3, 1, 2).contiguous() for y in intermediates
            ]
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the blocks (and optionally norm and head) that the chosen intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if max_index < self.local_up_to_layer:
            self.cls_token = None
            self.num_prefix_tokens = 0
            prune_head = prune_head or self.global_pool == "token"
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.zeros_(module.bias)
        nn.init.ones_(module.weight)
