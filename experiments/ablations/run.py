#!/usr/bin/env python
"""The paper's Table 3 at desk scale: which parts of ConViT matter, on 10 % and 100 % of the digits.

Five settings of the data-efficiency model (``experiments/data_efficiency/config.yaml``), each trained on the
shared engine for the same number of optimizer steps at a fixed batch (the same images seen, whatever the
fraction), on the same class-balanced subset for a given seed, so that every difference is paired by seed:

- ``full``: ConViT as built (gates σ(λ) trained, every GPSA initialised as a convolution);
- ``gates_frozen``: ``freeze: gates``, every gating parameter stays at its init (λ = 1, σ(λ) = 0.73);
- ``no_local_init``: ``model_kwargs.local_init: false``, positional projections keep timm's random init;
- ``neither``: both of the above;
- ``deit``: the DeiT twin, ``model_kwargs.local_up_to_layer: 0`` (every block plain self-attention).

    python -m experiments.ablations.run --out experiments/ablations/results   # 5 settings x 2 fractions x 5 seeds
    python -m experiments.ablations.run --resume --out experiments/ablations/results   # finish an interrupted one

Writes OUT/results.csv (one row per run), OUT/locality.csv (non-locality and gate per run, block and head),
OUT/summary.csv and OUT/summary.md (mean ± std per setting, each difference from ``full`` with its paired 95 %
confidence interval and paired t-test, the paper's numbers beside) and OUT/ablations.png.
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
from experiments.data_efficiency.run import DEFAULT_CONFIG
from experiments.harness import (
    add_recipe_flags,
    base_config,
    describe,
    digits_data,
    mean_std,
    num,
    paired_difference,
    prepare_out,
    read_csv,
    run_grid,
    write_csv,
)

# setting -> (what it changes in the base recipe, gates trained?, convolutional init?)
SETTINGS = {
    "full": ({}, True, True),
    "gates_frozen": ({"freeze": "gates"}, False, True),
    "no_local_init": ({"model_kwargs": {"local_init": False}}, True, False),
    "neither": ({"freeze": "gates", "model_kwargs": {"local_init": False}}, False, False),
    "deit": ({"model_kwargs": {"local_up_to_layer": 0}}, None, None),
}
# The paper's Table 3: ConViT-S+ top-1 (%) on ImageNet with 100 % and 10 % of the images, same images seen.
PAPER = {
    "full": (82.2, 59.7),
    "gates_frozen": (82.0, 57.4),
    "no_local_init": (81.4, 56.9),
    "neither": (81.6, 54.6),
    "deit": (79.1, 47.8),
}
PAPER_FRACTIONS = (1.0, 0.1)


def setting_config(base: Config, setting: str, fraction: float, seed: int) -> Config:
    """The Config of one run: the base recipe with this setting's changes, fraction and seed."""
    changes = SETTINGS[setting][0]
    kwargs = {**base.model_kwargs, **changes.get("model_kwargs", {})}
    cfg = dataclasses.replace(
        base,
        sampling_ratio=fraction,
        seed=seed,
        progress=False,
        freeze=changes.get("freeze", base.freeze),
        model_kwargs=kwargs,
    )
    return validate(cfg)


def summarize(results: list[dict]) -> list[dict]:
    """One row per (fraction, setting): mean ± std top-1, the paired difference from ``full``, the paper's."""
    rows = []
    for fraction in sorted({float(r["fraction"]) for r in results}, reverse=True):
        acc = {
            name: {
                int(r["seed"]): float(r["val_acc1"])
                for r in results
                if r["setting"] == name and math.isclose(float(r["fraction"]), fraction)
            }
            for name in SETTINGS
        }
        for name, (_, gates, local) in SETTINGS.items():
            if not acc[name]:
                continue
            mean, std = mean_std(list(acc[name].values()))
            paper = PAPER[name][PAPER_FRACTIONS.index(fraction)] if fraction in PAPER_FRACTIONS else None
            paper_full = PAPER["full"][PAPER_FRACTIONS.index(fraction)] if paper is not None else None
            row = {
                "fraction": fraction,
                "setting": name,
                "gates_trained": gates,
                "local_init": local,
                "mean": mean,
                "std": std,
                "seeds": len(acc[name]),
                **paired_difference(acc[name], acc["full"]),
                "paper": paper,
                "paper_diff": None if paper is None else round(paper - paper_full, 1),
            }
            rows.append(row)
    return rows


