"""Locality analysis of ConViT (d'Ascoli et al., 2021): attention maps, non-locality, gates, head ablation.

``measures`` needs only the zoo; ``plots`` draws PNGs with matplotlib (imported when a plot is drawn);
``__main__`` is the command, ``python -m convit.locality``.
"""

from .measures import (
    attention_maps,
    epoch_locality,
    gates,
    head_ablation,
    locality_report,
    nonlocality,
    patch_distances,
)
from .plots import plot_ablation, plot_attention_maps, plot_gates, plot_log, plot_nonlocality

__all__ = [
    "attention_maps",
    "epoch_locality",
    "gates",
    "head_ablation",
    "locality_report",
    "nonlocality",
    "patch_distances",
    "plot_ablation",
    "plot_attention_maps",
    "plot_gates",
    "plot_log",
    "plot_nonlocality",
]
