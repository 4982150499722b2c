#!/usr/bin/env python
"""Data efficiency at desk scale: ConViT vs its DeiT twin on class-balanced subsets of the digits.

The paper's Table 2 (d'Ascoli et al., 2021) trains ConViT-S and DeiT-S on 5-100 % of ImageNet with
the number of images seen held fixed. Here the same protocol runs on scikit-learn's digits, on CPU:

- every run trains for the same number of optimizer steps (``--steps``) at a fixed batch size,
  whatever the fraction; the subset is cycled (a fresh shuffle each pass, batches may straddle two
  passes), and the lr follows a cosine with linear warm-up by step;
- the subset is ``class_balanced_subset(train targets, fraction, seed)``: seeded, class-balanced;
- the DeiT twin is the same config with ``local_up_to_layer: 0`` (every block MHSA, class token
  from the start): same width, depth, heads and recipe;
- validation is the fixed 360-image digits split, the same for every run.

    python -m experiments.data_efficiency.run                          # 2 models x 5 fractions x 3 seeds
    python -m experiments.data_efficiency.run --fractions 0.1 --seeds 0 --steps 3 --out /tmp/de

Writes OUT/results.csv (one row per run), OUT/locality.csv (non-locality and gate per run, block,
head), OUT/summary.csv and OUT/summary.md (means, spreads, our gap beside the paper's) and
OUT/data_efficiency.png, OUT/locality.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from convit.errors import UserError, run_entry_point
from convit.locality.plots import pyplot
from convit.training.config import Config, validate
from convit.training.engine import model_kwargs, seed_everything
from convit.variants import create_model
from experiments.harness import (
    add_grid_flags,
    add_recipe_flags,
    base_config,
    describe,
    digits_data,
    finish_gap_panel,
    grid_values,
    locality_markdown,
    locality_rows,
    locality_table,
    mean_std,
    num,
    plot_accuracy_panel,
    prepare_out,
    read_csv,
    run_grid,
    write_csv,
)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"
MODELS = ("convit", "deit")
# The paper's Table 2: top-1 (%) of ConViT-S and DeiT-S on ImageNet subsets, same images seen.
PAPER = {0.05: (47.8, 34.8), 0.1: (59.6, 48.0), 0.3: (73.7, 66.1), 0.5: (78.2, 74.6), 1.0: (81.4, 79.9)}
INIT_FIELDS = ["model", "seed", "block", "type", "head", "nonlocality", "gate"]


# ---------------------------------------------------------------------------------------- pure helpers


def paper_gap(fraction: float):
    """ConViT-S minus DeiT-S top-1 in the paper at this fraction, or None if the paper has no row."""
    for f, (convit, deit) in PAPER.items():
        if math.isclose(f, fraction):
            return round(convit - deit, 1)
    return None


def summarize(results: list[dict]) -> list[dict]:
    """One row per fraction: both models' mean ± std top-1, our gap (paired by seed) and the paper's."""
    rows = []
    for fraction in sorted({float(r["fraction"]) for r in results}):
        at = [r for r in results if math.isclose(float(r["fraction"]), fraction)]
        acc = {m: {int(r["seed"]): float(r["val_acc1"]) for r in at if r["model"] == m} for m in MODELS}
        row = {"fraction": fraction, "train_images": int(next(r["train_images"] for r in at))}
        for m in MODELS:
            mean, std = mean_std(list(acc[m].values())) if acc[m] else (float("nan"), float("nan"))
            row.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_n": len(acc[m])})
        seeds = sorted(set(acc["convit"]) & set(acc["deit"]))
        gap_mean, gap_std = (
            mean_std([acc["convit"][s] - acc["deit"][s] for s in seeds]) if seeds else (float("nan"), float("nan"))
        )
        gap_paper = paper_gap(fraction)
        row.update(
            {
                "gap_mean": gap_mean,
                "gap_std": gap_std,
                "gap_seeds": len(seeds),
                "paper_convit": PAPER.get(fraction, (None, None))[0] if gap_paper is not None else None,
                "paper_deit": PAPER.get(fraction, (None, None))[1] if gap_paper is not None else None,
                "paper_gap": gap_paper,
            }
        )
        rows.append(row)
    return rows


def summary_markdown(summary: list[dict], locality: list[dict], setting: str, init: list[dict] = ()) -> str:
    """The two tables (top-1 and gaps; locality per block) as markdown."""

    lines = [
        f"Setting: {setting}",
        "",
        "| fraction | train images | ConViT top-1 | DeiT top-1 | gap (ours) | seeds | "
        "paper ConViT-S | paper DeiT-S | gap (paper) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| {r['fraction']:g} | {r['train_images']} | {num(r['convit_mean'])} ± {num(r['convit_std'])} | "
            f"{num(r['deit_mean'])} ± {num(r['deit_std'])} | {num(r['gap_mean'], '{:+.1f}')} ± "
            f"{num(r['gap_std'])} | {r['gap_seeds']} | {num(r['paper_convit'])} | {num(r['paper_deit'])} | "
            f"{num(r['paper_gap'], '{:+.1f}')} |"
        )
    lines += [
        "",
        "Top-1 in % on the 360 validation digits, mean ± sample std over seeds; the gap is "
        "ConViT minus DeiT, paired by seed (same subset), mean ± std over seeds.",
        "",
    ]
    lines += locality_markdown(locality, init)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- runs


def run_config(base: Config, model: str, fraction: float, seed: int) -> Config:
    """The Config of one run: the base recipe, this fraction and seed, and no GPSA for the DeiT twin."""
    cfg = dataclasses.replace(base, sampling_ratio=fraction, seed=seed, progress=False)
    if model == "deit":
        cfg = dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, "local_up_to_layer": 0})
    return validate(cfg)


def init_locality(base: Config, models, seeds, val_images) -> list[dict]:
    """Locality of each run's untrained model (the same weights for every fraction of a seed)."""
    rows = []
    for model in models:
        for seed in seeds:
            cfg = run_config(base, model, 1.0, seed)
            seed_everything(seed)  # as in train_run: the same initial weights
            net = create_model(cfg.model, 10, **model_kwargs(cfg))
            rows += [{"model": model, "seed": seed, **r} for r in locality_rows(net, val_images)]
    return rows


