#!/usr/bin/env python
"""ConViT vs its DeiT twin on the cluttered digits: data efficiency and locality dynamics, on one CPU thread.

The paper's images-seen protocol (as ``experiments/data_efficiency.py`` on the digits): every run trains
for the same number of optimizer steps at a fixed batch, whatever the fraction, on a seeded class-balanced
subset of the cluttered training canvases (``convit/data/cluttered.py``); the DeiT twin is the same recipe
with ``local_up_to_layer: 0``; the same seed gives both models the same subset and batch order, so gaps are
paired by seed. During each run the gates σ(λ) and the non-locality of every block and head (and the content
part of GPSA heads) are measured ``--checkpoints`` times on a fixed batch of validation canvases.

    python -m experiments.cluttered.run --out experiments/cluttered/results            # 2 models x 3 fractions x 3 seeds
    python -m experiments.cluttered.run --out experiments/cluttered/results --resume   # finish an interrupted one

Writes OUT/results.csv (one row per run), OUT/locality.csv (final non-locality and gate per run, block,
head), OUT/dynamics.csv (the same, and the content part, at every checkpoint), OUT/summary.csv,
OUT/summary.md, OUT/data_efficiency.png, OUT/dynamics.png and OUT/samples.png (the first training canvases).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from convit.data import class_balanced_subset, input_channels
from convit.data.cluttered import VAL_COPIES, ClutteredDataset, cluttered_split
from convit.errors import UserError, run_entry_point
from convit.locality import epoch_locality
from convit.training.engine import (
    build_optimizer,
    build_scheduler,
    evaluate,
    model_kwargs,
    seed_everything,
    train_one_epoch,
)
from convit.variants import create_model
from experiments import harness
from experiments.cluttered import figures
from experiments.data_efficiency import run as de

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "config.yaml"
DYNAMICS_FIELDS = [
    "model",
    "fraction",
    "seed",
    "step",
    "train_loss",
    "block",
    "type",
    "head",
    "nonlocality",
    "gate",
    "nonlocality_content",
]
DYNAMICS_IMAGES = 120  # validation canvases on which the dynamics are measured (one per validation digit)


def checkpoint_steps(steps: int, count: int) -> list[int]:
    """``count + 1`` distinct steps from 0 to ``steps`` (both included), evenly spaced."""
    return sorted({round(steps * k / count) for k in range(count + 1)})


def dynamics_rows(model, images, step: int, train_loss) -> list[dict]:
    """Gate, non-locality and content non-locality of every block and head at one step."""
    loc = epoch_locality(model, images, batch_size=60)
    rows, gpsa = [], 0
    for block, heads in enumerate(loc["nonlocality"]):
        is_gpsa = gpsa < len(loc["gates"]) and block == gpsa  # GPSA blocks come first
        for h, d in enumerate(heads):
            rows.append(
                {
                    "step": step,
                    "train_loss": "" if train_loss is None else round(train_loss, 4),
                    "block": block,
                    "type": "gpsa" if is_gpsa else "mhsa",
                    "head": h,
                    "nonlocality": round(d, 4),
                    "gate": round(loc["gates"][gpsa][h], 4) if is_gpsa else "",
                    "nonlocality_content": round(loc["nonlocality_content"][gpsa][h], 4) if is_gpsa else "",
                }
            )
        gpsa += is_gpsa
    return rows


def train_run(cfg, steps: int, warmup_steps: int, checkpoints: int, data):
    """Train one model for exactly ``steps`` optimizer steps on its subset (the shared engine's step loop, in
    ``checkpoints`` pieces with the schedule running on), measuring the dynamics between pieces; evaluate."""
    from torch.utils.data import DataLoader

    (Xtr, ytr), val_loader, val_images, dyn_images = data
    keep = class_balanced_subset(ytr.numpy(), cfg.sampling_ratio, cfg.seed)
    subset = ClutteredDataset(Xtr[keep], ytr[keep], input_channels(cfg), train=True)

    seed_everything(cfg.seed)
    model = create_model(cfg.model, 10, **model_kwargs(cfg))
    optimizer = build_optimizer(cfg, model, world_size=1)
    scheduler = build_scheduler(optimizer, cfg, steps, 1, min(warmup_steps, max(steps - 1, 0)) / steps)
    batches = harness.cycled_batches(len(subset), cfg.batch_size, steps, torch.Generator().manual_seed(cfg.seed))

    start = time.perf_counter()
    marks = checkpoint_steps(steps, checkpoints)
    dynamics = dynamics_rows(model, dyn_images, 0, None)
    losses: list[float] = []
    for a, b in zip(marks, marks[1:]):
        loader = DataLoader(subset, batch_sampler=batches[a:b], num_workers=0)
        stats = train_one_epoch(
            model,
            loader,
            optimizer,
            torch.nn.CrossEntropyLoss(),
            torch.device("cpu"),
            0,
            scheduler=scheduler,
            clip_grad=cfg.clip_grad,
            num_updates=a,
        )
        losses += stats["step_losses"]
        dynamics += dynamics_rows(model, dyn_images, b, float(np.mean(stats["step_losses"])))
    assert len(losses) == steps
    val = evaluate(model, val_loader, torch.device("cpu"))
    seconds = time.perf_counter() - start
    locality = harness.locality_rows(model, val_images)
    result = harness.result_row(cfg, len(subset), losses, val, seconds)
    return result, locality, dynamics


def summarize(results: list[dict]) -> list[dict]:
    """de.summarize's rows (means, paired gap, the paper's) with the gap's 95 % CI and paired t-test."""
    rows = de.summarize(results)
    for row in rows:
        acc = {
            m: {
                int(r["seed"]): float(r["val_acc1"])
                for r in results
                if r["model"] == m and float(r["fraction"]) == row["fraction"]
            }
            for m in de.MODELS
        }
        diff = harness.paired_difference(acc["convit"], acc["deit"])
        row.update({k: diff[k] for k in ("ci_low", "ci_high", "p_value")})
        row["convit_ahead_in"] = (
            diff["pairs"]
            - diff["lower_in"]
            - sum(acc["convit"][s] == acc["deit"][s] for s in set(acc["convit"]) & set(acc["deit"]))
        )
    return rows


