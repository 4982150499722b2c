"""Any model in timm's registry beside the ConViT variants: its name checked, the constructor arguments it takes.

What a model takes is read off its class: timm builds it once on the meta device (no memory, no weights) and
the class's signature names its arguments; a class taking ``**kwargs`` (or one that cannot be built that way)
is taken to accept any argument, and its constructor reports what it refuses.
"""

from __future__ import annotations

import difflib
import functools
import inspect

import torch

from .model import ConViT
from .variants import VARIANTS


def model_name_problem(name: str) -> str | None:
    """None for a ConViT variant or a name in timm's registry; else one line with the closest names."""
    import timm

    if name in VARIANTS or timm.is_model(name):
        return None
    close = difflib.get_close_matches(str(name), [*VARIANTS, *timm.list_models()], n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return (
        f"unknown model '{name}'; {hint}use a ConViT variant ({', '.join(sorted(VARIANTS))}) or any name in "
        "timm.list_models()"
    )


def is_convit(name: str) -> bool:
    """True for the six ConViT variants (built by ``convit.variants``)."""
    return name in VARIANTS


@functools.lru_cache(maxsize=64)
def _class_parameters(name: str) -> tuple[tuple[str, object], ...] | None:
    import timm

    if is_convit(name):
        model_class = ConViT
    else:
        try:
            with torch.device("meta"):
                model_class = type(timm.create_model(name, pretrained=False))
        except Exception:  # a constructor that cannot run on the meta device: its arguments are not known
            return None
    params = inspect.signature(model_class).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return tuple((p.name, p.default) for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def constructor_arguments(name: str) -> dict[str, object] | None:
    """{argument: default} of the class timm builds for ``name`` (ConViT's for the variants), or None when the
    class takes any keyword argument or cannot be inspected."""
    params = _class_parameters(name)
    return None if params is None else dict(params)


def takes(name: str, argument: str) -> bool:
    """Whether the model ``name`` accepts the constructor argument ``argument`` (True when it takes any)."""
    params = constructor_arguments(name)
    return params is None or argument in params


def convit_only(name: str, argument: str) -> bool:
    """True when ``argument`` is one of ConViT's constructor arguments that model ``name`` does not take."""
    return argument in inspect.signature(ConViT).parameters and not takes(name, argument)
