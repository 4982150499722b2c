"""The locality report of a model: per block, non-locality (gated, content, positional), gates, centres and
sharpness, as plain JSON-ready values; and the compact per-epoch entry training logs."""

import math

import torch
from torch import nn

from .adapters import resolve_model
from .errors import LocalityError
from .measures import (
    AttentionRecorder,
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


EPOCH_KEYS = ("nonlocality", "gates", "nonlocality_content", "nonlocality_positional", "centres", "sharpness")


def epoch_locality(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> dict[str, list]:
    """What a training loop logs each epoch under ``locality``: non-locality (blocks x heads), ``gates``,
    ``nonlocality_content``/``nonlocality_positional``, ``sharpness`` (GPSA-blocks x heads) and
    ``centres`` (GPSA-blocks x heads x (dx, dy), None where a head has no peak)."""
    report = locality_report(model, images, batch_size)
    return {key: report[key] for key in EPOCH_KEYS}


class EpochLocality:
    """``epoch_locality`` on the first ``count`` images of a validation pass, taken from that pass's own
    forward: the evaluation hands those images to ``forward`` (the model in float32, attention recorded)
    and the rest to its usual forward, so the measures cost no second pass over them.

        locality = EpochLocality(model, 64)
        ...  # the validation pass: locality.forward(images[: locality.wanted]) for its first images
        row["locality"] = locality.entry()  # and the next pass starts afresh
    """

    def __init__(self, model: nn.Module, count: int):
        self.model, self.count = model, count
        self._recorder: AttentionRecorder | None = None

    @property
    def wanted(self) -> int:
        """How many more images this pass measures."""
        return self.count - (self._recorder.num_images if self._recorder is not None else 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The model's output on ``images`` with their attention recorded (float32, no autocast)."""
        if self._recorder is None:
            self._recorder = AttentionRecorder(self.model, images.shape)
        with torch.autocast(images.device.type, enabled=False):
            return self._recorder.forward(images)

    def entry(self) -> dict[str, list]:
        """The epoch's ``locality`` entry over the images recorded since the last entry; starts the next."""
        if self._recorder is None:
            raise LocalityError("the validation pass recorded no images for the locality measures")
        recorder, self._recorder = self._recorder, None
        report = build_report(self.model, recorder.result(), recorder.num_images)
        return {key: report[key] for key in EPOCH_KEYS}
