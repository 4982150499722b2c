"""Gate interventions: what a ConViT loses when its GPSA gates are forced to one path.

For every GPSA block, and for all of them at once, the gates sigmoid(lambda) of every head are forced to
0 (content attention only) or 1 (positional attention only) and the model is evaluated: top-1 and
cross-entropy beside the unchanged model's. Forcing sets ``gating_param`` to -inf / +inf, where the
sigmoid is exactly 0 / 1, so the GPSA formula

    out_h = (1 - sigmoid(lambda_h)) content_h V_h + sigmoid(lambda_h) positional_h V_h

keeps exactly one of its two terms (tested against the positional term computed by hand). A large drop
when the positional path is removed says the model uses it; a small one, that the gates' positional
weight is decoration.
"""

from __future__ import annotations

import contextlib
import csv
import math
import sys
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LocalityError

FIELDS = ["intervention", "blocks", "forced_gate", "top1", "loss", "top1_change", "loss_change"]
PATHS = {0.0: "content only", 1.0: "positional only"}


def gpsa_blocks(model: nn.Module) -> list[int]:
    """Indices of the blocks whose attention has a ``gating_param`` (ours and timm's ConViT)."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    return [i for i, block in enumerate(getattr(model, "blocks", [])) if hasattr(block.attn, "gating_param")]


@contextlib.contextmanager
def forced_gates(model: nn.Module, blocks: Sequence[int], gate: float) -> Iterator[None]:
    """Inside: the gates of every head of ``blocks`` are exactly ``gate`` (0 or 1); restored afterwards."""
    if gate not in PATHS:
        raise LocalityError(f"a gate can be forced to 0 (content only) or 1 (positional only), not {gate}")
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    params = [model.blocks[b].attn.gating_param for b in blocks]
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p in params:
                p.fill_(math.inf if gate == 1.0 else -math.inf)
        yield
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved, strict=True):
                p.copy_(value)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> tuple[float, float]:
    """(top-1 in %, mean cross-entropy) of ``model`` on ``images``/``labels``, in eval mode without grad."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                x = images[start : start + batch_size].to(device=param.device, dtype=param.dtype)
                y = labels[start : start + batch_size].to(param.device)
                logits = model(x).float()
                correct += (logits.argmax(dim=-1) == y).sum().item()
                loss += F.cross_entropy(logits, y, reduction="sum").item()
    finally:
        model.train(was_training)
    return 100.0 * correct / images.shape[0], loss / images.shape[0]


def gate_interventions(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64, progress: bool = False
) -> list[dict]:
    """One row per intervention (see the module docstring): the unchanged model first, then each GPSA block
    forced to content only and to positional only, then all GPSA blocks at once; top-1 (%) and loss, and their
    change from the unchanged model."""
    blocks = gpsa_blocks(model)
    if not blocks:
        raise LocalityError(f"{type(model).__name__} has no GPSA block: gate interventions need a ConViT")
    plan = [("unchanged", [], None)]
    for gate in PATHS:
        plan += [(f"block {b} {PATHS[gate]}", [b], gate) for b in blocks]
        plan.append((f"all GPSA {PATHS[gate]}", blocks, gate))
    rows, base = [], None
    for i, (name, chosen, gate) in enumerate(plan, 1):
        context = forced_gates(model, chosen, gate) if gate is not None else contextlib.nullcontext()
        with context:
            top1, loss = evaluate(model, images, labels, batch_size)
        base = base or (top1, loss)
        rows.append(
            {
                "intervention": name,
                "blocks": " ".join(str(b) for b in chosen),
                "forced_gate": "" if gate is None else int(gate),
                "top1": round(top1, 3),
                "loss": round(loss, 5),
                "top1_change": round(top1 - base[0], 3),
                "loss_change": round(loss - base[1], 5),
            }
        )
        if progress:
            print(f"[{i}/{len(plan)}] {name}: top-1 {top1:.2f}%, loss {loss:.4f}", file=sys.stderr, flush=True)
    return rows


def write_csv(rows: Sequence[dict], path: str, extra: dict | None = None) -> None:
    """The rows as CSV (``extra`` columns, such as the model's label, first)."""
    extra = extra or {}
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*extra, *FIELDS])
        writer.writeheader()
        writer.writerows({**extra, **row} for row in rows)


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| intervention | top-1 (%) | change (points) | loss | change |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['intervention']} | {row['top1']:.2f} | {row['top1_change']:+.2f} | {row['loss']:.4f} | "
            f"{row['loss_change']:+.4f} |"
        )
    return "\n".join(lines) + "\n"


def plot_interventions(rows: Sequence[dict], path: str, title: str, footer: str) -> None:
    """Top-1 per intervention as horizontal bars (content only: blue, positional only: orange), the unchanged
    model as a dashed line; ``footer`` (date, machine, command) under the axes."""
    from .plots import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(rows) + 1.6))
    colours = {"": "0.5", 0: "C0", 1: "C1"}
    names = [row["intervention"] for row in rows][::-1]
    values = [row["top1"] for row in rows][::-1]
    ax.barh(names, values, color=[colours[row["forced_gate"]] for row in rows][::-1])
    ax.axvline(rows[0]["top1"], color="k", ls="--", lw=0.8, label="unchanged")
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.1f}", va="center", fontsize=7)
    ax.set_xlabel("top-1 (%)")
    ax.set_xlim(0, 105)
    ax.set_title(title + "\nblue: gates forced to 0 (content only), orange: to 1 (positional only)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    fig.text(0.01, 0.005, footer, fontsize=5.5, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def footer(command: str) -> str:
    """Date (UTC), machine and command, for the foot of a figure."""
    import datetime
    import platform

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{date} | {platform.node()} ({platform.machine()}, {torch.get_num_threads()} threads) | {command}"


def intervene(model: nn.Module, label: str, images, labels, args, out: str, written) -> list[dict]:
    """``python -m convit.locality --intervene``: the interventions on the command's images, written as
    OUT/interventions.csv and OUT/interventions.png (listed in report.md through ``written``); returns the rows
    (none for a model without GPSA)."""
    import os
    import shlex

    if not gpsa_blocks(model):
        print(f"note: {label} has no GPSA block: no gate to force", file=sys.stderr)
        return []
    rows = gate_interventions(model, images, labels, args.batch_size, progress=True)
    path = os.path.join(out, "interventions.csv")
    write_csv(rows, path)
    written.add(
        path,
        label,
        "Top-1 and loss with the gates of each GPSA block (and of all) forced to 0 (content "
        "only) or 1 (positional only), beside the unchanged model.",
    )
    png = written.add(
        os.path.join(out, "interventions.png"),
        label,
        "Top-1 per gate intervention: a long orange bar means the positional path alone does the job, a short "
        "blue one that the model needs it.",
    )
    command = "python -m convit.locality " + shlex.join(getattr(args, "_argv", []))
    plot_interventions(rows, png, f"{label}: gate interventions on {images.shape[0]} images", footer(command))
    return rows
