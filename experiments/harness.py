"""The desk experiments' shared harness: grids of runs on the shared engine, paired statistics, CSV and
markdown tables.

Each experiment (``experiments/<name>/run.py``, run as ``python -m experiments.<name>.run``) builds its plan of
runs and its summaries on these; the runs themselves are the training system's own code.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from convit.data import DigitsDataset, build_loaders, class_balanced_subset, digits_split, input_channels
from convit.errors import UserError
from convit.locality import locality_report
from convit.training.config import Config, load_recipe, validate
from convit.training.engine import (
    build_optimizer,
    build_scheduler,
    evaluate,
    model_kwargs,
    seed_everything,
    train_one_epoch,
)
from convit.training.finetune import apply_freeze
from convit.variants import create_model

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

MODEL_FLAGS = ("embed_dim", "num_heads", "depth", "local_up_to_layer", "patch_size")

CONFIG_FLAGS = ("img_size", "batch_size", "lr")


def num(x, fmt="{:.1f}") -> str:
    """``x`` formatted, or an en dash for a missing value (None, NaN)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


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


def paired_difference(ours: dict[int, float], full: dict[int, float]) -> dict:
    """Mean difference ours - full over the seeds both have, its std, 95 % t confidence interval, the paired
    t-test's two-sided p-value and in how many seeds ours was lower."""
    from scipy import stats

    seeds = sorted(set(ours) & set(full))
    d = np.array([ours[s] - full[s] for s in seeds], dtype=float)
    if len(d) < 2:
        return {
            "diff_mean": float(d.mean()) if len(d) else math.nan,
            "diff_std": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "p_value": math.nan,
            "lower_in": int((d < 0).sum()),
            "pairs": len(d),
        }
    mean, std = float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(d) - 1)) * std / math.sqrt(len(d))
    p = float(stats.ttest_1samp(d, 0.0).pvalue) if std > 0 else (1.0 if mean == 0 else 0.0)
    return {
        "diff_mean": mean,
        "diff_std": std,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "p_value": p,
        "lower_in": int((d < 0).sum()),
        "pairs": len(d),
    }


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


def block_table(caption: str, headers: list[str], rows: list[tuple[list[str], dict[int, str]]]) -> list[str]:
    """A markdown table with one column per block, under ``caption``: each row is (its labels, {block: cell})."""
    blocks = sorted({b for _, cells in rows for b in cells})
    lines = [caption, "", "| " + " | ".join([*headers, *(f"block {b}" for b in blocks)]) + " |"]
    lines.append("|" + "---|" * (len(headers) + len(blocks)))
    lines += ["| " + " | ".join([*labels, *(cells.get(b, "–") for b in blocks)]) + " |" for labels, cells in rows]
    return lines


def locality_markdown(locality: list[dict], init: list[dict] = ()) -> list[str]:
    """The per-block non-locality table (GPSA blocks marked, with their mean gate) as markdown lines."""
    table = locality_table(list(init) + list(locality))
    if not table:
        return []
    rows = []
    for (model, fraction), cells in table.items():
        label = "untrained" if fraction == "init" else f"{fraction:g}"
        text = {b: f"{d:.2f}* ({g:.2f})" if g is not None else f"{d:.2f}" for b, (d, g) in cells.items()}
        rows.append(([model, label], text))
    caption = (
        "Non-locality per block after training (patches; mean over heads and seeds; GPSA blocks marked *, with "
        "their mean gate σ(λ) in brackets: 1 = positional, 0 = content); 'untrained': the same seeds' initial "
        "weights, before step 0:"
    )
    return block_table(caption, ["model", "fraction"], rows)


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


