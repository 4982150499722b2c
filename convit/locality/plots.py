"""Plots of the locality measures (PNG): non-locality per block, gates, attention maps, ablation, over epochs."""

import json
import math
import os
from collections.abc import Sequence

import torch

from .measures import LocalityError

# ---------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_nonlocality(report: dict, path: str) -> None:
    """Non-locality per block, one dot per head; the GPSA blocks shaded."""
    plt = _pyplot()
    distance = torch.tensor(report["nonlocality"])
    blocks, heads = distance.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * blocks + 2), 3.2))
    ax.axvspan(-0.5, report["local_up_to_layer"] - 0.5, color="0.92", label="GPSA blocks")
    for h in range(heads):
        jitter = (h - (heads - 1) / 2) * min(0.05, 0.5 / heads)
        ax.scatter(
            torch.arange(blocks) + jitter,
            distance[:, h],
            s=14,
            color=plt.cm.viridis(h / max(heads - 1, 1)),
            label=f"head {h}" if heads <= 9 else None,
        )
    ax.set_xlabel("block")
    ax.set_ylabel("non-locality (patches)")
    ax.set_xticks(range(blocks))
    ax.set_xlim(-0.5, blocks - 0.5)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=6, ncol=2, loc="upper left", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _heatmap(
    values: torch.Tensor,
    path: str,
    title: str,
    label: str,
    cmap: str,
    vmin: float | None = None,
    vmax: float | None = None,
    fmt: str = "{:.2f}",
) -> None:
    plt = _pyplot()
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=(max(3.0, 0.45 * cols + 1.8), max(2.2, 0.35 * rows + 1.2)))
    image = ax.imshow(values.numpy(), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    if rows * cols <= 200:
        for r in range(rows):
            for c in range(cols):
                ax.text(c, r, fmt.format(values[r, c].item()), ha="center", va="center", fontsize=6)
    ax.set_xlabel("head")
    ax.set_ylabel("block")
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gates(report: dict, path: str) -> None:
    """Heatmap of sigmoid(lambda), GPSA blocks x heads."""
    gate = torch.tensor(report["gates"]).reshape(-1, report["num_heads"])
    _heatmap(gate, path, "gate $\\sigma(\\lambda)$: 1 = positional, 0 = content", "gate", "RdBu_r", 0.0, 1.0)


def plot_ablation(drop: torch.Tensor, base: float, path: str) -> None:
    """Heatmap of the top-1 drop (points) when each head is zeroed, blocks x heads."""
    points = drop * 100
    bound = max(points.abs().max().item(), 1e-6)
    _heatmap(
        points,
        path,
        f"top-1 drop when a head is zeroed\n(points; top-1 {100 * base:.1f}%)",
        "points",
        "RdBu_r",
        -bound,
        bound,
        fmt="{:.1f}",
    )


def plot_attention_maps(
    maps: Sequence[torch.Tensor],
    grid_size: tuple[int, int],
    query: tuple[int, int],
    path: str,
    gate_per_block: Sequence[Sequence[float] | None] | None = None,
) -> None:
    """Every head's attention for one query patch (rows: blocks, columns: heads), the paper's figure."""
    plt = _pyplot()
    rows, cols = grid_size
    index = query[0] * cols + query[1]
    blocks, heads = len(maps), maps[0].shape[0]
    fig, axes = plt.subplots(blocks, heads, figsize=(1.1 * heads + 0.6, 1.1 * blocks + 0.4), squeeze=False)
    for b in range(blocks):
        for h in range(heads):
            ax = axes[b, h]
            ax.imshow(maps[b][h, index].reshape(rows, cols).numpy(), cmap="viridis")
            ax.scatter([query[1]], [query[0]], marker="x", s=10, color="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            gate = gate_per_block[b] if gate_per_block is not None else None
            if gate is not None:
                ax.set_title(f"g={gate[h]:.2f}", fontsize=6, pad=1)
            if h == 0:
                ax.set_ylabel(f"block {b}", fontsize=7)
    fig.suptitle(f"attention of query patch (row {query[0]}, col {query[1]})", fontsize=8)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.35 / (1.1 * blocks + 0.4)))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _read_log(log_path: str) -> tuple[list[float], list[dict]]:
    epochs, records = [], []
    with open(log_path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise LocalityError(f"{log_path}:{number} is not a JSON line ({error.msg})") from None
            if isinstance(record, dict) and isinstance(record.get("locality"), dict):
                epochs.append(record.get("epoch", len(epochs)))
                records.append(record["locality"])
    if not records:
        raise LocalityError(
            f"{log_path} has no records with a 'locality' entry (log it with convit.locality.epoch_locality)"
        )
    return epochs, records


def _plot_over_epochs(
    epochs: list[float], values: torch.Tensor, path: str, ylabel: str, ylim: tuple[float, float] | None = None
) -> None:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    _, blocks, heads = values.shape
    ncols = min(blocks, 4)
    nrows = math.ceil(blocks / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.0 * nrows), squeeze=False, sharex=True)
    for b in range(nrows * ncols):
        ax = axes[b // ncols, b % ncols]
        if b >= blocks:
            ax.axis("off")
            continue
        for h in range(heads):
            ax.plot(
                epochs, values[:, b, h].numpy(), lw=1, color=plt.cm.viridis(h / max(heads - 1, 1)), label=f"head {h}"
            )
        ax.set_title(f"block {b}", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.tick_params(labelsize=7)
        if b % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
        if b // ncols == nrows - 1:
            ax.set_xlabel("epoch", fontsize=8)
    if heads <= 9:
        axes[0, 0].legend(fontsize=5, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_log(log_path: str, out_dir: str) -> list[str]:
    """Plot the per-epoch ``locality`` entries of a training ``log.jsonl``: one subplot per block, one line per head.

    Writes ``nonlocality_over_epochs.png`` and ``gates_over_epochs.png`` in ``out_dir``; returns their paths.
    """
    epochs, records = _read_log(log_path)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    distance = torch.tensor([record["nonlocality"] for record in records], dtype=torch.float32)
    paths.append(os.path.join(out_dir, "nonlocality_over_epochs.png"))
    _plot_over_epochs(epochs, distance, paths[-1], "non-locality")
    gate = torch.tensor([record["gates"] for record in records], dtype=torch.float32)
    if gate.dim() == 3 and gate.shape[1] > 0:
        paths.append(os.path.join(out_dir, "gates_over_epochs.png"))
        _plot_over_epochs(epochs, gate, paths[-1], "gate", (0.0, 1.0))
    return paths
