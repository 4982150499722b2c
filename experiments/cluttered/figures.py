"""Tables and figures of the cluttered-digits experiment (``run.py``): summary.md, data_efficiency.png,
dynamics.png."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from convit.locality.plots import pyplot
from experiments.harness import finish_gap_panel, plot_accuracy_panel


def _num(x, fmt="{:.1f}") -> str:
    if x in (None, "") or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return fmt.format(float(x))


def uniform_nonlocality(side: int) -> float:
    """Non-locality of uniform attention on a side x side patch grid (mean distance between two patches)."""
    from convit.locality import patch_distances

    return float(patch_distances((side, side)).mean())


def block_means(rows: list[dict], key: str, by=("model", "fraction", "block")) -> dict:
    """{(model, fraction, block, ...): mean of ``key`` over heads and seeds}, skipping empty cells."""
    cells = defaultdict(list)
    for r in rows:
        if r.get(key) not in ("", None):
            cells[
                tuple(
                    float(r[k]) if k in ("fraction",) else (int(r[k]) if k in ("block", "step") else r[k]) for k in by
                )
            ].append(float(r[key]))
    return {k: float(np.mean(v)) for k, v in cells.items()}


def digits_gap(digits: list[dict], fraction: float):
    """The digits experiment's (experiments/data_efficiency/results) mean gap ± std at this fraction, or None."""
    for r in digits:
        if math.isclose(float(r["fraction"]), fraction):
            return float(r["gap_mean"]), float(r["gap_std"])
    return None


