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

    python experiments/data_efficiency.py                          # 2 models x 5 fractions x 3 seeds
    python experiments/data_efficiency.py --fractions 0.1 --seeds 0 --steps 3 --out /tmp/de

Writes OUT/results.csv (one row per run), OUT/locality.csv (non-locality and gate per run, block,
head), OUT/summary.csv and OUT/summary.md (means, spreads, our gap beside the paper's) and
OUT/data_efficiency.png, OUT/locality.png.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))

from convit.data import DigitsDataset, build_loaders, class_balanced_subset, digits_split, input_channels  # noqa: E402
from convit.errors import UserError, run_entry_point  # noqa: E402
from convit.locality import locality_report  # noqa: E402
from convit.training.config import Config, load_recipe, validate  # noqa: E402
from convit.training.engine import (  # noqa: E402
    build_optimizer,
    build_scheduler,
    evaluate,
    model_kwargs,
    seed_everything,
    train_one_epoch,
)
from convit.training.finetune import apply_freeze  # noqa: E402
from convit.variants import create_model  # noqa: E402

DEFAULT_CONFIG = ROOT / "experiments" / "configs" / "data_efficiency.yaml"
MODELS = ("convit", "deit")
# The paper's Table 2: top-1 (%) of ConViT-S and DeiT-S on ImageNet subsets, same images seen.
PAPER = {0.05: (47.8, 34.8), 0.1: (59.6, 48.0), 0.3: (73.7, 66.1), 0.5: (78.2, 74.6), 1.0: (81.4, 79.9)}
RESULT_FIELDS = [
    "model",
    "fraction",
    "seed",
    "train_images",
    "steps",
    "batch_size",
    "val_acc1",
    "val_loss",
    "final_train_loss",
    "seconds",
]
LOCALITY_FIELDS = ["model", "fraction", "seed", "block", "type", "head", "nonlocality", "gate"]
INIT_FIELDS = ["model", "seed", "block", "type", "head", "nonlocality", "gate"]
# Model arguments and config keys that the command line may override for every run (a smaller model, a faster test).
MODEL_FLAGS = ("embed_dim", "num_heads", "depth", "local_up_to_layer", "patch_size")
CONFIG_FLAGS = ("img_size", "batch_size", "lr")


# ---------------------------------------------------------------------------------------- pure helpers


def paper_gap(fraction: float):
    """ConViT-S minus DeiT-S top-1 in the paper at this fraction, or None if the paper has no row."""
    for f, (convit, deit) in PAPER.items():
        if math.isclose(f, fraction):
            return round(convit - deit, 1)
    return None


def cycled_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[list[int]]:
    """`steps` batches of indices into range(n): shuffled passes over the set, concatenated.

    Every image is seen once per pass; a batch may straddle two passes, and may hold an image twice
    when the set is smaller than the batch.
    """
    passes = math.ceil(steps * batch_size / n)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)]).tolist()
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


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


def _order(key) -> tuple:
    model, fraction = key
    return (model, -1.0) if fraction == "init" else (model, fraction)


def locality_table(locality: list[dict]) -> dict:
    """{(model, fraction): {block: (mean non-locality, mean gate or None)}}, averaged over seeds and heads.

    Rows without a fraction (the untrained models of `init_locality`) go under fraction "init".
    """
    cells: dict = {}
    for r in locality:
        key = (r["model"], float(r["fraction"]) if r.get("fraction") not in (None, "") else "init")
        block = cells.setdefault(key, {}).setdefault(int(r["block"]), {"d": [], "g": []})
        block["d"].append(float(r["nonlocality"]))
        if r["gate"] not in ("", None):
            block["g"].append(float(r["gate"]))
    return {
        key: {
            b: (float(np.mean(v["d"])), float(np.mean(v["g"])) if v["g"] else None) for b, v in sorted(blocks.items())
        }
        for key, blocks in sorted(cells.items(), key=lambda kv: _order(kv[0]))
    }


def summary_markdown(summary: list[dict], locality: list[dict], setting: str, init: list[dict] = ()) -> str:
    """The two tables (top-1 and gaps; locality per block) as markdown."""

    def num(x, fmt="{:.1f}"):
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)

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
    table = locality_table(list(init) + list(locality))
    if table:
        blocks = sorted({b for cells in table.values() for b in cells})
        lines += [
            "Non-locality per block after training (patches; mean over heads and seeds; GPSA blocks "
            "marked *, with their mean gate σ(λ) in brackets: 1 = positional, 0 = content); "
            "'untrained': the same seeds' initial weights, before step 0:",
            "",
            "| model | fraction | " + " | ".join(f"block {b}" for b in blocks) + " |",
            "|---|---|" + "---|" * len(blocks),
        ]
        for (model, fraction), cells in table.items():
            parts = []
            for b in blocks:
                d, g = cells.get(b, (None, None))
                parts.append("–" if d is None else (f"{d:.2f}* ({g:.2f})" if g is not None else f"{d:.2f}"))
            label = "untrained" if fraction == "init" else f"{fraction:g}"
            lines.append(f"| {model} | {label} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- runs


def run_config(base: Config, model: str, fraction: float, seed: int) -> Config:
    """The Config of one run: the base recipe, this fraction and seed, and no GPSA for the DeiT twin."""
    cfg = dataclasses.replace(base, sampling_ratio=fraction, seed=seed, progress=False)
    if model == "deit":
        cfg = dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, "local_up_to_layer": 0})
    return validate(cfg)