def train_steps(model, cfg: Config, steps: int, warmup_steps: int, train_data, batch_seed: int) -> tuple[int, list]:
    """Exactly ``steps`` optimizer steps of ``model`` on the run's class-balanced subset of ``train_data`` (the
    shared engine's step loop, the whole budget as one pass: linear warm-up, then cosine to min_lr at ``steps``);
    (the subset's size, the loss of every step). ``batch_seed`` seeds the order of the batches."""
    from torch.utils.data import DataLoader

    Xtr, ytr = train_data
    keep = class_balanced_subset(ytr.numpy(), cfg.sampling_ratio, cfg.seed)
    subset = DigitsDataset(Xtr[keep], ytr[keep], cfg.img_size, input_channels(cfg), train=True)
    optimizer = build_optimizer(cfg, model, world_size=1)
    scheduler = build_scheduler(optimizer, cfg, steps, 1, min(warmup_steps, max(steps - 1, 0)) / steps)
    batches = cycled_batches(len(subset), cfg.batch_size, steps, torch.Generator().manual_seed(batch_seed))
    loader = DataLoader(subset, batch_sampler=batches, num_workers=0)
    loss = torch.nn.CrossEntropyLoss()
    stats = train_one_epoch(
        model, loader, optimizer, loss, torch.device("cpu"), 0, scheduler=scheduler, clip_grad=cfg.clip_grad
    )
    assert len(stats["step_losses"]) == steps
    return len(subset), stats["step_losses"]


def train_run(cfg: Config, steps: int, warmup_steps: int, train_data, val_loader, val_images):
    """Train one model for exactly ``steps`` optimizer steps on its subset; evaluate; measure locality."""
    seed_everything(cfg.seed)
    model = create_model(cfg.model, 10, **model_kwargs(cfg))
    apply_freeze(model, cfg.freeze)
    start = time.perf_counter()
    n_images, losses = train_steps(model, cfg, steps, warmup_steps, train_data, cfg.seed)
    val = evaluate(model, val_loader, torch.device("cpu"))
    seconds = time.perf_counter() - start

    locality = locality_rows(model, val_images)
    return result_row(cfg, n_images, losses, val, seconds), locality


