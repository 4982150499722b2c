"""Attention distance in pixels (the ViT paper's "mean attention distance") and the original authors' locality
measure, beside this package's non-locality.

- **Pixels**: Dosovitskiy et al. (2021, Fig. 7) report, per head, the attention-weighted distance between query
  and key pixels: with patches of ph x pw pixels, ``sum_j A_ij * sqrt((dx pw)^2 + (dy ph)^2)`` averaged over
  queries and images, which is non-locality times the patch size for square patches. Computed from the attention
  each block really applies (``capture``), patch tokens only.
- **The authors' measure** (labelled ``authors'`` everywhere): the ConViT authors' logging (``main.py`` of
  facebookresearch/convit; their issue 23) fed the *patch embeddings* (``patch_embed`` output: no position
  embedding, no norm1, no class token) to the attention of *every* block, instead of each block's real input. It
  is offered to match their published curves; beyond the first block it is not what the model computes.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence

import torch
from torch import nn

from ..attention import relative_offsets
from .adapters import patch_grid
from .errors import LocalityError
from .measures import attention_maps

FIELDS = ["model", "block", "type", "head", "nonlocality_patches", "distance_px", "authors_patches", "authors_px"]


def pixel_distances(grid_size: tuple[int, int], patch_size: tuple[int, int]) -> torch.Tensor:
    """Distance in pixels between the centres of patches i and j, N x N, patches numbered row by row."""
    rel = relative_offsets(grid_size, torch.device("cpu"))
    return ((rel[..., 0] * patch_size[1]) ** 2 + (rel[..., 1] * patch_size[0]) ** 2).sqrt()


def mean_distance(maps: Sequence[torch.Tensor], grid_size: tuple[int, int], patch_size=(1, 1)) -> torch.Tensor:
    """blocks x heads: attention-weighted distance (pixels; patches with ``patch_size=(1, 1)``) of H x N x N maps."""
    distance = pixel_distances(grid_size, patch_size)
    return torch.stack([(attn * distance).sum(dim=-1).mean(dim=-1) for attn in maps])


def model_patch_size(model: nn.Module) -> tuple[int, int]:
    """The (height, width) of the model's patches in pixels."""
    model = getattr(model, "module", model)
    size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if size is None:
        raise LocalityError(f"{type(model).__name__} has no patch_embed.patch_size: distances in pixels need one")
    size = (size, size) if isinstance(size, int) else tuple(size)
    return int(size[0]), int(size[1])


