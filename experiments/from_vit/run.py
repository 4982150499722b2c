#!/usr/bin/env python
"""From a DeiT to a ConViT at desk scale: is a converted DeiT a better start than the DeiT itself or a fresh ConViT?

For each fraction of the digits and each seed (paired: the same subset, the same pretrained twin):

1. the DeiT twin (the recipe with ``local_up_to_layer: 0``) trains for ``--pretrain-steps``;
2. three starts then get the same extra budget of ``--steps`` optimizer steps, same recipe and schedule:
   ``converted``  convit.from_vit(twin, local_up_to_layer=4): GPSA in the first 4 blocks, gates at ``--gate``;
   ``deit``       the twin itself, continued;
   ``scratch``    a ConViT from its own init (the recipe's model);
3. every final ConViT gets the gate interventions (convit.locality.interventions) on the validation set.

    python -m experiments.from_vit.run --out experiments/from_vit/results --resume

writes OUT/results.csv (one row per start, fraction and seed), OUT/conversion.csv (how far the converted twin is
from the twin before any training), OUT/interventions.csv, OUT/summary.csv, OUT/summary.md (means, paired
differences with their 95 % t intervals) and OUT/from_vit.png. The twins' weights are kept in --cache so that
--resume never retrains one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from convit.convert import from_vit
from convit.errors import UserError, run_entry_point
from convit.locality.interventions import footer, gate_interventions
from convit.locality.plots import pyplot
from convit.training.config import validate
from convit.training.engine import (
    evaluate,
    model_kwargs,
    seed_everything,
)
from convit.variants import create_model
from experiments.harness import (
    add_grid_flags,
    add_recipe_flags,
    append_csv,
    base_config,
    describe,
    digits_data,
    mean_std,
    prepare_out,
    read_csv,
    train_steps,
    write_csv,
)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"
STARTS = ("converted", "deit", "scratch")
RESULT_FIELDS = ["start", "fraction", "seed", "train_images", "steps", "val_acc1", "val_loss", "seconds"]
CONVERSION_FIELDS = ["fraction", "seed", "twin_acc1", "converted_acc1", "agreement", "logit_distance"]


def run_config(base, fraction: float, seed: int, twin: bool):
    """The Config of one run: the base recipe at this fraction and seed; no GPSA for the twin."""
    cfg = dataclasses.replace(base, sampling_ratio=fraction, seed=seed, progress=False)
    if twin:
        cfg = dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, "local_up_to_layer": 0})
    return validate(cfg)


def twin(base, fraction, seed, args, train_data, cache: Path):
    """The pretrained DeiT twin of (fraction, seed): read from --cache, or trained and saved there."""
    cfg = run_config(base, fraction, seed, twin=True)
    seed_everything(seed)
    model = create_model(cfg.model, 10, **model_kwargs(cfg))
    recipe = repr((sorted(cfg.model_kwargs.items()), cfg.lr, cfg.batch_size, cfg.img_size, args.warmup_steps))
    tag = hashlib.sha1(recipe.encode()).hexdigest()[:8]
    path = cache / f"twin_f{fraction:g}_s{seed}_{args.pretrain_steps}steps_{tag}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        train_steps(model, cfg, args.pretrain_steps, args.warmup_steps, train_data, cfg.seed * 1000)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()


def conversion_row(deit, converted, val_images, val_labels) -> dict:
    """How far the converted twin is from the twin before any training: top-1 of both, prediction agreement
    (%) and the relative distance of the logits ||z_c - z|| / ||z||."""
    with torch.no_grad():
        a, b = deit.eval()(val_images), converted.eval()(val_images)
    return {
        "twin_acc1": round(100 * (a.argmax(-1) == val_labels).float().mean().item(), 3),
        "converted_acc1": round(100 * (b.argmax(-1) == val_labels).float().mean().item(), 3),
        "agreement": round(100 * (a.argmax(-1) == b.argmax(-1)).float().mean().item(), 3),
        "logit_distance": round(float((b - a).norm() / a.norm()), 4),
    }


def run_seed(base, fraction, seed, args, data, out: Path) -> list[dict]:
    """The three starts of one (fraction, seed); returns their result rows (and appends every CSV)."""
    train_data, val_loader, val_images, val_labels = data
    deit = twin(base, fraction, seed, args, train_data, Path(args.cache))
    convit_cfg = run_config(base, fraction, seed, twin=False)
    gpsa = convit_cfg.model_kwargs["local_up_to_layer"]
    converted = from_vit(deit, local_up_to_layer=gpsa, gate=args.gate)
    append_csv(
        out / "conversion.csv",
        [{"fraction": fraction, "seed": seed, **conversion_row(deit, converted, val_images, val_labels)}],
        CONVERSION_FIELDS,
    )
    seed_everything(seed + 7919)  # the scratch ConViT's own init, the same for every fraction of a seed
    scratch = create_model(convit_cfg.model, 10, **model_kwargs(convit_cfg))
    rows = []
    for start, model in (("converted", converted), ("deit", deit), ("scratch", scratch)):
        cfg = run_config(base, fraction, seed, twin=start == "deit")
        clock = time.perf_counter()
        images, _ = train_steps(model.train(), cfg, args.steps, args.warmup_steps, train_data, cfg.seed * 1000 + 1)
        val = evaluate(model, val_loader, torch.device("cpu"))
        row = {
            "start": start,
            "fraction": fraction,
            "seed": seed,
            "train_images": images,
            "steps": args.steps,
            "val_acc1": round(val["val_acc1"], 3),
            "val_loss": round(val["val_loss"], 4),
            "seconds": round(time.perf_counter() - clock, 1),
        }
        rows.append(row)
        if start != "deit":
            found = gate_interventions(model, val_images, val_labels, batch_size=120)
            fields = ["start", "fraction", "seed", *found[0]]
            append_csv(out / "interventions.csv", [{**row_key(start, fraction, seed), **r} for r in found], fields)
    append_csv(out / "results.csv", rows, RESULT_FIELDS)  # last: a run in results.csv is complete
    return rows


def row_key(start, fraction, seed) -> dict:
    return {"start": start, "fraction": fraction, "seed": seed}


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of the paired differences a - b, their sample std, the 95 % t interval and the number of wins."""
    from scipy import stats

    d = np.asarray(a, float) - np.asarray(b, float)
    mean, std = float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    half = float(stats.t.ppf(0.975, len(d) - 1) * std / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"mean": mean, "std": std, "lo": mean - half, "hi": mean + half, "wins": int((d > 0).sum()), "n": len(d)}


