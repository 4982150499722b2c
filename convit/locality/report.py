"""The locality report of a model: per block, non-locality (gated, content, positional), gates, centres and
sharpness, as plain JSON-ready values; and the compact per-epoch entry training logs."""

import math

import torch
from torch import nn

from .adapters import resolve_model
from .measures import (
    Capture,
    capture,
    gates,
    nonlocality_from_maps,
    parts_nonlocality,
    positional_centres,
    positional_sharpness,
)


def _finite(values: torch.Tensor) -> list:
    """Nested lists for JSON, non-finite numbers as None."""
    if values.dim() == 0:
        value = values.item()
        return value if math.isfinite(value) else None
    return [_finite(v) for v in values]


def build_report(model: nn.Module, captured: Capture, num_images: int) -> dict:
    resolved = resolve_model(model)
    maps, grid_size = captured.maps, captured.grid_size
    distance = nonlocality_from_maps(maps, grid_size)
    gate, centre, sharp = gates(model), positional_centres(model), positional_sharpness(model)
    content, positional = parts_nonlocality(captured, resolved.num_heads)
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
    return build_report(model, capture(model, images, batch_size, progress), images.shape[0])


def epoch_locality(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> dict[str, list]:
    """What a training loop logs each epoch under ``locality``: non-locality (blocks x heads), ``gates``,
    ``nonlocality_content``/``nonlocality_positional``, ``sharpness`` (GPSA-blocks x heads) and
    ``centres`` (GPSA-blocks x heads x (dx, dy), None where a head has no peak)."""
    report = locality_report(model, images, batch_size)
    keys = ("nonlocality", "gates", "nonlocality_content", "nonlocality_positional", "centres", "sharpness")
    return {key: report[key] for key in keys}