def describe(base, args) -> str:
    """The setting line printed first and written into summary.md and the figures."""
    arch = base.model_kwargs
    n = (base.img_size // arch["patch_size"]) ** 2
    return (
        f"cluttered digits {base.img_size}x{base.img_size} ({n} patches of {arch['patch_size']}), width "
        f"{arch['embed_dim']}, {arch['num_heads']} heads, depth {arch['depth']} (ConViT: "
        f"{arch['local_up_to_layer']} GPSA; DeiT twin: 0), {args.steps} steps x batch {base.batch_size}, AdamW lr "
        f"{base.lr * base.batch_size / base.lr_base_batch:.0e}, cosine"
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_grid_flags(p, "0.1,0.3,1.0", "0,1,2", steps=400, warmup=40, out="out/cluttered")
    p.add_argument("--models", default="convit,deit", help="convit, deit (its twin) or both; default: convit,deit")
    p.add_argument(
        "--checkpoints", type=int, default=10, help="dynamics measured this many times per run (+ step 0); default: 10"
    )
    harness.add_recipe_flags(p, DEFAULT_CONFIG)
    p.set_defaults(config=str(DEFAULT_CONFIG))
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    base = harness.base_config(args)
    fractions = [float(x) for x in args.fractions.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    models = args.models.split(",")
    if any(m not in de.MODELS for m in models) or not all(0 < f <= 1 for f in fractions):
        raise UserError(f"--models must be from {de.MODELS} and --fractions in (0, 1]")
    if not 1 <= args.checkpoints <= args.steps:
        raise UserError(f"--checkpoints must lie in 1..--steps ({args.steps}), not {args.checkpoints}")
    if base.data != "cluttered":
        raise UserError(f"--config must be a cluttered-digits recipe (data: cluttered), not data '{base.data}'")
    out = Path(args.out)
    harness.prepare_out(out, args.resume, args.overwrite)
    if args.overwrite and not args.resume:
        (out / "dynamics.csv").unlink(missing_ok=True)

    setting = describe(base, args)
    print(setting, flush=True)
    (Xtr, ytr), (Xva, yva) = cluttered_split(base.img_size)
    val = ClutteredDataset(Xva, yva, input_channels(base), train=False)
    val_loader = torch.utils.data.DataLoader(val, batch_size=120, shuffle=False)
    one_each = val.images[::VAL_COPIES]  # one canvas per validation digit
    data = ((Xtr, ytr), val_loader, one_each, one_each[:DYNAMICS_IMAGES])

    plan = [(m, f, s) for s in seeds for f in fractions for m in models]  # seeds outermost

    def train(cfg):
        result, locality, dynamics = train_run(cfg, args.steps, args.warmup_steps, args.checkpoints, data)
        return result, {
            "locality.csv": (locality, harness.LOCALITY_FIELDS),
            "dynamics.csv": (dynamics, DYNAMICS_FIELDS),
        }

    harness.run_grid(
        plan,
        out,
        base,
        de.run_config,
        args.steps,
        args.warmup_steps,
        data,
        train=train,
        outputs=("locality.csv", "dynamics.csv"),
        unit="canvases",
    )

    results = harness.read_csv(out / "results.csv")
    locality, dynamics = harness.read_csv(out / "locality.csv"), harness.read_csv(out / "dynamics.csv")
    summary = summarize(results)
    harness.write_csv(out / "summary.csv", summary, list(summary[0]))
    digits = harness.read_csv(HERE.parent / "data_efficiency" / "results" / "summary.csv")
    grid = base.img_size // base.model_kwargs["patch_size"]
    (out / "summary.md").write_text(
        figures.summary_markdown(summary, locality, dynamics, digits, setting, len(val), grid)
    )
    stamp = (
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, {platform.node() or 'this machine'}, "
        f"{torch.get_num_threads()} thread(s); python -m experiments.cluttered.run "
        + " ".join(sys.argv[1:] if argv is None else argv)
    )
    figures.plot_accuracy(summary, digits, out / "data_efficiency.png", f"{setting}\n{stamp}")
    figures.plot_dynamics(dynamics, out / "dynamics.png", f"{setting}\n{stamp}", grid)
    caption = (
        f"cluttered digits, the first 32 training canvases ({base.img_size}x{base.img_size}, patch grid "
        f"{base.model_kwargs['patch_size']}x{base.model_kwargs['patch_size']} drawn), label = the whole digit's "
        f"class\n{stamp}"
    )
    figures.plot_samples(Xtr, ytr, out / "samples.png", caption)
    print((out / "summary.md").read_text(), flush=True)
    print(
        f"wrote {out}/results.csv, locality.csv, dynamics.csv, summary.csv, summary.md, data_efficiency.png, "
        "dynamics.png, samples.png",
        flush=True,
    )


if __name__ == "__main__":
    run_entry_point("experiments.cluttered.run", main)