def summarize(results: list[dict]) -> list[dict]:
    """Per fraction: each start's mean ± std top-1 and the converted start's paired differences."""
    rows = []
    for fraction in sorted({float(r["fraction"]) for r in results}):
        acc = {
            s: {
                int(r["seed"]): float(r["val_acc1"])
                for r in results
                if r["start"] == s and float(r["fraction"]) == fraction
            }
            for s in STARTS
        }
        seeds = sorted(set.intersection(*(set(acc[s]) for s in STARTS)))
        row = {"fraction": fraction, "seeds": len(seeds)}
        for s in STARTS:
            mean, std = mean_std([acc[s][k] for k in seeds])
            row.update({f"{s}_mean": round(mean, 3), f"{s}_std": round(std, 3)})
        for other in ("deit", "scratch"):
            p = paired([acc["converted"][k] for k in seeds], [acc[other][k] for k in seeds])
            row.update({f"vs_{other}_{k}": (round(v, 3) if isinstance(v, float) else v) for k, v in p.items()})
        rows.append(row)
    return rows


def intervention_means(interventions: list[dict]) -> dict:
    """Mean top-1 change (points) per (start, fraction) when all GPSA gates are forced to content / positional."""
    table = {}
    for r in interventions:
        if r["intervention"].startswith("all GPSA"):
            key = (r["start"], float(r["fraction"]), r["intervention"].removeprefix("all GPSA "))
            table.setdefault(key, []).append(float(r["top1_change"]))
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)) for k, v in table.items()}