def summary_markdown(summary: list[dict], setting: str, gates: dict) -> str:
    """The results table (one block per fraction) and the final gates per GPSA block, as markdown."""
    yes = {True: "yes", False: "no", None: "–"}
    lines = [
        f"Setting: {setting}",
        "",
        "| fraction | setting | gates trained | conv. init | top-1 | Δ vs full [95 % CI] | p (paired t) | lower in "
        "| paper top-1 | paper Δ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        full = r["setting"] == "full"
        diff = (
            "–"
            if full
            else f"{num(r['diff_mean'], '{:+.1f}')} [{num(r['ci_low'], '{:+.1f}')}, "
            + (f"{num(r['ci_high'], '{:+.1f}')}]")
        )
        lines.append(
            f"| {r['fraction']:g} | {r['setting']} | {yes[r['gates_trained']]} | {yes[r['local_init']]} | "
            f"{num(r['mean'])} ± {num(r['std'])} | {diff} | {'–' if full else num(r['p_value'], '{:.3f}')} | "
            f"{'–' if full else str(r['lower_in']) + '/' + str(r['pairs'])} | {num(r['paper'])} | "
            f"{'–' if full else num(r['paper_diff'], '{:+.1f}')} |"
        )
    lines += [
        "",
        "Top-1 in % on the 360 validation digits, mean ± sample std over seeds. Δ: the setting minus `full`, "
        "paired by seed (same subset, same initial weights where the setting allows), with the 95 % t interval of "
        "the mean difference; 'lower in': seeds in which the setting scored below `full`. Paper: ConViT-S+ on "
        "ImageNet (Table 3).",
        "",
    ]
    if gates:
        blocks = sorted({b for cells in gates.values() for b in cells})
        lines += [
            "Gate σ(λ) per GPSA block after training (mean over heads and seeds; 1 = positional, 0 = content; "
            "0.73 at init):",
            "",
            "| fraction | setting | " + " | ".join(f"block {b}" for b in blocks) + " |",
            "|---|---|" + "---|" * len(blocks),
        ]
        for (name, fraction), cells in gates.items():
            lines.append(f"| {fraction:g} | {name} | " + " | ".join(num(cells.get(b), "{:.2f}") for b in blocks) + " |")
    return "\n".join(lines) + "\n"


def final_gates(locality: list[dict]) -> dict:
    """{(setting, fraction): {block: mean gate}} over GPSA heads and seeds."""
    cells: dict = {}
    for r in locality:
        if r["gate"] in ("", None):
            continue
        key = (r["setting"], float(r["fraction"]))
        cells.setdefault(key, {}).setdefault(int(r["block"]), []).append(float(r["gate"]))
    order = list(SETTINGS)
    return {
        key: {b: float(np.mean(v)) for b, v in sorted(blocks.items())}
        for key, blocks in sorted(cells.items(), key=lambda kv: (-kv[0][1], order.index(kv[0][0])))
    }


def plot(summary: list[dict], out: Path, setting: str) -> None:
    """Per fraction: each setting's difference from ``full`` with its 95 % interval, the paper's beside it."""
    plt = pyplot()

    fractions = sorted({r["fraction"] for r in summary}, reverse=True)
    fig, axes = plt.subplots(1, len(fractions), figsize=(5 * len(fractions), 3.8), squeeze=False)
    for ax, fraction in zip(axes[0], fractions, strict=True):
        rows = [r for r in summary if r["fraction"] == fraction and r["setting"] != "full"]
        x = np.arange(len(rows))
        mean = np.array([r["diff_mean"] for r in rows])
        err = np.array([[r["diff_mean"] - r["ci_low"] for r in rows], [r["ci_high"] - r["diff_mean"] for r in rows]])
        paper = np.array([np.nan if r["paper_diff"] is None else r["paper_diff"] for r in rows], dtype=float)
        ax.bar(x - 0.2, mean, 0.4, yerr=np.nan_to_num(err), capsize=3, color="C0", label="ours (digits), 95 % CI")
        ax.bar(x + 0.2, paper, 0.4, color="0.6", label="paper (ImageNet, ConViT-S+)")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels([r["setting"].replace("_", " ") for r in rows], fontsize=8)
        ax.set_ylabel("top-1 minus full ConViT (points)")
        ax.set_title(f"{fraction:.0%} of the training images", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.suptitle(setting, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ablations.png", dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--fractions",
        default="1.0,0.1",
        metavar="F,F,...",
        help="training-set fractions, in (0, 1] (default: %(default)s)",
    )
    p.add_argument(
        "--seeds",
        default="0,1,2,3,4",
        metavar="S,S,...",
        help="seeds; each setting is paired with full by seed (default: %(default)s)",
    )
    p.add_argument(
        "--settings", default=",".join(SETTINGS), metavar="NAME,...", help="settings to run (default: %(default)s)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=600,
        help="optimizer steps per run, for every fraction and setting (default: %(default)s)",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=60,
        help="linear warm-up steps of the cosine schedule (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        default="out/ablations",
        metavar="DIR",
        help="folder for the results and figures (default: %(default)s)",
    )
    p.add_argument("--resume", action="store_true", help="skip runs already in OUT/results.csv")
    p.add_argument("--overwrite", action="store_true", help="start again over OUT's previous results")
    add_recipe_flags(p, DEFAULT_CONFIG)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    base = base_config(args)
    fractions = [float(x) for x in args.fractions.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown or "full" not in settings:
        raise UserError(f"--settings must include full and come from {', '.join(SETTINGS)} (got {args.settings})")
    if not all(0 < f <= 1 for f in fractions):
        raise UserError(f"--fractions must lie in (0, 1] (got {args.fractions})")
    out = Path(args.out)
    prepare_out(out, args.resume, args.overwrite)

    setting = describe(base, args.steps, f"{base.model_kwargs['local_up_to_layer']} GPSA")
    print(setting, flush=True)
    data = digits_data(base)
    # seeds outermost: an interrupted experiment still has complete pairs for its first seeds
    plan = [(name, f, s) for s in seeds for f in fractions for name in settings]
    run_grid(plan, out, base, setting_config, args.steps, args.warmup_steps, data, key="setting")

    results, locality = read_csv(out / "results.csv"), read_csv(out / "locality.csv")
    summary = summarize(results)
    write_csv(out / "summary.csv", summary, list(summary[0]))
    (out / "summary.md").write_text(summary_markdown(summary, setting, final_gates(locality)))
    plot(summary, out, setting)
    print((out / "summary.md").read_text(), flush=True)
    print(f"wrote {out}/results.csv, locality.csv, summary.csv, summary.md, ablations.png", flush=True)


if __name__ == "__main__":
    run_entry_point("experiments.ablations.run", main)
