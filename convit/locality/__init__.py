"""Locality analysis of ConViT (d'Ascoli et al., 2021) and timm's vision transformers: attention maps,
non-locality (gated, content, positional; in pixels; the original authors' measure), gates, positional centres
and sharpness, rollout, head ablation, gate interventions.

``adapters`` reads each model family's attention, ``measures`` computes maps and distances from it,
``report`` gathers them per block, ``ablation`` zeroes heads; all need only the zoo. ``plots`` draws PNGs with
matplotlib (imported when a plot is drawn); ``__main__`` is the command, ``python -m convit.locality``.
"""

from .ablation import head_ablation
from .adapters import patch_grid
from .curves import plot_locality_over_epochs, plot_log, plot_training_curves
from .distances import authors_maps, distance_report, plot_distance_scatter
from .errors import LocalityError
from .interventions import forced_gates, gate_interventions, plot_interventions
from .measures import (
    AttentionRecorder,
    Capture,
    attention_maps,
    attention_rollout,
    capture,
    gates,
    nonlocality,
    nonlocality_parts,
    patch_distances,
    positional_centres,
    positional_sharpness,
)
from .plots import (
    plot_ablation,
    plot_attention_maps,
    plot_centres,
    plot_compare,
    plot_gates,
    plot_nonlocality,
    plot_nonlocality_parts,
    plot_overlays,
)
from .report import EpochLocality, epoch_locality, locality_report

__all__ = [
    "AttentionRecorder",
    "Capture",
    "EpochLocality",
    "LocalityError",
    "attention_maps",
    "authors_maps",
    "attention_rollout",
    "capture",
    "distance_report",
    "epoch_locality",
    "forced_gates",
    "gate_interventions",
    "gates",
    "head_ablation",
    "locality_report",
    "nonlocality",
    "nonlocality_parts",
    "patch_distances",
    "patch_grid",
    "plot_ablation",
    "plot_attention_maps",
    "plot_centres",
    "plot_compare",
    "plot_distance_scatter",
    "plot_gates",
    "plot_interventions",
    "plot_locality_over_epochs",
    "plot_log",
    "plot_training_curves",
    "plot_nonlocality",
    "plot_nonlocality_parts",
    "plot_overlays",
    "positional_centres",
    "positional_sharpness",
]