def summary_markdown(summary, locality, dynamics, digits, setting: str, val_images: int, grid: int) -> str:
    """Top-1 and gaps beside the digits' and the paper's; final locality per block; gates over training."""
    lines = [
        f"Setting: {setting}",
        "",
        "| fraction | train canvases | ConViT top-1 | DeiT top-1 | gap (ours) [95 % CI] | p (paired t) | ConViT ahead "
        "| gap, digits | gap, paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        dg = digits_gap(digits, r["fraction"])
        lines.append(
            f"| {r['fraction']:g} | {r['train_images']} | {_num(r['convit_mean'])} ± {_num(r['convit_std'])} | "
            f"{_num(r['deit_mean'])} ± {_num(r['deit_std'])} | {_num(r['gap_mean'], '{:+.1f}')} ± "
            f"{_num(r['gap_std'])} [{_num(r['ci_low'], '{:+.1f}')}, {_num(r['ci_high'], '{:+.1f}')}] | "
            f"{_num(r['p_value'], '{:.3f}')} | {r['convit_ahead_in']}/{r['gap_seeds']} | "
            f"{'–' if dg is None else f'{dg[0]:+.1f} ± {dg[1]:.1f}'} | {_num(r['paper_gap'], '{:+.1f}')} |"
        )
    lines += [
        "",
        f"Top-1 in % on the {val_images} validation canvases, mean ± sample std over seeds; the gap is ConViT minus "
        "DeiT, paired by seed (same subset, same batch order), mean ± std, with the 95 % t interval of the mean; "
        "'ConViT ahead': seed pairs in which ConViT scored higher. Digits: experiments/data_efficiency/results (800 steps, 16 "
        "patches); paper: ConViT-S − DeiT-S on ImageNet subsets (Table 2).",
        "",
    ]
    final = block_means(locality, "nonlocality")
    gate = block_means(locality, "gate")
    first = [r for r in dynamics if int(r["step"]) == 0]
    start_gate = block_means(first, "gate", ("model", "block"))
    start_nl = block_means(first, "nonlocality", ("model", "block"))
    blocks = sorted({k[2] for k in final})
    if blocks:
        lines += [
            "Non-locality per block (patches, mean over heads and seeds, on one canvas per validation digit); GPSA "
            "blocks marked *, their mean gate σ(λ) in brackets (1 = positional, 0 = content); 'untrained': the "
            f"same seeds' initial weights; uniform attention on the {grid}x{grid} grid gives "
            f"{uniform_nonlocality(grid):.2f}:",
            "",
            "| model | fraction | " + " | ".join(f"block {b}" for b in blocks) + " |",
            "|---|---|" + "---|" * len(blocks),
        ]
        models = sorted({k[0] for k in final})
        for model in models:
            rows = [("untrained", {b: (start_nl.get((model, b)), start_gate.get((model, b))) for b in blocks})]
            for f in sorted({k[1] for k in final if k[0] == model}):
                rows.append((f"{f:g}", {b: (final.get((model, f, b)), gate.get((model, f, b))) for b in blocks}))
            for label, cells in rows:
                parts = [
                    "–" if d is None else (f"{d:.2f}* ({g:.2f})" if g is not None else f"{d:.2f}")
                    for d, g in (cells[b] for b in blocks)
                ]
                lines.append(f"| {model} | {label} | " + " | ".join(parts) + " |")
        lines.append("")
    content = block_means(dynamics, "nonlocality_content", ("model", "fraction", "step", "block"))
    gates = block_means(dynamics, "gate", ("model", "fraction", "step", "block"))
    if gates:
        steps = sorted({k[2] for k in gates})
        fractions = sorted({k[1] for k in gates})
        gblocks = sorted({k[3] for k in gates})
        lines += [
            "ConViT's gate σ(λ) and the content part's non-locality (in brackets) per GPSA block over training "
            "(mean over heads and seeds):",
            "",
            "| fraction | step | " + " | ".join(f"block {b}" for b in gblocks) + " |",
            "|---|---|" + "---|" * len(gblocks),
        ]
        for f in fractions:
            for s in steps:
                parts = [
                    f"{_num(gates.get(('convit', f, s, b)), '{:.3f}')} "
                    f"({_num(content.get(('convit', f, s, b)), '{:.2f}')})"
                    for b in gblocks
                ]
                lines.append(f"| {f:g} | {s} | " + " | ".join(parts) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot_accuracy(summary, digits, path, setting: str) -> None:
    """Top-1 vs fraction (mean ± std) and the gap beside the digits' and the paper's."""
    plt = pyplot()
    f = np.array([r["fraction"] for r in summary])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    plot_accuracy_panel(
        ax,
        summary,
        "fraction of training canvases per class",
        "cluttered digits, same number of steps per run (± std over seeds)",
    )
    x = np.arange(len(f))
    gap = np.array([r["gap_mean"] for r in summary])
    err = np.array([[r["gap_mean"] - r["ci_low"] for r in summary], [r["ci_high"] - r["gap_mean"] for r in summary]])
    dg = [digits_gap(digits, v) for v in f]
    paper = np.array([np.nan if r["paper_gap"] is None else r["paper_gap"] for r in summary], dtype=float)
    bx.bar(x - 0.27, gap, 0.27, yerr=np.nan_to_num(err), capsize=3, color="C0", label="cluttered (ours), 95 % CI")
    bx.bar(
        x,
        [np.nan if d is None else d[0] for d in dg],
        0.27,
        yerr=[0 if d is None else d[1] for d in dg],
        capsize=3,
        color="C2",
        label="digits (ours), ± std",
    )
    bx.bar(x + 0.27, paper, 0.27, color="0.6", label="paper (ImageNet, ConViT-S − DeiT-S)")
    finish_gap_panel(bx, f, "gap, paired by seed", legend_size=7)
    fig.suptitle(setting, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dynamics(dynamics, path, setting: str, grid: int) -> None:
    """Per fraction (columns): ConViT's gates, every block's non-locality (both models) and the GPSA content
    part's non-locality over training steps, mean over heads and seeds."""
    plt = pyplot()
    gates = block_means(dynamics, "gate", ("model", "fraction", "step", "block"))
    nl = block_means(dynamics, "nonlocality", ("model", "fraction", "step", "block"))
    content = block_means(dynamics, "nonlocality_content", ("model", "fraction", "step", "block"))
    fractions = sorted({k[1] for k in nl})
    blocks = sorted({k[3] for k in nl})
    cmap = plt.cm.viridis
    fig, axes = plt.subplots(3, len(fractions), figsize=(4.2 * len(fractions), 9), squeeze=False)
    for col, f in enumerate(fractions):
        for row, (table, title, models) in enumerate(
            (
                (gates, "ConViT gate σ(λ) (1 = positional)", ("convit",)),
                (nl, "non-locality (patches); ConViT —, DeiT - -", ("convit", "deit")),
                (content, "ConViT content-part non-locality (patches)", ("convit",)),
            )
        ):
            ax = axes[row][col]
            for model in models:
                for b in blocks:
                    pts = sorted((k[2], v) for k, v in table.items() if k[0] == model and k[1] == f and k[3] == b)
                    if pts:
                        s, v = zip(*pts)
                        ax.plot(
                            s,
                            v,
                            "-" if model == "convit" else "--",
                            marker="o",
                            ms=2,
                            color=cmap(b / max(len(blocks) - 1, 1)),
                            label=f"block {b}" if model == models[0] else None,
                        )
            if row > 0:
                ax.axhline(uniform_nonlocality(grid), color="k", lw=0.8, ls=":", label="uniform attention")
            ax.set_title(f"{title}\nfraction {f:g}", fontsize=8)
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.legend(fontsize=6, ncol=2)
    fig.suptitle(setting, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(images, labels, path, caption: str, rows: int = 4, cols: int = 8, patch: int = 4) -> None:
    """The first rows x cols canvases as one mosaic (grey scale, -1 black to 1 white, the patch grid drawn
    as faint lines), each with its label above it."""
    plt = pyplot()
    side, pad = images.shape[-1], 6
    mosaic = np.full((rows * (side + pad) + pad, cols * (side + 2) + 2), 0.2, dtype=np.float32)
    fig, ax = plt.subplots(figsize=(1.45 * cols, 1.5 * rows + 0.5))
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        y, x = pad + r * (side + pad), 2 + c * (side + 2)
        tile = images[k, 0].numpy().copy()
        tile[::patch, :] = np.maximum(tile[::patch, :], -0.75)  # the patch grid, faint on empty canvas
        tile[:, ::patch] = np.maximum(tile[:, ::patch], -0.75)
        mosaic[y : y + side, x : x + side] = tile
        ax.text(x + side / 2, y - 1, f"label {int(labels[k])}", ha="center", va="bottom", fontsize=7, color="k")
    ax.imshow(mosaic, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(caption, fontsize=6, wrap=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
