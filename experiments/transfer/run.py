#!/usr/bin/env python
"""Transfer and distillation at desk scale, on scikit-learn's digits, through train.py's own code path.

Transfer: a ConViT pretrained on digits 0-4 at 16 pixels is fine-tuned (``--finetune``, head
re-initialised, position embedding resampled) on digits 5-9 at 24 pixels with 10 % of their
training images; the same model trained from scratch on that 10 % with the same recipe and the same
number of optimizer steps is the baseline.

Distillation: a larger digits ConViT (the default digits recipe, width 96, depth 6, all the
training images) teaches a small student (width 32, depth 2) trained on 10 % of the digits, with
DeiT's hard and soft distillation on the class head, against the same student without a teacher.

Every run is ``convit.training.train.main`` with a command line (recorded in results.csv), so the
runs are exactly what ``python train.py ...`` would do. Validation is the fixed digits split
(restricted to the run's classes).

    OMP_NUM_THREADS=1 python -m experiments.transfer.run           # 3 seeds, writes experiments/transfer/results/
    python -m experiments.transfer.run --tiny --out /tmp/transfer   # a smoke test of the whole pipeline
    python -m experiments.transfer.run --parts distillation --reuse-teacher   # redo one part; OUT keeps the other's rows

Writes OUT/results.csv (one row per run), OUT/summary.csv and OUT/summary.md (mean +- std over seeds)
and OUT/run.log (everything the runs printed).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import time
from pathlib import Path

import numpy as np

from convit.run_log import log_rows
from convit.training.train import main as train_main

COMMON = ["--progress", "false", "--locality-images", "0", "--num-workers", "0", "--overwrite"]
# the transfer model: the digits recipe at width 48, depth 4 (3 GPSA blocks), patch 4
TRANSFER_MODEL = ["--embed-dim", "48", "--num-heads", "4", "--depth", "4", "--local-up-to-layer", "3"]
STUDENT_MODEL = ["--embed-dim", "32", "--num-heads", "4", "--depth", "2", "--local-up-to-layer", "1"]
PARTS = ("transfer", "distillation")
SETTINGS = {
    # epochs of: pretraining, fine-tuning / scratch, the teacher, the students
    "full": dict(pretrain=15, finetune=40, teacher=15, student=100),
    "tiny": dict(pretrain=1, finetune=1, teacher=1, student=1),
}


def run(name: str, argv: list[str], out: Path, log, reuse: bool = False) -> dict:
    """One train.py run into OUT/runs/NAME; its final epoch's log row and the update count.

    With ``reuse``, a finished run already in OUT/runs/NAME is read instead of trained again.
    """
    folder = out / "runs" / name
    argv = [*argv, *COMMON, "--output-dir", str(folder)]
    start = time.perf_counter()
    if reuse and (folder / "last.pth").is_file():
        print(f"$ (reused) python train.py {' '.join(argv)}", file=log, flush=True)
    else:
        print(f"$ python train.py {' '.join(argv)}", file=log, flush=True)
        with contextlib.redirect_stdout(log):
            train_main(argv)
    rows = log_rows(folder)
    import torch

    ckpt = torch.load(folder / "last.pth", map_location="cpu", weights_only=True)
    return {"row": rows[-1], "updates": ckpt["num_updates"], "time_s": time.perf_counter() - start, "argv": argv}


def record(results, experiment, arm, seed, r):
    results.append(
        {
            "experiment": experiment,
            "arm": arm,
            "seed": seed,
            "val_acc1": round(r["row"]["val_acc1"], 2),
            "updates": r["updates"],
            "time_s": round(r["time_s"], 1),
            "command": "python train.py " + " ".join(r["argv"]),
        }
    )


def experiments(seeds: list[int], setting: dict, out: Path, log, parts=PARTS, reuse_teacher=False) -> list[dict]:
    results = []
    if "distillation" in parts:
        # the teacher: one larger model on all the digits (seed 0), shared by every student seed
        teacher = run("teacher", ["--epochs", str(setting["teacher"]), "--seed", "0"], out, log, reuse_teacher)
        record(results, "distillation", "teacher (width 96, depth 6, all images)", 0, teacher)
    teacher_path = out / "runs" / "teacher" / "best.pth"
    for seed in seeds:
        s = ["--seed", str(seed)]
        if "transfer" not in parts:
            results += distillation(seed, setting, out, log, teacher_path)
            continue
        pre = run(
            f"pretrain_s{seed}",
            [*TRANSFER_MODEL, *s, "--digits-classes", "0,1,2,3,4", "--img-size", "16"]
            + ["--epochs", str(setting["pretrain"])],
            out,
            log,
        )
        record(results, "transfer", "pretrain on 0-4 (16 px)", seed, pre)
        target = [*TRANSFER_MODEL, *s, "--digits-classes", "5,6,7,8,9", "--img-size", "24"]
        target += ["--sampling-ratio", "0.1", "--batch-size", "16", "--epochs", str(setting["finetune"])]
        pretrained = str(out / "runs" / f"pretrain_s{seed}" / "last.pth")
        ft = run(f"finetune_s{seed}", [*target, "--finetune", pretrained], out, log)
        scratch = run(f"scratch_s{seed}", target, out, log)
        record(results, "transfer", "fine-tuned from 0-4", seed, ft)
        record(results, "transfer", "from scratch", seed, scratch)
        assert ft["updates"] == scratch["updates"]

        if "distillation" in parts:
            results += distillation(seed, setting, out, log, teacher_path)
    return results


def distillation(seed: int, setting: dict, out: Path, log, teacher_path: Path) -> list[dict]:
    results = []
    # the student's lr: 1e-3 at its batch of 16 (the digits recipe's lr at batch 64, without the linear scaling)
    student = [*STUDENT_MODEL, "--seed", str(seed), "--sampling-ratio", "0.1", "--batch-size", "16", "--lr", "0.032"]
    student += ["--epochs", str(setting["student"])]
    for arm, extra in (
        ("student alone", []),
        ("student + hard distillation", ["--distillation-type", "hard"]),
        ("student + soft distillation", ["--distillation-type", "soft"]),
    ):
        if extra:
            extra = [*extra, "--teacher", str(teacher_path)]
        r = run(f"student_{arm.split()[-2] if extra else 'alone'}_s{seed}", [*student, *extra], out, log)
        record(results, "distillation", arm, seed, r)
    return results


def summarize(results: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in results:
        groups.setdefault((r["experiment"], r["arm"]), []).append(r)
    rows = []
    for (experiment, arm), rs in groups.items():
        acc = np.array([r["val_acc1"] for r in rs], dtype=float)
        rows.append(
            {
                "experiment": experiment,
                "arm": arm,
                "seeds": len(rs),
                "val_acc1_mean": round(float(acc.mean()), 2),
                "val_acc1_std": round(float(acc.std(ddof=1)) if len(acc) > 1 else math.nan, 2),
                "updates": rs[0]["updates"],
            }
        )
    return rows


def markdown(rows: list[dict], seconds: float, seeds: list[int], parts=PARTS) -> str:
    lines = [
        f"Seeds {', '.join(map(str, seeds))}; val top-1 (%) mean ± std over seeds (sample std); "
        f"{seconds / 60:.1f} minutes for this invocation ({' and '.join(parts)}).",
        "",
        "| experiment | run | seeds | val top-1 (%) | optimizer updates |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        std = "" if math.isnan(r["val_acc1_std"]) else f" ± {r['val_acc1_std']:.2f}"
        lines.append(
            f"| {r['experiment']} | {r['arm']} | {r['seeds']} | {r['val_acc1_mean']:.2f}{std} | {r['updates']} |"
        )
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        metavar="S",
        help="seeds of every run but the teacher's (default: 0 1 2)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        metavar="DIR",
        help="folder for the runs and results (default: experiments/transfer/results)",
    )
    parser.add_argument("--tiny", action="store_true", help="1 epoch per run: a smoke test of the pipeline")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="run only these; OUT keeps the others' rows (default: transfer distillation)",
    )
    parser.add_argument("--reuse-teacher", action="store_true", help="read OUT/runs/teacher instead of training it")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    kept = []
    if set(args.parts) != set(PARTS) and (args.out / "results.csv").is_file():
        with open(args.out / "results.csv") as f:
            kept = [
                {**r, "seed": int(r["seed"]), "val_acc1": float(r["val_acc1"]), "updates": int(r["updates"])}
                for r in csv.DictReader(f)
                if r["experiment"] not in args.parts
            ]
    start = time.perf_counter()
    with open(args.out / "run.log", "a" if kept else "w") as log:
        setting = SETTINGS["tiny" if args.tiny else "full"]
        results = kept + experiments(args.seeds, setting, args.out, log, args.parts, args.reuse_teacher)
    seconds = time.perf_counter() - start
    write_csv(args.out / "results.csv", results)
    summary = summarize(results)
    write_csv(args.out / "summary.csv", summary)
    table = markdown(summary, seconds, args.seeds, args.parts)
    (args.out / "summary.md").write_text(table)
    print(table, end="")
    return summary


if __name__ == "__main__":
    main()