def locality_rows(model, val_images) -> list[dict]:
    """Non-locality of every block and head over the validation images, and the gate of GPSA heads."""
    report = locality_report(model, val_images, batch_size=120)
    return [
        {
            "block": block["block"],
            "type": block["type"],
            "head": h,
            "nonlocality": round(distance, 4),
            "gate": round(block["gate"][h], 4) if block["gate"] is not None else "",
        }
        for block in report["blocks"]
        for h, distance in enumerate(block["nonlocality"])
    ]


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


def train_run(cfg: Config, steps: int, warmup_steps: int, train_data, val_loader, val_images):
    """Train one model for exactly ``steps`` optimizer steps on its subset (the shared engine's step loop,
    the whole budget as one pass); evaluate; measure locality."""
    from torch.utils.data import DataLoader

    (Xtr, ytr) = train_data
    keep = class_balanced_subset(ytr.numpy(), cfg.sampling_ratio, cfg.seed)
    subset = DigitsDataset(Xtr[keep], ytr[keep], cfg.img_size, input_channels(cfg), train=True)

    seed_everything(cfg.seed)
    model = create_model(cfg.model, 10, **model_kwargs(cfg))
    apply_freeze(model, cfg.freeze)
    optimizer = build_optimizer(cfg, model, world_size=1)
    # the budget is one "epoch" of `steps` updates: linear warm-up, then cosine to min_lr at `steps`
    scheduler = build_scheduler(optimizer, cfg, steps, 1, min(warmup_steps, max(steps - 1, 0)) / steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = cycled_batches(len(subset), cfg.batch_size, steps, generator)
    loader = DataLoader(subset, batch_sampler=batches, num_workers=0)

    start = time.perf_counter()
    stats = train_one_epoch(
        model,
        loader,
        optimizer,
        torch.nn.CrossEntropyLoss(),
        torch.device("cpu"),
        0,
        scheduler=scheduler,
        clip_grad=cfg.clip_grad,
    )
    losses = stats["step_losses"]
    assert len(losses) == steps
    val = evaluate(model, val_loader, torch.device("cpu"))
    seconds = time.perf_counter() - start

    locality = locality_rows(model, val_images)
    tail = losses[-max(1, min(20, steps // 10)) :]
    result = {
        "train_images": len(subset),
        "steps": steps,
        "batch_size": cfg.batch_size,
        "val_acc1": round(val["val_acc1"], 3),
        "val_loss": round(val["val_loss"], 4),
        "final_train_loss": round(float(np.mean(tail)), 4),
        "seconds": round(seconds, 1),
    }
    return result, locality


def prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write over a previous experiment's results unless --resume or --overwrite says what to do."""
    if (out / "results.csv").is_file() and not (resume or overwrite):
        raise UserError(
            f"{out} already holds an experiment's results.csv: add --resume to finish it, --overwrite to start "
            "again, or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume:
        for name in ("results.csv", "locality.csv"):
            (out / name).unlink(missing_ok=True)


def run_grid(plan, out: Path, base: Config, config_of, steps: int, warmup_steps: int, data, key: str = "model"):
    """Train every (``key``, fraction, seed) of ``plan`` not yet in OUT/results.csv, appending its rows to
    results.csv and locality.csv as soon as it ends, with a progress line (elapsed, ETA) per run.

    ``config_of(base, name, fraction, seed)`` gives each run's Config; ``data`` is (train arrays, val loader,
    val images)."""
    train_data, val_loader, val_images = data
    done = {(r[key], float(r["fraction"]), int(r["seed"])) for r in read_csv(out / "results.csv")}
    todo = [run for run in plan if run not in done]
    if len(todo) < len(plan):
        print(f"resuming: {len(plan) - len(todo)} of {len(plan)} runs already in {out}/results.csv", flush=True)
    result_fields = [key] + RESULT_FIELDS[1:]
    locality_fields = [key] + LOCALITY_FIELDS[1:]
    start = time.perf_counter()
    for i, (name, fraction, seed) in enumerate(todo, 1):
        cfg = config_of(base, name, fraction, seed)
        result, locality = train_run(cfg, steps, warmup_steps, train_data, val_loader, val_images)
        row = {key: name, "fraction": fraction, "seed": seed}
        append_csv(out / "results.csv", [{**row, **result}], result_fields)
        append_csv(out / "locality.csv", [{**row, **r} for r in locality], locality_fields)
        elapsed = time.perf_counter() - start
        eta = elapsed / i * (len(todo) - i)
        print(
            f"[{i:2d}/{len(todo)}] {name:13s} fraction {fraction:<4g} seed {seed}: "
            f"{result['train_images']:4d} images, {steps} steps, val top-1 {result['val_acc1']:6.2f} "
            f"(loss {result['val_loss']:.3f}), {result['seconds']:.0f}s | elapsed {elapsed / 60:.1f} min, "
            f"ETA {eta / 60:.1f} min",
            flush=True,
        )


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def append_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------- plots


def plot(summary: list[dict], out: Path, setting: str) -> None:
    """Top-1 vs fraction (log x, mean ± std bands) and our gap beside the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = np.array([r["fraction"] for r in summary])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for m, label, color in (("convit", "ConViT", "C0"), ("deit", "DeiT twin (local_up_to_layer 0)", "C1")):
        mean = np.array([r[f"{m}_mean"] for r in summary])
        std = np.array([r[f"{m}_std"] for r in summary])
        ax.plot(f, mean, "o-", color=color, label=label)
        ax.fill_between(f, mean - std, mean + std, color=color, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xticks(f)
    ax.set_xticklabels([f"{x:g}" for x in f])
    ax.set_xlabel("fraction of training images per class")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("digits, same number of steps per run", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    gap = np.array([r["gap_mean"] for r in summary])
    gap_std = np.array([r["gap_std"] for r in summary])
    paper = np.array([np.nan if r["paper_gap"] is None else r["paper_gap"] for r in summary], dtype=float)
    x = np.arange(len(f))
    bx.bar(x - 0.2, gap, 0.4, yerr=gap_std, capsize=3, color="C0", label="ours (digits), ± std over seeds")
    bx.bar(x + 0.2, paper, 0.4, color="0.6", label="paper (ImageNet, ConViT-S − DeiT-S)")
    bx.axhline(0, color="k", lw=0.8)
    bx.set_xticks(x)
    bx.set_xticklabels([f"{v:g}" for v in f])
    bx.set_xlabel("fraction of training images per class")
    bx.set_ylabel("ConViT − DeiT top-1 (points)")
    bx.set_title("gap", fontsize=9)
    bx.grid(alpha=0.3, axis="y")
    bx.legend(fontsize=8)
    fig.suptitle(setting, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "data_efficiency.png", dpi=110)
    plt.close(fig)


def plot_locality(locality: list[dict], out: Path) -> None:
    """Non-locality per block (mean over heads and seeds), one line per model and fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """--config and the model and recipe values the command line may override for every run."""
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="base recipe (keys of convit/training/config.py)")
    for key in MODEL_FLAGS + CONFIG_FLAGS:
        p.add_argument(
            "--" + key.replace("_", "-"),
            dest=key,
            default=None,
            type=float if key == "lr" else int,
            help=f"override the recipe's {key}",
        )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def base_config(args: argparse.Namespace) -> Config:
    """The recipe of --config with the command line's overrides, validated."""
    values = load_recipe(args.config)
    values.update({k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k) is not None})
    overrides = {k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k) is not None}
    values["model_kwargs"] = {**values.get("model_kwargs", {}), **overrides}
    return validate(Config(**values))


def digits_data(base: Config) -> tuple:
    """What every run shares: the digits training arrays, the validation loader and its images in one tensor."""
    train_data, _ = digits_split()
    val_loader = build_loaders(dataclasses.replace(base, batch_size=120), need_train=False).val
    return train_data, val_loader, torch.cat([x for x, _ in val_loader])


def describe(base: Config, steps: int, gpsa: str) -> str:
    """The setting line printed first and written into summary.md and the plots' titles."""
    arch = base.model_kwargs
    return (
        f"digits 16x16, patch {arch['patch_size']}, width {arch['embed_dim']}, {arch['num_heads']} heads, "
        f"depth {arch['depth']} ({gpsa}), {steps} steps x batch {base.batch_size}, AdamW lr "
        f"{base.lr * base.batch_size / base.lr_base_batch:.0e}, cosine; val 360 images"
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fractions", default="0.05,0.1,0.3,0.5,1.0")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--models", default="convit,deit")
    p.add_argument("--steps", type=int, default=800, help="optimizer steps per run, for every fraction")
    p.add_argument("--warmup-steps", type=int, default=80)
    p.add_argument("--out", default="out/data_efficiency")
    p.add_argument("--resume", action="store_true", help="skip runs already in OUT/results.csv")
    p.add_argument("--overwrite", action="store_true", help="start again over OUT's previous results")
    add_recipe_flags(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    base = base_config(args)
    fractions = [float(x) for x in args.fractions.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    models = args.models.split(",")
    if any(m not in MODELS for m in models) or not all(0 < f <= 1 for f in fractions):
        raise UserError(f"--models must be from {MODELS} and --fractions in (0, 1]")
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
    run_entry_point("data_efficiency.py", main)
