"""Evaluation beyond top-1: a confusion matrix summed over ranks, per-class accuracy, precision and recall.

``evaluate_confusion`` makes one pass over the (sharded) validation loader and returns the same numbers as
``engine.evaluate`` plus the confusion matrix; the per-class tables and the figure are written from it.
"""

from __future__ import annotations

import csv
import datetime
import platform
import sys
from pathlib import Path

import torch

from .engine import evaluate

PNG_MAX_CLASSES = 100  # above this, a confusion-matrix figure is unreadable: the CSV only


def evaluate_confusion(model, loader, device, num_classes: int, amp_dtype=None) -> tuple[dict, torch.Tensor]:
    """(top-1/top-5/loss as ``engine.evaluate`` gives them, confusion matrix [true, predicted]) over all ranks."""
    stats = evaluate(model, loader, device, amp_dtype, num_classes=num_classes)
    return stats, stats.pop("confusion")


def per_class(confusion: torch.Tensor, class_names) -> list[dict]:
    """One row per class: images, accuracy (= recall), precision, recall, in %; NaN where a class has none."""
    c = confusion.double()
    true, predicted, hits = c.sum(1), c.sum(0), c.diag()
    rows = []
    for k, name in enumerate(class_names):
        recall = 100.0 * hits[k].item() / true[k].item() if true[k] else float("nan")
        precision = 100.0 * hits[k].item() / predicted[k].item() if predicted[k] else float("nan")
        rows.append(
            {"class": name, "images": int(true[k]), "accuracy": recall, "precision": precision, "recall": recall}
        )
    return rows


def mean_class_accuracy(rows: list[dict]) -> float:
    """The mean of per-class accuracy over the classes that have images (%)."""
    values = [r["accuracy"] for r in rows if r["images"]]
    return sum(values) / max(len(values), 1)


def write_tables(confusion: torch.Tensor, class_names, out_dir: Path) -> list[Path]:
    """per_class.csv and confusion.csv (rows: true class, columns: predicted class) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = per_class(confusion, class_names)
    with open(out_dir / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    with open(out_dir / "confusion.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, confusion.tolist()):
            writer.writerow([name, *row])
    return [out_dir / "per_class.csv", out_dir / "confusion.csv"]


def plot_confusion(confusion: torch.Tensor, class_names, path: Path, title: str) -> Path | None:
    """A row-normalised confusion-matrix heatmap (% of each true class) with date, machine and command;
    None above PNG_MAX_CLASSES classes."""
    k = len(class_names)
    if k > PNG_MAX_CLASSES:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = 100.0 * confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)
    side = min(4 + 0.16 * k, 20)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the true class's images")
    font = max(4, 9 - k // 12)
    ax.set_xticks(range(k), class_names, rotation=90, fontsize=font)
    ax.set_yticks(range(k), class_names, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    colour = "white" if rates[i, j] > 60 else "black"
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=font, color=colour)
    ax.set_title(title, fontsize=9)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))
    fig.text(0.01, 0.005, f"{stamp} · {platform.node()} · {command}"[:200], fontsize=6, color="0.4")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def append_row(path: Path, row: dict) -> None:
    """Append ``row`` to a CSV file, with a header when the file is new (or empty)."""
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
