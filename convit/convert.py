"""A ConViT holding a timm ``VisionTransformer``'s weights (ViT, DeiT), or a DeiT twin's (a ConViT with no GPSA).

What is copied, what is set, and what cannot be kept::

    patch embedding, norms, MLPs, attention projections, head    copied
    position embedding                                           its patch part copied
    class token                                                  cls_token + its position embedding (when the ViT has one)
    MHSA blocks (from local_up_to_layer on)                      qkv copied as it is
    GPSA blocks (the first local_up_to_layer)                    qkv split: rows [0, 2C) -> qk, [2C, 3C) -> v
    GPSA pos_proj                                                the convolutional init (locality_strength)
    GPSA gating_param                                            logit(gate): sigmoid(gating_param) = gate for every head
    LayerScale (ls1, ls2)                                        folded into attn.proj and mlp.fc2 (exact)
    register tokens                                              dropped, only with drop_register_tokens=True

Not kept exactly: the class token joins only after the last GPSA block, so in the first ``local_up_to_layer``
blocks the patches cannot attend to it and it is not updated by them; GPSA adds ``gate`` of positional attention.
The gate rule, ``sigmoid(gating_param) = gate`` (default 0.1), starts the content path (the ViT's own attention)
dominant while leaving the gate a gradient (``gate * (1 - gate)``) to move towards the positional path.
With ``local_up_to_layer=0`` the ConViT computes exactly what the ViT does.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .model import ConViT

DEFAULT_GATE = 0.1  # sigmoid(gating_param) of every converted GPSA head: the content path starts dominant


class ConversionError(UserError, ValueError):
    """A model or checkpoint that cannot become a ConViT."""


# state-dict keys of timm ViT features ConViT has no place for, and what to say about them
UNSUPPORTED = {
    "dist_token": "a distilled DeiT (distillation token)",
    "norm_pre.weight": "a pre-norm ViT (CLIP style norm_pre)",
    "fc_norm.weight": "an fc_norm after pooling",
    "attn_pool.": "attention pooling (global_pool='map')",
    "patch_embed.norm.": "a normalised patch embedding",
    ".attn.q_norm.": "q/k normalisation (qk_norm)",
    ".attn.norm.": "a normalised attention output (scale_attn_norm)",
    ".mlp.norm.": "a normalised MLP (scale_mlp_norm)",
    ".mlp.fc1_g.": "a gated MLP (SwiGLU)",
    ".attn.q.weight": "separate q/k/v projections",
}


def is_vit_state_dict(state_dict: dict) -> bool:
    """True for the weights of a timm ViT/DeiT or a DeiT twin: every block has ``attn.qkv``, none a GPSA."""
    blocks = {k.split(".")[1] for k in state_dict if k.startswith("blocks.")}
    return (
        bool(blocks)
        and "cls_token" in state_dict
        and all(f"blocks.{b}.attn.qkv.weight" in state_dict for b in blocks)
        and not any(k.endswith("gating_param") for k in state_dict)
    )


def gate_logit(gate: float) -> float:
    """The gating parameter whose sigmoid is ``gate`` (0 < gate < 1)."""
    if not 0.0 < float(gate) < 1.0:
        raise ConversionError(f"gate={gate!r} must lie strictly between 0 and 1 (the initial sigmoid of every gate)")
    return math.log(gate / (1.0 - gate))


def convert_state_dict(
    state_dict: dict, model: ConViT, gate: float = DEFAULT_GATE, drop_register_tokens: bool = False
) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` (a ConViT of the ViT's width, depth and heads) holding a ViT's weights.

    ``pos_proj`` comes from ``model`` (build it with ``local_init=True`` for the convolutional init); every GPSA
    gate is set to ``gate``. The head is the ViT's whatever its shape (the caller decides whether it fits).
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    for key, what in UNSUPPORTED.items():
        if any(key in k if key.startswith(".") else k.startswith(key) for k in sd):
            raise ConversionError(f"the ViT has {what}, which ConViT has no place for; convert a plain ViT or DeiT")
    if not is_vit_state_dict(sd):
        raise ConversionError("the weights are not a timm ViT/DeiT's (no cls_token and attn.qkv in every block)")
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    width = sd["cls_token"].shape[-1]
    if depth != len(model.blocks) or width != model.embed_dim:
        raise ConversionError(
            f"the ViT has depth {depth} and width {width}, the ConViT {len(model.blocks)} and {model.embed_dim}"
        )
    registers = sd.pop("reg_token", None)
    num_registers = 0 if registers is None else registers.shape[1]
    if num_registers and not drop_register_tokens:
        raise ConversionError(
            f"the ViT has {num_registers} register tokens and ConViT none: pass drop_register_tokens=True to drop them"
        )
    out = {k: v for k, v in model.state_dict().items()}
    cls = sd.pop("cls_token").clone()
    if "pos_embed" in sd:
        pos = sd.pop("pos_embed")
        prefix = pos.shape[1] - model.num_patches
        if prefix not in (0, 1, 1 + num_registers):  # another grid: the square one (the model resamples it)
            squares = [p for p in (0, 1, 1 + num_registers) if math.isqrt(pos.shape[1] - p) ** 2 == pos.shape[1] - p]
            if not squares:
                raise ConversionError(
                    f"the ViT's pos_embed holds {pos.shape[1]} positions, neither the ConViT's {model.num_patches} "
                    "patches nor a square grid; build the ConViT at the ViT's image size"
                )
            prefix = squares[-1]
        if prefix >= 1:  # timm's class-token position: fold it into the token, which joins later without one
            cls = cls + pos[:, :1]
        out["pos_embed"] = pos[:, prefix:].clone()
    out["cls_token"] = cls
    logit = gate_logit(gate)
    for key, value in sd.items():
        if key.startswith("blocks.") and (".ls1." in key or ".ls2." in key):
            continue
        if ".attn.qkv." in key and int(key.split(".")[1]) < model.local_up_to_layer:
            base, kind = key.split(".attn.qkv.")
            out[f"{base}.attn.qk.{kind}"] = value[: 2 * width].clone()
            out[f"{base}.attn.v.{kind}"] = value[2 * width :].clone()
            continue
        if key not in out:
            raise ConversionError(f"the ViT's {key} has no counterpart in ConViT; convert a plain ViT or DeiT")
        if value.shape != out[key].shape and not key.startswith("head."):
            raise ConversionError(f"the ViT's {key} is {list(value.shape)}, the ConViT's {list(out[key].shape)}")
        out[key] = value.clone()
    for key, value in sd.items():  # LayerScale: gamma * (W x + b) = (gamma W) x + gamma b
        if key.endswith(".ls1.gamma") or key.endswith(".ls2.gamma"):
            base = key.rsplit(".", 2)[0] + (".attn.proj" if ".ls1." in key else ".mlp.fc2")
            out[f"{base}.weight"] = value[:, None] * out[f"{base}.weight"]
            out[f"{base}.bias"] = value * out[f"{base}.bias"]
    for i in range(model.local_up_to_layer):
        out[f"blocks.{i}.attn.gating_param"] = torch.full_like(out[f"blocks.{i}.attn.gating_param"], logit)
    return out


def _timm_vit(vit: str | Path, create_kwargs: dict) -> nn.Module:
    """A ViT named by timm (``create_kwargs`` go to ``timm.create_model``) or read from a weights file."""
    import timm

    from .weights import (
        extract_state_dict,
        inferred_settings,
        is_training_checkpoint,
        model_from_checkpoint,
        read_checkpoint,
    )

    path = Path(vit)
    if path.is_file():
        ckpt = read_checkpoint(path)
        name = create_kwargs.pop("name", None)
        if is_training_checkpoint(ckpt):  # train.py's, e.g. a DeiT twin
            return model_from_checkpoint(path, name, **create_kwargs)[0]
        sd = extract_state_dict(ckpt)
        name = name or inferred_settings(ckpt, sd).get("model")
        if name is None:
            raise ConversionError(f"'{vit}' does not name its architecture: pass name='deit_tiny_patch16_224' (say)")
        if "head.weight" in sd:
            create_kwargs.setdefault("num_classes", sd["head.weight"].shape[0])
        model = timm.create_model(name, pretrained=False, **create_kwargs)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ConversionError(f"'{vit}' does not hold {name}'s weights ({str(e).splitlines()[0][:160]})") from None
        return model
    if not (timm.is_model(str(vit)) or str(vit).startswith(("hf-hub:", "local-dir:"))):
        raise ConversionError(f"'{vit}' is neither a weights file nor a timm model name")
    return timm.create_model(str(vit), **create_kwargs)


def _check_module(vit: nn.Module, local_up_to_layer: int) -> dict:
    """The ConViT constructor arguments matching ``vit``, or a ConversionError saying what does not map."""
    from timm.layers import Attention, Mlp
    from timm.models.vision_transformer import VisionTransformer

    name = type(vit).__name__
    if isinstance(vit, ConViT):
        if vit.local_up_to_layer != 0:
            raise ConversionError(f"the ConViT already has {vit.local_up_to_layer} GPSA blocks; pass a DeiT twin")
        blocks, attn = vit.blocks, [b.attn for b in vit.blocks]
        img_size, patch_size, dynamic = vit.img_size, vit.patch_size, vit.dynamic_img_size
    elif isinstance(vit, VisionTransformer):
        if type(vit) is not VisionTransformer:
            raise ConversionError(f"{name} is not a plain timm VisionTransformer; convert a ViT or DeiT")
        if vit.cls_token is None or vit.global_pool not in ("token", "avg"):
            raise ConversionError(
                f"the ViT has class_token={vit.cls_token is not None}, global_pool={vit.global_pool!r}; "
                "ConViT needs a class token and 'token' or 'avg' pooling"
            )
        blocks, attn = vit.blocks, [b.attn for b in vit.blocks]
        img_size, patch_size = tuple(vit.patch_embed.img_size), tuple(vit.patch_embed.patch_size)
        dynamic = vit.dynamic_img_size or not vit.patch_embed.strict_img_size
        for block in blocks:
            if type(block.attn) is not Attention or type(block.mlp) is not Mlp:
                raise ConversionError(
                    f"the ViT's {type(block.attn).__name__}/{type(block.mlp).__name__} blocks do not map"
                )
            if not isinstance(block.mlp.act, nn.GELU) or block.mlp.act.approximate != "none":
                raise ConversionError(f"the ViT's MLP uses {block.mlp.act}, ConViT's exact GELU")
            if not isinstance(block.norm1, nn.LayerNorm) or block.norm1.eps != 1e-6:
                raise ConversionError(f"the ViT's norm {block.norm1} is not ConViT's LayerNorm(eps=1e-6)")
    else:
        raise ConversionError(f"{name} is not a timm VisionTransformer (ViT, DeiT); other architectures do not convert")
    if dynamic:
        raise ConversionError("the ViT takes any image size (dynamic_img_size); build it at one fixed size")
    if img_size[0] != img_size[1] or patch_size[0] != patch_size[1]:
        raise ConversionError(f"the ViT's image {img_size} or patch {patch_size} is not square; ConViT's must be")
    if len(blocks) < local_up_to_layer:
        raise ConversionError(
            f"the ViT has {len(blocks)} blocks, fewer than local_up_to_layer={local_up_to_layer}; lower it"
        )
    width = int(blocks[0].norm1.normalized_shape[0])
    pos_embed = getattr(vit, "pos_embed", None)
    return dict(
        img_size=int(img_size[0]),
        patch_size=int(patch_size[0]),
        in_chans=int(vit.patch_embed.proj.in_channels),
        num_classes=int(vit.num_classes),
        global_pool=vit.global_pool,
        embed_dim=int(width),
        depth=len(blocks),
        num_heads=int(attn[0].num_heads),
        mlp_ratio=blocks[0].mlp.fc1.out_features / width,
        qkv_bias=attn[0].qkv.bias is not None,
        use_pos_embed=pos_embed is not None,
    )


def from_vit(
    vit: nn.Module | str | Path,
    local_up_to_layer: int = 10,
    locality_strength: float = 1.0,
    gate: float = DEFAULT_GATE,
    drop_register_tokens: bool = False,
    **create_kwargs,
) -> ConViT:
    """A ConViT holding the weights of ``vit``: a timm ``VisionTransformer`` (ViT, DeiT), a DeiT twin (a ConViT
    with ``local_up_to_layer=0``), a timm model name or a weights file.

    The first ``local_up_to_layer`` blocks become GPSA: their ``qkv`` is split into ``qk`` and ``v``, ``pos_proj``
    gets the convolutional init at ``locality_strength`` and every gate starts at ``sigmoid(gating_param) = gate``.
    ``create_kwargs`` go to ``timm.create_model`` for a name, e.g. ``pretrained=True,
    pretrained_cfg_overlay=dict(file="deit_tiny.safetensors")`` for local weights; for a file without its
    architecture recorded pass ``name="deit_tiny_patch16_224"``. The ConViT is in eval mode when ``vit`` was.
    """
    if isinstance(vit, (str, Path)):
        vit = _timm_vit(vit, dict(create_kwargs))
    elif create_kwargs:
        raise ConversionError(f"{sorted(create_kwargs)} apply only when vit is a name or a file")
    if isinstance(local_up_to_layer, bool) or not isinstance(local_up_to_layer, int) or local_up_to_layer < 0:
        raise ConversionError(f"local_up_to_layer={local_up_to_layer!r} must be a non-negative integer")
    gate_logit(gate)
    kwargs = _check_module(vit, local_up_to_layer)
    device = next(vit.parameters()).device
    dtype = next(vit.parameters()).dtype
    model = ConViT(**kwargs, local_up_to_layer=local_up_to_layer, locality_strength=locality_strength)
    model.load_state_dict(convert_state_dict(vit.state_dict(), model, gate, drop_register_tokens), strict=True)
    model.train(vit.training)
    return model.to(device=device, dtype=dtype)