def _probs_on(attn: nn.Module, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """The attention ``attn`` would apply to tokens ``x`` (B x N x C), B x H x N x N."""
    if hasattr(attn, "attention_probs"):  # this package's GPSA (gated) and MHSA
        return attn.attention_probs(x, grid_size)
    if hasattr(attn, "qkv"):  # timm's Attention
        B, N, _ = x.shape
        q, k, _ = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    raise LocalityError(f"the authors' measure does not support attention {type(attn).__name__}")


def authors_maps(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> list[torch.Tensor]:
    """The authors' attention maps: every block's attention on the patch embeddings, H x N x N per block,
    averaged over ``images`` (see the module docstring; not the model's real forward)."""
    model = getattr(model, "module", model)
    grid_size = patch_grid(model, images.shape)
    param = next(model.parameters())
    totals = [None] * len(model.blocks)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                x = model.patch_embed(images[start : start + batch_size].to(device=param.device, dtype=param.dtype))
                x = x.flatten(1, 2) if x.dim() == 4 else x
                for i, block in enumerate(model.blocks):
                    probs = _probs_on(block.attn, x, grid_size).float().sum(dim=0).cpu()
                    totals[i] = probs if totals[i] is None else totals[i] + probs
    finally:
        model.train(was_training)
    return [total / images.shape[0] for total in totals]


def distance_report(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 32,
    authors: bool = False,
    maps: Sequence[torch.Tensor] | None = None,
) -> dict:
    """Per block and head: non-locality in patches and pixels from the real forward (``maps``: already captured
    ones, else captured here), and with ``authors`` the authors' measure in both units."""
    grid_size = patch_grid(model, images.shape)
    patch = model_patch_size(model)
    maps = attention_maps(model, images, batch_size) if maps is None else maps
    report = {
        "patch_size": list(patch),
        "nonlocality_patches": mean_distance(maps, grid_size).tolist(),
        "distance_px": mean_distance(maps, grid_size, patch).tolist(),
    }
    if authors:
        theirs = authors_maps(model, images, batch_size)
        report["authors_patches"] = mean_distance(theirs, grid_size).tolist()
        report["authors_px"] = mean_distance(theirs, grid_size, patch).tolist()
    return report


def write_csv(reports: Sequence[dict], labels: Sequence[str], types: Sequence[Sequence[str]], path: str) -> None:
    """One row per model, block and head (``types``: each model's block types, GPSA or MHSA)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for report, label, kinds in zip(reports, labels, types, strict=True):
            for b, heads in enumerate(report["distance_px"]):
                for h, px in enumerate(heads):
                    row = {
                        "model": label,
                        "block": b,
                        "type": kinds[b],
                        "head": h,
                        "distance_px": round(px, 4),
                        "nonlocality_patches": round(report["nonlocality_patches"][b][h], 4),
                    }
                    if "authors_px" in report:
                        row.update(
                            authors_patches=round(report["authors_patches"][b][h], 4),
                            authors_px=round(report["authors_px"][b][h], 4),
                        )
                    writer.writerow(row)


def markdown_table(report: dict, label: str) -> str:
    """Per block: mean over heads of the distance in patches and pixels (and the authors' measure when present)."""
    authors = "authors_px" in report
    head = "| block | non-locality (patches) | mean attention distance (px) |"
    head += " authors' measure (patches) | authors' measure (px) |" if authors else ""
    lines = [
        f"Attention distance, **{label}** (patch {report['patch_size'][0]}x{report['patch_size'][1]} px; "
        "mean over heads" + ("; authors': patch embeddings fed to every block" if authors else "") + "):",
        "",
        head,
        "|---:" * (5 if authors else 3) + "|",
    ]
    for b, px in enumerate(report["distance_px"]):
        cells = [sum(report["nonlocality_patches"][b]) / len(px), sum(px) / len(px)]
        if authors:
            cells += [sum(report["authors_patches"][b]) / len(px), sum(report["authors_px"][b]) / len(px)]
        lines.append(f"| {b} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_distance_scatter(reports: Sequence[dict], labels: Sequence[str], path: str, footer: str) -> None:
    """The ViT paper's Fig. 7: mean attention distance (pixels) of every head against network depth (block),
    several models on one figure (one colour each, dots offset a little per model); the authors' measure, when
    present, as hollow markers of the same colour."""
    from .plots import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    width = 0.6 / max(len(reports), 1)
    for m, (report, label) in enumerate(zip(reports, labels, strict=True)):
        colour = f"C{m % 10}"
        offset = (m - (len(reports) - 1) / 2) * width
        for key, marker, face, suffix in (("distance_px", "o", colour, ""), ("authors_px", "s", "none", " (authors')")):
            if key not in report:
                continue
            xs = [b + offset for b, heads in enumerate(report[key]) for _ in heads]
            ys = [d for heads in report[key] for d in heads]
            ax.scatter(xs, ys, s=14, marker=marker, facecolors=face, edgecolors=colour, label=label + suffix)
    ax.set_xlabel("network depth (block)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_title("mean attention distance per head (Dosovitskiy et al. 2021, Fig. 7); one dot per head", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.text(0.01, 0.005, footer, fontsize=5.5, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(reports: Sequence[dict], out: str, argv: Sequence[str], authors: bool, written) -> None:
    """``python -m convit.locality --pixels``: OUT/distances.csv and OUT/attention_distance.png for every model
    whose report holds ``distances``, listed first in report.md through ``written`` (its ``items``)."""
    import os
    import shlex

    from .interventions import footer

    chosen = [r for r in reports if "distances" in r]
    labels = [r["label"] for r in chosen]
    path = os.path.join(out, "distances.csv")
    write_csv([r["distances"] for r in chosen], labels, [[b["type"] for b in r["blocks"]] for r in chosen], path)
    theirs = "; authors_*: the original authors' measure (patch embeddings fed to every block)" if authors else ""
    written.items.insert(
        0,
        (
            "distances.csv",
            "attention distance",
            "One row per model, block and head: non-locality "
            f"in patches and the mean attention distance in pixels (patches x patch size){theirs}.",
        ),
    )
    png = os.path.join(out, "attention_distance.png")
    plot_distance_scatter(
        [r["distances"] for r in chosen], labels, png, footer("python -m convit.locality " + shlex.join(argv))
    )
    hollow = "; hollow squares: the authors' measure" if authors else ""
    written.items.insert(
        1,
        (
            "attention_distance.png",
            "attention distance",
            "Mean attention distance in pixels of "
            f"every head against depth (the ViT paper's Fig. 7), every model on one figure{hollow}.",
        ),
    )