def markdown(summary, conversion, interventions, setting: str, command: str) -> str:
    lines = [
        "# From a DeiT to a ConViT: results",
        "",
        f"`{command}`",
        "",
        setting,
        "",
        "Validation top-1 (%) after the extra budget, mean ± std over seeds; `converted − X`: paired "
        "difference (points), its 95 % t interval and the seeds the converted start wins.",
        "",
        "| fraction | seeds | converted | DeiT continued | ConViT scratch | converted − DeiT | wins | "
        "converted − scratch | wins |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        lines.append(
            f"| {r['fraction']:g} | {r['seeds']} | {r['converted_mean']:.2f} ± {r['converted_std']:.2f} | "
            f"{r['deit_mean']:.2f} ± {r['deit_std']:.2f} | {r['scratch_mean']:.2f} ± {r['scratch_std']:.2f} | "
            f"{r['vs_deit_mean']:+.2f} [{r['vs_deit_lo']:+.2f}, {r['vs_deit_hi']:+.2f}] | {r['vs_deit_wins']}/"
            f"{r['vs_deit_n']} | {r['vs_scratch_mean']:+.2f} [{r['vs_scratch_lo']:+.2f}, {r['vs_scratch_hi']:+.2f}] | "
            f"{r['vs_scratch_wins']}/{r['vs_scratch_n']} |"
        )
    lines += [
        "",
        "Before any training (the twin and its conversion, same weights): mean over seeds.",
        "",
        "| fraction | twin top-1 | converted top-1 | agreement (%) | logit distance |",
        "|---:|---:|---:|---:|---:|",
    ]
    for fraction in sorted({float(r["fraction"]) for r in conversion}):
        at = [r for r in conversion if float(r["fraction"]) == fraction]
        mean = {k: np.mean([float(r[k]) for r in at]) for k in CONVERSION_FIELDS[2:]}
        lines.append(
            f"| {fraction:g} | {mean['twin_acc1']:.2f} | {mean['converted_acc1']:.2f} | "
            f"{mean['agreement']:.1f} | {mean['logit_distance']:.3f} |"
        )
    lines += [
        "",
        "Gate interventions on the final ConViTs: top-1 change (points, mean ± std over seeds) with every "
        "GPSA gate forced to 0 (content only) or 1 (positional only).",
        "",
        "| start | fraction | content only | positional only |",
        "|---|---:|---:|---:|",
    ]
    means = intervention_means(interventions)
    for start in ("converted", "scratch"):
        for fraction in sorted({k[1] for k in means}):
            c, p = means.get((start, fraction, "content only")), means.get((start, fraction, "positional only"))
            if c and p:
                lines.append(f"| {start} | {fraction:g} | {c[0]:+.2f} ± {c[1]:.2f} | {p[0]:+.2f} ± {p[1]:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results, interventions, out: Path, setting: str, command: str) -> None:
    """Left: top-1 of each start, one line per seed joining its paired runs, per fraction. Right: top-1 change
    when every GPSA gate is forced to content / positional, converted and scratch ConViTs."""
    plt = pyplot()

    fractions = sorted({float(r["fraction"]) for r in results})
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.4))
    for j, fraction in enumerate(fractions):
        at = [r for r in results if float(r["fraction"]) == fraction]
        for seed in sorted({int(r["seed"]) for r in at}):
            acc = {r["start"]: float(r["val_acc1"]) for r in at if int(r["seed"]) == seed}
            if len(acc) == 3:
                xs = [j * 4 + i for i in range(3)]
                ax.plot(xs, [acc[s] for s in STARTS], "-", color="0.7", lw=0.8)
                ax.scatter(xs, [acc[s] for s in STARTS], c=["C2", "C1", "C0"], s=14, zorder=3)
    ax.set_xticks([j * 4 + i for j in range(len(fractions)) for i in range(3)])
    ax.set_xticklabels([f"{s}\n{f:g}" for f in fractions for s in ("conv.", "DeiT", "scratch")], fontsize=7)
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(
        "top-1 after the extra budget (grey: one seed's paired runs)\nx: start (green: converted, orange: "
        "DeiT continued, blue: ConViT scratch) and data fraction",
        fontsize=8,
    )
    ax.grid(alpha=0.3, axis="y")
    means = intervention_means(interventions)
    labels, content, positional = [], [], []
    for start in ("converted", "scratch"):
        for fraction in fractions:
            if (start, fraction, "content only") in means:
                labels.append(f"{start}\n{fraction:g}")
                content.append(means[(start, fraction, "content only")])
                positional.append(means[(start, fraction, "positional only")])
    x = np.arange(len(labels))
    bx.bar(
        x - 0.2,
        [c[0] for c in content],
        0.4,
        yerr=[c[1] for c in content],
        capsize=3,
        color="C0",
        label="gates forced to 0 (content only)",
    )
    bx.bar(
        x + 0.2,
        [p[0] for p in positional],
        0.4,
        yerr=[p[1] for p in positional],
        capsize=3,
        color="C1",
        label="gates forced to 1 (positional only)",
    )
    bx.axhline(0, color="k", lw=0.8)
    bx.set_xticks(x)
    bx.set_xticklabels(labels, fontsize=7)
    bx.set_ylabel("top-1 change (points), mean ± std over seeds")
    bx.set_title("gate interventions on the final ConViTs (all GPSA blocks at once)", fontsize=8)
    bx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    bx.grid(alpha=0.3, axis="y")
    fig.suptitle(setting, fontsize=7)
    fig.text(0.01, 0.005, footer(command), fontsize=6, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out / "from_vit.png", dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_grid_flags(p, "0.1,1.0", "0,1,2,3,4", steps=300, warmup=30, out="out/from_vit")
    p.add_argument("--pretrain-steps", type=int, default=600, help="optimizer steps of the DeiT twin; default: 600")
    p.add_argument("--gate", type=float, default=0.1, help="initial sigmoid of the converted gates; default: 0.1")
    p.add_argument(
        "--cache", default="out/from_vit_twins", help="folder for the twins' weights; default: out/from_vit_twins"
    )
    add_recipe_flags(p, DEFAULT_CONFIG)
    p.set_defaults(config=str(DEFAULT_CONFIG))
    return p.parse_args(argv)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    command = "python -m experiments.from_vit.run " + shlex.join(argv)
    torch.set_num_threads(args.threads)
    base = base_config(args)
    fractions = [float(x) for x in args.fractions.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    if not all(0 < f <= 1 for f in fractions) or args.steps < 1 or args.pretrain_steps < 1:
        raise UserError("--fractions must lie in (0, 1], --steps and --pretrain-steps be at least 1")
    if base.model_kwargs["local_up_to_layer"] < 1:
        raise UserError("the recipe's ConViT needs at least one GPSA block (model_kwargs.local_up_to_layer)")
    out = Path(args.out)
    prepare_out(out, args.resume, args.overwrite)
    if args.overwrite and not args.resume:
        for name in ("conversion.csv", "interventions.csv"):
            (out / name).unlink(missing_ok=True)
    train_data, val_loader, val_images = digits_data(base)
    val_labels = torch.cat([y for _, y in val_loader])
    data = (train_data, val_loader, val_images, val_labels)
    setting = describe(base, args.steps, f"ConViT: {base.model_kwargs['local_up_to_layer']} GPSA; twin: 0") + (
        f"; twin pretrained {args.pretrain_steps} steps; converted gates {args.gate}"
    )
    print(setting, flush=True)

    done = {(float(r["fraction"]), int(r["seed"])) for r in read_csv(out / "results.csv")}
    plan = [(f, s) for s in seeds for f in fractions]
    todo = [key for key in plan if key not in done]
    if len(todo) < len(plan):
        print(f"resuming: {len(plan) - len(todo)} of {len(plan)} (fraction, seed) pairs already in {out}/results.csv")
    if not done:  # partial rows of an interrupted pair are dropped with the pair
        for name in ("conversion.csv", "interventions.csv"):
            (out / name).unlink(missing_ok=True)
    else:
        for name in ("conversion.csv", "interventions.csv"):
            kept = [r for r in read_csv(out / name) if (float(r["fraction"]), int(r["seed"])) in done]
            if (out / name).is_file():
                write_csv(out / name, kept, list(read_csv(out / name)[0]) if kept else [])
    clock = time.perf_counter()
    for i, (fraction, seed) in enumerate(todo, 1):
        rows = run_seed(base, fraction, seed, args, data, out)
        elapsed = time.perf_counter() - clock
        print(
            f"[{i:2d}/{len(todo)}] fraction {fraction:g} seed {seed}: "
            + ", ".join(f"{r['start']} {r['val_acc1']:.2f}" for r in rows)
            + f" | elapsed {elapsed / 60:.1f} min, ETA {elapsed / i * (len(todo) - i) / 60:.1f} min",
            flush=True,
        )

    results = read_csv(out / "results.csv")
    conversion, interventions = read_csv(out / "conversion.csv"), read_csv(out / "interventions.csv")
    summary = summarize(results)
    write_csv(out / "summary.csv", summary, list(summary[0]))
    (out / "summary.md").write_text(markdown(summary, conversion, interventions, setting, command))
    plot(results, interventions, out, setting, command)
    print((out / "summary.md").read_text(), flush=True)
    print(f"wrote {out}/results.csv, conversion.csv, interventions.csv, summary.csv, summary.md, from_vit.png")


if __name__ == "__main__":
    run_entry_point("experiments.from_vit.run", main)