def result_row(cfg: Config, n_images: int, losses: list, val: dict, seconds: float) -> dict:
    """A run's row of results.csv: its images, steps and batch, validation top-1 and loss, the mean training loss
    of its last steps (a tenth of them, 1 to 20) and its time."""
    tail = losses[-max(1, min(20, len(losses) // 10)) :]
    return {
        "train_images": n_images,
        "steps": len(losses),
        "batch_size": cfg.batch_size,
        "val_acc1": round(val["val_acc1"], 3),
        "val_loss": round(val["val_loss"], 4),
        "final_train_loss": round(float(np.mean(tail)), 4),
        "seconds": round(seconds, 1),
    }


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


def run_grid(
    plan,
    out: Path,
    base: Config,
    config_of,
    steps: int,
    warmup_steps: int,
    data,
    key: str = "model",
    train=None,
    outputs: tuple[str, ...] = ("locality.csv",),
    unit: str = "images",
):
    """Train every (``key``, fraction, seed) of ``plan`` not yet in OUT/results.csv, appending its rows as soon as
    it ends, with a progress line (elapsed, ETA) per run.

    ``config_of(base, name, fraction, seed)`` gives each run's Config. ``train(cfg)`` gives (its results row,
    {name in ``outputs``: (rows, fields)}); by default ``train_run`` on ``data`` ((train arrays, val loader, val
    images)), its locality rows going to locality.csv. A run's ``outputs`` rows are written before its
    results.csv row, so that it counts as done only once all are written; the rows of a run left unfinished
    are dropped first (it runs again)."""
    if train is None:

        def train(cfg: Config):
            result, locality = train_run(cfg, steps, warmup_steps, *data)
            return result, {"locality.csv": (locality, [key] + LOCALITY_FIELDS[1:])}

    drop_unfinished(out, outputs, key)
    done = {(r[key], float(r["fraction"]), int(r["seed"])) for r in read_csv(out / "results.csv")}
    todo = [run for run in plan if run not in done]
    if len(todo) < len(plan):
        print(f"resuming: {len(plan) - len(todo)} of {len(plan)} runs already in {out}/results.csv", flush=True)
    start = time.perf_counter()
    for i, (name, fraction, seed) in enumerate(todo, 1):
        result, written = train(config_of(base, name, fraction, seed))
        row = {key: name, "fraction": fraction, "seed": seed}
        for output, (rows, fields) in written.items():
            append_csv(out / output, [{**row, **r} for r in rows], fields)
        append_csv(out / "results.csv", [{**row, **result}], [key] + RESULT_FIELDS[1:])
        elapsed = time.perf_counter() - start
        eta = elapsed / i * (len(todo) - i)
        print(
            f"[{i:2d}/{len(todo)}] {name:13s} fraction {fraction:<4g} seed {seed}: "
            f"{result['train_images']:4d} {unit}, {steps} steps, val top-1 {result['val_acc1']:6.2f} "
            f"(loss {result['val_loss']:.3f}), {result['seconds']:.0f}s | elapsed {elapsed / 60:.1f} min, "
            f"ETA {eta / 60:.1f} min",
            flush=True,
        )


def drop_unfinished(out: Path, outputs: tuple[str, ...], key: str = "model") -> None:
    """Keep in each of ``outputs`` only the runs that results.csv holds (an interrupted run's rows are written
    again when it reruns)."""
    done = {(r[key], r["fraction"], r["seed"]) for r in read_csv(out / "results.csv")}
    for output in outputs:
        path = out / output
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, fields = list(reader), list(reader.fieldnames or [])
        kept = [r for r in rows if (r[key], r["fraction"], r["seed"]) in done]
        if len(kept) < len(rows):
            write_csv(path, kept, fields)


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


def add_grid_flags(p: argparse.ArgumentParser, fractions: str, seeds: str, steps: int, warmup: int, out: str) -> None:
    """The flags every grid experiment has: its fractions, seeds, step budget, output folder and resuming."""
    p.add_argument("--fractions", default=fractions, help=f"training-set fractions in (0, 1]; default: {fractions}")
    p.add_argument("--seeds", default=seeds, help=f"seeds, comma-separated; default: {seeds}")
    p.add_argument(
        "--steps", type=int, default=steps, help=f"optimizer steps per run, for every fraction; default: {steps}"
    )
    p.add_argument("--warmup-steps", type=int, default=warmup, help=f"linear warm-up steps; default: {warmup}")
    p.add_argument("--out", default=out, help=f"output folder; default: {out}")
    p.add_argument("--resume", action="store_true", help="skip runs already in OUT/results.csv")
    p.add_argument("--overwrite", action="store_true", help="start again over OUT's previous results")


def grid_values(args: argparse.Namespace) -> tuple[list[float], list[int]]:
    """(fractions, seeds) of the command line, or a one-line error."""
    try:
        fractions = [float(x) for x in args.fractions.split(",")]
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        raise UserError(
            "--fractions and --seeds are comma-separated numbers, e.g. --fractions 0.1,1.0 --seeds 0,1"
        ) from None
    if not all(0 < f <= 1 for f in fractions):
        raise UserError(f"--fractions must lie in (0, 1], not {args.fractions}")
    return fractions, seeds


def add_recipe_flags(p: argparse.ArgumentParser, default_config: Path) -> None:
    """--config and the model and recipe values the command line may override for every run."""
    p.add_argument(
        "--config",
        default=str(default_config),
        help="base recipe, a YAML file of train.py's keys (default: %(default)s)",
    )
    for key in MODEL_FLAGS + CONFIG_FLAGS:
        p.add_argument(
            "--" + key.replace("_", "-"),
            dest=key,
            default=None,
            type=float if key == "lr" else int,
            help=f"override the recipe's {key} (default: the recipe's)",
        )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")


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


def plot_accuracy_panel(ax, summary: list[dict], xlabel: str, title: str) -> None:
    """Top-1 against the training fraction (log axis) of ConViT and its DeiT twin: mean line, ± std band."""
    f = np.array([r["fraction"] for r in summary])
    for m, label, color in (("convit", "ConViT", "C0"), ("deit", "DeiT twin (local_up_to_layer 0)", "C1")):
        mean = np.array([r[f"{m}_mean"] for r in summary])
        std = np.array([r[f"{m}_std"] for r in summary])
        ax.plot(f, mean, "o-", color=color, label=label)
        ax.fill_between(f, mean - std, mean + std, color=color, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xticks(f)
    ax.set_xticklabels([f"{x:g}" for x in f])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def finish_gap_panel(bx, fractions, title: str, legend_size: int = 8) -> None:
    """Axes, labels and legend of a ConViT − DeiT gap bar chart over the training fractions."""
    bx.axhline(0, color="k", lw=0.8)
    bx.set_xticks(np.arange(len(fractions)))
    bx.set_xticklabels([f"{v:g}" for v in fractions])
    bx.set_xlabel("fraction of training images per class")
    bx.set_ylabel("ConViT − DeiT top-1 (points)")
    bx.set_title(title, fontsize=9)
    bx.grid(alpha=0.3, axis="y")
    bx.legend(fontsize=legend_size)
