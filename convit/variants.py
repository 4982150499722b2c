"""The paper's six ConViT models, one ``@register_model`` function each, under timm's own names (replacing timm's
entries; timm files them under module ``variants``).

Every model has depth 12, 10 GPSA blocks and locality strength 1; they differ in heads and head width.
"""

import inspect
import warnings
from contextlib import contextmanager
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .errors import UserError, first_line
from .model import VARIANT_WIDTHS, ConViT

VARIANTS = VARIANT_WIDTHS  # name: (num_heads, width per head)
# timm publishes ImageNet-1k weights for these; the "+" models have none.
PUBLISHED_WEIGHTS = ("convit_tiny", "convit_small", "convit_base")


def _cfg(**kwargs) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": True,  # False for a model built with dynamic_img_size=True
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        **{f"{name}.fb_in1k": _cfg(hf_hub_id="timm/") for name in PUBLISHED_WEIGHTS},
        **{name: _cfg() for name in VARIANTS if name not in PUBLISHED_WEIGHTS},
    }
)


def checkpoint_filter_fn(state_dict: dict[str, Any], model: ConViT) -> dict[str, torch.Tensor]:
    """Accept timm's state dicts and the original authors' checkpoints (weights under ``"model"``).

    Raises a one-line ValueError naming the missing and unexpected keys when it is not a ConViT of this
    shape; the position embedding of another resolution is resampled when the model loads it.
    """
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if model.num_classes == 0:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit this ConViT ({len(model.blocks)} blocks, {model.local_up_to_layer} GPSA): "
            f"missing keys {missing[:6]}{'...' if len(missing) > 6 else ''}, "
            f"unexpected keys {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}"
        )
    return state_dict


def _create(variant: str, pretrained: bool = False, **kwargs) -> ConViT:
    num_heads, head_width = VARIANTS[variant]
    saved = kwargs.get("pretrained_model_args") or {}
    if "embed_dim" in saved and kwargs.get("embed_dim") == saved["embed_dim"]:
        # a saved config (timm's save_for_hf, the hub) gives timm's ConVit convention: the width per head
        kwargs["embed_dim"] = saved["embed_dim"] * kwargs.get("num_heads", num_heads)
    model_args = dict(
        embed_dim=num_heads * head_width, num_heads=num_heads, depth=12, local_up_to_layer=10, locality_strength=1.0
    )
    out_indices = kwargs.pop("out_indices", 3)
    model = build_model_with_cfg(
        ConViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(model_args, **kwargs),
    )
    if kwargs.get("dynamic_img_size"):
        model.pretrained_cfg = {**model.pretrained_cfg, "fixed_input_size": False}
    return model


@contextmanager
def _replacing_timm_entries():
    """Silence timm's overwrite warning: replacing its own ``convit_*`` entries is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Overwriting convit_")
        yield


with _replacing_timm_entries():

    @register_model
    def convit_tiny(pretrained: bool = False, **kwargs) -> ConViT:
        """ConViT-Ti: 4 heads x 48 channels, depth 12, 10 GPSA blocks."""
        return _create("convit_tiny", pretrained, **kwargs)

    @register_model
    def convit_tiny_plus(pretrained: bool = False, **kwargs) -> ConViT:
        """ConViT-Ti+: 4 heads x 64 channels, depth 12, 10 GPSA blocks."""
        return _create("convit_tiny_plus", pretrained, **kwargs)

    @register_model
    def convit_small(pretrained: bool = False, **kwargs) -> ConViT:
        """ConViT-S: 9 heads x 48 channels, depth 12, 10 GPSA blocks."""
        return _create("convit_small", pretrained, **kwargs)

    @register_model
    def convit_small_plus(pretrained: bool = False, **kwargs) -> ConViT:
        """ConViT-S+: 9 heads x 64 channels, depth 12, 10 GPSA blocks."""
        return _create("convit_small_plus", pretrained, **kwargs)

    @register_model
    def convit_base(pretrained: bool = False, **kwargs) -> ConViT:
        """ConViT-B: 16 heads x 48 channels, depth 12, 10 GPSA blocks."""
        return _create("convit_base", pretrained, **kwargs)

    @register_model
    def convit_base_plus(pretrained: bool = False, **kwargs) -> ConViT:
        """ConViT-B+: 16 heads x 64 channels, depth 12, 10 GPSA blocks."""
        return _create("convit_base_plus", pretrained, **kwargs)


# what timm's model builder takes beside the model class's own arguments
BUILDER_ARGUMENTS = {"features_only", "out_indices", "pretrained_cfg_overlay"}


def create_model(name: str, num_classes: int, pretrained: bool = False, **kwargs) -> torch.nn.Module:
    """``timm.create_model`` for one of the six variants or any other timm model; an unknown name or argument is
    a UserError (the arguments of a timm model are those of the class it builds: ``convit.timm_models``)."""
    import timm

    from .timm_models import constructor_arguments, model_name_problem

    if name not in VARIANTS:
        problem = model_name_problem(name)
        if problem:
            raise UserError(problem)
        accepted = constructor_arguments(name)
        unknown = sorted(set(kwargs) - set(accepted) - BUILDER_ARGUMENTS) if accepted is not None else []
        if unknown:
            raise UserError(f"{name} takes no argument {unknown[0]!r}; its arguments: {', '.join(sorted(accepted))}")
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError, AssertionError) as e:  # the constructor's own checks: one line
            raise UserError(f"{name} cannot be built with {kwargs}: {first_line(e)}") from None
    known = set(inspect.signature(ConViT).parameters) | BUILDER_ARGUMENTS
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise UserError(
            f"{name} takes no argument {unknown[0]!r}; model arguments are those of convit.ConViT: "
            f"{', '.join(sorted(set(inspect.signature(ConViT).parameters) - {'norm_layer'}))}"
        )
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except ValueError as e:  # ConViT's own argument checks: one line each
        raise UserError(f"{name}: {e}") from None
