"""Plots of training logs over epochs: each block's gates, non-locality, sharpness and centres per head, and the
loss and accuracy curves of one run or several."""

import math
import os
from collections.abc import Sequence

import torch

from ..run_log import log_rows
from .errors import LocalityError
from .plots import pyplot


def _locality_records(log_path: str) -> tuple[list[float], list[dict]]:
    """(epochs, per-epoch ``locality`` entries) of a training log."""
    rows = log_rows(log_path)
    records = [(r.get("epoch", i), r["locality"]) for i, r in enumerate(rows) if isinstance(r.get("locality"), dict)]
    if not records:
        raise LocalityError(
            f"{log_path} has no records with a 'locality' entry (log it with convit.locality.epoch_locality)"
        )
    return [e for e, _ in records], [r for _, r in records]


def _block_axes(plt, blocks: int, row_height: float, extra_height: float = 0.0, **subplots):
    """A figure with one subplot per block, four to a row, the spare cells blanked: (fig, the blocks' axes, columns)."""
    ncols = min(blocks, 4)
    nrows = math.ceil(blocks / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(2.6 * ncols, row_height * nrows + extra_height), squeeze=False, **subplots
    )
    cells = list(axes.flat)
    for ax in cells[blocks:]:
        ax.axis("off")
    return fig, cells[:blocks], ncols


def _plot_over_epochs(
    epochs: list[float], values: torch.Tensor, path: str, ylabel: str, ylim: tuple[float, float] | None = None
) -> None:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    _, blocks, heads = values.shape
    fig, axes, ncols = _block_axes(plt, blocks, 2.0, sharex=True)
    nrows = math.ceil(blocks / ncols)
    for b, ax in enumerate(axes):
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
        axes[0].legend(fontsize=5, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_centres_over_epochs(epochs: list[float], centres: torch.Tensor, path: str) -> None:
    plt = pyplot()
    _, blocks, heads, _ = centres.shape
    fig, axes, _ = _block_axes(plt, blocks, 2.6, extra_height=0.3)
    for b, ax in enumerate(axes):
        for h in range(heads):
            color = plt.cm.viridis(h / max(heads - 1, 1))
            path_xy = centres[:, b, h].numpy()
            ax.plot(path_xy[:, 0], path_xy[:, 1], lw=1, color=color, label=f"head {h}")
            ax.scatter(path_xy[:1, 0], path_xy[:1, 1], s=10, color=color, marker="o")
            ax.scatter(path_xy[-1:, 0], path_xy[-1:, 1], s=16, color=color, marker="x")
        ax.invert_yaxis()
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"GPSA block {b}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("dx", fontsize=7)
        ax.set_ylabel("dy", fontsize=7)
    if heads <= 9:
        axes[0].legend(fontsize=5, frameon=False)
    fig.suptitle(f"positional centres over epochs {epochs[0]}..{epochs[-1]} (o: first, x: last)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _tensor(values: list) -> torch.Tensor:
    """Nested lists with None (JSON's stand-in for NaN) as a float tensor."""
    if isinstance(values, list):
        return torch.stack([_tensor(v) for v in values]) if values else torch.zeros(0)
    return torch.tensor(float("nan") if values is None else float(values))


def _curves(log_path: str) -> dict[str, list[float]]:
    """The per-epoch ``epoch``, ``train_loss``, ``val_loss`` and ``val_acc1`` of a training log (nan where absent)."""
    curves: dict[str, list[float]] = {key: [] for key in CURVES}
    for row in log_rows(log_path):
        if "train_loss" in row:
            for key in CURVES:
                value = row.get(key, len(curves["epoch"]) if key == "epoch" else None)
                curves[key].append(float("nan") if value is None else float(value))
    return curves


CURVES = ("epoch", "train_loss", "val_loss", "val_acc1")


def plot_training_curves(log_paths: Sequence[str], labels: Sequence[str], path: str) -> None:
    """Training loss, validation loss and validation top-1 over epochs, one line per log; logs with the same
    label (seeds of one setting) share a colour."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    colours: dict[str, str] = {}
    for log_path, label in zip(log_paths, labels, strict=True):
        curves = _curves(log_path)
        first = label not in colours
        colour = colours.setdefault(label, f"C{len(colours) % 10}")
        for ax, key in zip(axes, CURVES[1:], strict=True):
            ax.plot(curves["epoch"], curves[key], lw=1, color=colour, alpha=0.8, label=label if first else None)
    for ax, key, title in zip(
        axes, CURVES[1:], ("training loss", "validation loss", "validation top-1 (%)"), strict=True
    ):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        if key != "val_acc1":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_log(log_path: str, out_dir: str) -> list[str]:
    """Plot a training ``log.jsonl``: its per-epoch ``locality`` entries (one subplot per block, one line per
    head) and its loss and accuracy curves.

    Writes ``nonlocality_over_epochs.png``, ``gates_over_epochs.png`` (GPSA models), where the log has
    them ``sharpness_over_epochs.png`` and ``centres_over_epochs.png``, and ``training_curves.png``; returns
    their paths.
    """
    epochs, records = _locality_records(log_path)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "training_curves.png")
    plot_training_curves([log_path], [os.path.basename(os.path.dirname(os.path.abspath(log_path)))], path)
    return [path, *plot_locality_over_epochs(epochs, records, out_dir)]


def plot_locality_over_epochs(epochs: Sequence[float], records: Sequence[dict], out_dir: str) -> list[str]:
    """The measures of ``records`` (``epoch_locality`` entries, one per epoch in ``epochs``) over epochs: one
    subplot per block, one line per head; ``nonlocality_over_epochs.png``, ``gates_over_epochs.png`` (GPSA
    models) and, where every record has them, ``sharpness_over_epochs.png`` and ``centres_over_epochs.png``."""
    os.makedirs(out_dir, exist_ok=True)
    epochs = list(epochs)
    paths = []
    distance = torch.tensor([record["nonlocality"] for record in records], dtype=torch.float32)
    paths.append(os.path.join(out_dir, "nonlocality_over_epochs.png"))
    _plot_over_epochs(epochs, distance, paths[-1], "non-locality")
    gate = torch.tensor([record["gates"] for record in records], dtype=torch.float32)
    if gate.dim() == 3 and gate.shape[1] > 0:
        paths.append(os.path.join(out_dir, "gates_over_epochs.png"))
        _plot_over_epochs(epochs, gate, paths[-1], "gate", (0.0, 1.0))
    if all(record.get("sharpness") for record in records):
        sharp = torch.tensor([record["sharpness"] for record in records], dtype=torch.float32)
        paths.append(os.path.join(out_dir, "sharpness_over_epochs.png"))
        _plot_over_epochs(epochs, sharp, paths[-1], "sharpness $-w_2$")
    if all(record.get("centres") for record in records):
        paths.append(os.path.join(out_dir, "centres_over_epochs.png"))
        _plot_centres_over_epochs(epochs, torch.stack([_tensor(record["centres"]) for record in records]), paths[-1])
    return paths