# --------------------------------------------------------------------------------------------- plots


def plot(summary: list[dict], out: Path, setting: str) -> None:
    """Top-1 vs fraction (log x, mean ± std bands) and our gap beside the paper's."""
    plt = pyplot()

    f = np.array([r["fraction"] for r in summary])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    plot_accuracy_panel(ax, summary, "fraction of training images per class", "digits, same number of steps per run")

    gap = np.array([r["gap_mean"] for r in summary])
    gap_std = np.array([r["gap_std"] for r in summary])
    paper = np.array([np.nan if r["paper_gap"] is None else r["paper_gap"] for r in summary], dtype=float)
    x = np.arange(len(f))
    bx.bar(x - 0.2, gap, 0.4, yerr=gap_std, capsize=3, color="C0", label="ours (digits), ± std over seeds")
    bx.bar(x + 0.2, paper, 0.4, color="0.6", label="paper (ImageNet, ConViT-S − DeiT-S)")
    finish_gap_panel(bx, f, "gap")
    fig.suptitle(setting, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "data_efficiency.png", dpi=110)
    plt.close(fig)


def plot_locality(locality: list[dict], out: Path) -> None:
    """Non-locality per block (mean over heads and seeds), one line per model and fraction."""
    plt = pyplot()

    table = locality_table(locality)
    if not table:
        return
    fractions = sorted({f for _, f in table})
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for (model, fraction), cells in table.items():
        shade = plt.cm.Blues if model == "convit" else plt.cm.Oranges
        color = shade(0.4 + 0.6 * fractions.index(fraction) / max(len(fractions) - 1, 1))
        blocks = list(cells)
        ax.plot(
            blocks,
            [cells[b][0] for b in blocks],
            "o-" if model == "convit" else "s--",
            ms=3,
            color=color,
            label=f"{model} {fraction:g}",
        )
    ax.set_xlabel("block")
    ax.set_ylabel("non-locality (patches)")
    ax.set_title("final non-locality (ConViT: blue, DeiT twin: orange; darker = more data)", fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "locality.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_grid_flags(p, "0.05,0.1,0.3,0.5,1.0", "0,1,2", steps=800, warmup=80, out="out/data_efficiency")
    p.add_argument("--models", default="convit,deit", help="convit, deit (its twin) or both; default: convit,deit")
    add_recipe_flags(p, DEFAULT_CONFIG)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    base = base_config(args)
    fractions, seeds = grid_values(args)
    models = args.models.split(",")
    if any(m not in MODELS for m in models):
        raise UserError(f"--models must be from {MODELS}, not {args.models}")
    out = Path(args.out)
    prepare_out(out, args.resume, args.overwrite)

    data = digits_data(base)
    val_images = data[2]
    setting = describe(base, args.steps, f"ConViT: {base.model_kwargs['local_up_to_layer']} GPSA; DeiT twin: 0")
    print(setting, flush=True)

    # seeds outermost: an interrupted experiment still has every fraction for its first seeds
    plan = [(m, f, s) for s in seeds for f in fractions for m in models]
    run_grid(plan, out, base, run_config, args.steps, args.warmup_steps, data)

    results, locality = read_csv(out / "results.csv"), read_csv(out / "locality.csv")
    init = init_locality(base, models, seeds, val_images)
    write_csv(out / "locality_init.csv", init, INIT_FIELDS)
    summary = summarize(results)
    write_csv(out / "summary.csv", summary, list(summary[0]))
    (out / "summary.md").write_text(summary_markdown(summary, locality, setting, init))
    plot(summary, out, setting)
    plot_locality(locality, out)
    print((out / "summary.md").read_text(), flush=True)
    print(
        f"wrote {out}/results.csv, locality.csv, locality_init.csv, summary.csv, summary.md, data_efficiency.png, locality.png",
        flush=True,
    )


if __name__ == "__main__":
    run_entry_point("experiments.data_efficiency.run", main)
