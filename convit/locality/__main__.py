"""``python -m convit.locality``: measure the locality of ConViTs and timm vision transformers, side by side.

python -m convit.locality --model convit_tiny --data digits --out out/locality
python -m convit.locality --model convit_tiny --model deit_tiny_patch16_224 --out out/compare
python -m convit.locality --checkpoint out/best.pth --data-path /data/imagenet/val --ablate --out out/locality
python -m convit.locality --log out/train/log.jsonl --out out/locality
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..data.cluttered import validation_batch
from ..errors import run_entry_point
from ..run_log import EPOCH_FILE, kept_checkpoints
from . import distances
from .ablation import head_ablation
from .adapters import patch_grid
from .curves import plot_locality_over_epochs, plot_log, plot_training_curves
from .distances import distance_report
from .errors import LocalityError
from .inputs import digits_batch, folder_batch, load_model, model_in_chans, model_input_size, parse_images, parse_query
from .interventions import intervene
from .measures import attention_rollout, capture
from .outputs import SENTENCES, Written, model_labels, write_csv, write_markdown
from .plots import (
    plot_ablation,
    plot_attention_maps,
    plot_centres,
    plot_compare,
    plot_gates,
    plot_nonlocality,
    plot_nonlocality_parts,
    plot_overlays,
)
from .report import build_report, epoch_locality


def _analyse(model: nn.Module, label: str, args: argparse.Namespace, out: str, written: Written) -> dict:
    """Measure one model, write its tables and figures in ``out``; returns its report."""
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    if args.data_path:
        images, labels = folder_batch(model, args.data_path, args.num_images)
    elif args.data == "cluttered":
        images, labels = validation_batch(model_input_size(model)[0], model_in_chans(model), args.num_images)
    else:
        images, labels = digits_batch(model, args.num_images)
    stored = getattr(model, "class_names", None)
    if (args.ablate or getattr(args, "intervene", False)) and stored is not None:
        from torchvision.datasets.folder import find_classes

        from ..data import DIGITS_CLASSES, class_difference

        data_classes = find_classes(args.data_path)[0] if args.data_path else DIGITS_CLASSES
        if list(stored) != list(data_classes):
            raise LocalityError(
                f"{'--ablate' if args.ablate else '--intervene'} needs the labels the model was trained on: "
                f"{class_difference(stored, data_classes)}"
            )
    # checked before the long part; the grid is the one the model's patch embedding will make
    grid_size = patch_grid(model, images.shape)
    queries = [parse_query(text, grid_size) for text in (args.query or [None])]
    chosen = parse_images(args.images, images.shape[0])
    os.makedirs(out, exist_ok=True)  # every input checked: from here on the run writes
    captured = capture(model, images, args.batch_size, progress=True)
    report = build_report(model, captured, images.shape[0])
    report.update(
        label=label,
        model=getattr(model, "pretrained_cfg", {}).get("architecture", label),
        checkpoint=getattr(args, "_checkpoint", None),
        data=args.data_path or args.data,
        query=list(queries[0]),
        queries=[list(q) for q in queries],
        images=chosen,
    )
    section = label
    if args.ablate:
        base, drop = head_ablation(model, images, labels, args.batch_size, progress=True)
        report["ablation"] = {"top1": base, "drop": drop.tolist()}
        plot_ablation(drop, base, os.path.join(out, "ablation.png"))
        written.add(
            os.path.join(out, "ablation.png"),
            section,
            "Top-1 drop in points when each head alone is zeroed (rows: blocks, columns: heads); red heads matter, "
            "blue ones hurt.",
        )
    if getattr(args, "pixels", False) or getattr(args, "authors_measure", False):  # hook: distances.py
        report["distances"] = distance_report(model, images, args.batch_size, args.authors_measure, captured.maps)
    if getattr(args, "intervene", False):  # hook: gate interventions (interventions.py)
        report["interventions"] = intervene(model, label, images, labels, args, out, written)
    with open(os.path.join(out, "locality.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    written.add(
        os.path.join(out, "locality.json"),
        section,
        "Every measure per block and head (non-locality, gates, GPSA parts, centres, sharpness), as nested lists.",
    )
    write_csv([report], os.path.join(out, "locality.csv"), with_model=False)
    written.add(
        os.path.join(out, "locality.csv"),
        section,
        "One row per block and head; the GPSA-only columns are empty for self-attention blocks, centres are empty "
        "where a head has no positional peak.",
    )
    plot_nonlocality(report, written.add(os.path.join(out, "nonlocality.png"), section, SENTENCES["nonlocality"]))
    has_gpsa = bool(report["gates"])
    if has_gpsa:
        plot_gates(report, written.add(os.path.join(out, "gates.png"), section, SENTENCES["gates"]))
        plot_nonlocality_parts(
            report, written.add(os.path.join(out, "nonlocality_parts.png"), section, SENTENCES["parts"])
        )
        plot_centres(report, written.add(os.path.join(out, "centres.png"), section, SENTENCES["centres"]))
    plot_attention_maps(
        captured.maps,
        captured.grid_size,
        queries,
        written.add(os.path.join(out, "attention_maps.png"), section, SENTENCES["maps"]),
        [block["gate"] for block in report["blocks"]],
    )
    if chosen:
        per_image = capture(model, images[chosen], args.batch_size, per_image=True, parts=False)
        rollouts = attention_rollout(per_image.maps)
        for n, index in enumerate(chosen):
            path = os.path.join(out, f"overlay_image{index}.png")
            plot_overlays(
                images[index],
                [attn[n] for attn in per_image.maps],
                [rollout[n] for rollout in rollouts],
                per_image.grid_size,
                queries,
                path,
                f"{label}, image {index} (label {labels[index].item()}): attention of the boxed query patch",
            )
            written.add(path, section, SENTENCES["overlay"].format(index=index))
    return report


def _pairs(args: argparse.Namespace) -> list[tuple[str | None, str | None]]:
    names, checkpoints = args.model or [], args.checkpoint or []
    if not checkpoints:
        return [(name, None) for name in names]
    if len(names) <= 1:
        return [(names[0] if names else None, c) for c in checkpoints]
    if len(names) != len(checkpoints):
        raise LocalityError(
            f"{len(names)} --model for {len(checkpoints)} --checkpoint: give one --model for all checkpoints, "
            "or one per checkpoint in the same order"
        )
    return list(zip(names, checkpoints, strict=True))


# ---------------------------------------------------------------------------------------------- command


def _plot_logs(logs: Sequence[str], labels: Sequence[str] | None, out: str) -> dict:
    """One log: its plots in ``out``. Several: each log's plots in ``out/<its run folder>`` and all runs'
    training curves in ``out/training_curves.png`` (runs given the same --label share a colour)."""
    for log in logs:
        if not os.path.isfile(log):
            raise LocalityError(f"--log {log}: no such file (a training run writes OUTPUT_DIR/log.jsonl)")
    if labels and len(labels) != len(logs):
        raise LocalityError(f"{len(labels)} --label for {len(logs)} --log; give one per log or none")
    if len(logs) == 1:
        return {"plots": plot_log(logs[0], out)}
    runs = [os.path.basename(os.path.dirname(os.path.abspath(log))) or "run" for log in logs]
    folders = [run if runs.count(run) == 1 else f"{run}_{i}" for i, run in enumerate(runs)]
    plots = [p for log, folder in zip(logs, folders, strict=True) for p in plot_log(log, os.path.join(out, folder))]
    plots.append(os.path.join(out, "training_curves.png"))
    plot_training_curves(logs, labels or runs, plots[-1])
    return {"plots": plots}


def _measure_run(args: argparse.Namespace) -> dict:
    """The locality of every kept epoch of a run folder, plotted over epochs, and its records as JSON."""
    files = kept_checkpoints(args.run)
    if not files:
        raise LocalityError(
            f"--run {args.run}: no epoch_N.pth files; train with --checkpoint-hist K or --save-every N to keep epochs"
        )
    epochs, records = [], []
    for i, path in enumerate(files, 1):
        model = load_model(checkpoint=str(path))
        if args.data_path:
            images, _ = folder_batch(model, args.data_path, args.num_images)
        elif args.data == "cluttered":
            images, _ = validation_batch(model_input_size(model)[0], model_in_chans(model), args.num_images)
        else:
            images, _ = digits_batch(model, args.num_images)
        epochs.append(int(EPOCH_FILE.match(path.name).group(1)))
        records.append(epoch_locality(model, images, args.batch_size))
        print(f"[{i}/{len(files)}] {path.name}: measured on {images.shape[0]} images", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kept_epochs.json"), "w") as handle:
        json.dump(
            [{"epoch": e, "checkpoint": str(f), **r} for e, f, r in zip(epochs, files, records, strict=True)], handle
        )
    return {"epochs": epochs, "plots": plot_locality_over_epochs(epochs, records, args.out)}


def run(args: argparse.Namespace) -> dict:
    """Everything the command does; returns the report of a single model, or ``{"models": [...]}`` for several."""
    if args.log:
        return _plot_logs(args.log, args.label, args.out)
    if args.run:
        return _measure_run(args)
    pairs = _pairs(args)
    models = [load_model(name, checkpoint, args.pretrained) for name, checkpoint in pairs]
    labels = args.label or model_labels([n for n, _ in pairs], [c for _, c in pairs], models)
    if len(labels) != len(models):
        raise LocalityError(f"{len(labels)} --label for {len(models)} models")
    written = Written(args.out)
    single = len(models) == 1
    reports = []
    for (_, checkpoint), model, label in zip(pairs, models, labels, strict=True):
        args._checkpoint = checkpoint
        out = args.out if single else os.path.join(args.out, label)
        reports.append(_analyse(model, label, args, out, written))
        model.cpu()
    notes = []
    grids = {tuple(report["grid_size"]) for report in reports}
    if len(grids) > 1:
        notes.append(
            "the models' patch grids differ ("
            + ", ".join(f"{r['label']} {r['grid_size'][0]}x{r['grid_size'][1]}" for r in reports)
            + "): non-locality is in each model's own patches, so compare layer by layer and relative to each grid's "
            "uniform value, not in absolute numbers"
        )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if single:
        result = reports[0]
    else:
        result = {"models": reports, "notes": notes}
        with open(os.path.join(args.out, "locality.json"), "w") as handle:
            json.dump(result, handle, indent=1)
        write_csv(reports, os.path.join(args.out, "locality.csv"), with_model=True)
        comparison = [
            (
                os.path.join(args.out, "locality.csv"),
                "One row per model, block and head: all models' measures in one table.",
            ),
            (os.path.join(args.out, "locality.json"), "The models' reports, as each model's own locality.json."),
            (
                os.path.join(args.out, "nonlocality_compare.png"),
                "Non-locality per layer of the models side by side (dots: heads, line: their mean), the paper's "
                "DeiT-against-ConViT figure: lower = more local; compare the models layer by layer.",
            ),
        ]
        plot_compare(reports, labels, comparison[2][0], "; ".join(note.split(":")[0] for note in notes) or None)
        written.items[:0] = [(os.path.relpath(p, args.out), "side by side", s) for p, s in comparison]
    if any("distances" in report for report in reports):  # every model's distances on one figure
        distances.write_outputs(reports, args.out, args._argv, args.authors_measure, written)
    write_markdown(os.path.join(args.out, "report.md"), args._argv, reports, notes, written)
    return result


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = argparse.ArgumentParser(prog="python -m convit.locality", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        action="append",
        help="convit variant or any timm model name, e.g. convit_tiny, deit_tiny_patch16_224; repeat to compare "
        "models side by side (optional if the checkpoint names it)",
    )
    parser.add_argument(
        "--checkpoint", action="append", help="state dict, official or training checkpoint; repeat to compare"
    )
    parser.add_argument("--label", action="append", help="name of each model in tables and plots (default: its name)")
    parser.add_argument("--pretrained", action="store_true", help="timm's pretrained weights (downloads them)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data-path", help="ImageFolder directory (class sub-folders of images)")
    data.add_argument(
        "--data", choices=["digits", "cluttered"], default="digits", help="built-in data set (default: digits)"
    )
    parser.add_argument("--num-images", type=int, default=64, help="images measured (default: 64)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument(
        "--query",
        action="append",
        help="ROW,COL of a query patch for attention_maps.png and the overlays (repeatable; default: the centre)",
    )
    parser.add_argument(
        "--images",
        default="1",
        help="images to overlay attention on: N (the first N) or indices I,J (a single index: I,); 0 for none (default: 1)",
    )
    parser.add_argument("--ablate", action="store_true", help="also measure the top-1 drop when each head is zeroed")
    parser.add_argument(
        "--pixels",
        action="store_true",
        help="also report the mean attention distance in pixels (distances.csv, the ViT paper's per-head scatter)",
    )
    parser.add_argument(
        "--authors-measure",
        action="store_true",
        help="also report the original authors' locality measure (patch embeddings fed to every block); "
        "implies --pixels",
    )
    parser.add_argument(
        "--intervene",
        action="store_true",
        help="also measure top-1 and loss with each GPSA block's gates forced to 0 (content) or 1 (positional)",
    )
    parser.add_argument(
        "--log",
        action="append",
        help="training log.jsonl: plot the measures and the loss over epochs instead; repeat to overlay runs' curves",
    )
    parser.add_argument(
        "--run",
        metavar="DIR",
        help="a run folder: measure each kept epoch_N.pth (--checkpoint-hist, --save-every) and plot them over epochs",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--out", required=True, help="output folder")
    return parser


# the files this command may write in --out
_OUTPUT_NAMES = {
    "locality.json",
    "locality.csv",
    "report.md",
    "ablation.png",
    "training_curves.png",
    "interventions.csv",
    "distances.csv",
}


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv``, run the command; user errors raise ``convit.UserError`` (one line from the shell)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args._argv = argv
    if not args.log and not args.model and not args.checkpoint and not args.run:
        raise LocalityError("pass --model NAME (or --checkpoint, --log or --run)")
    if args.num_images < 1:
        raise LocalityError("--num-images must be at least 1")
    if args.batch_size < 1:
        raise LocalityError(f"--batch-size must be at least 1, not {args.batch_size}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise LocalityError(f"--out '{args.out}' is a file; name a folder")
    out = Path(args.out).resolve()
    if getattr(args, "data_path", None) and (
        out == Path(args.data_path).resolve() or Path(args.data_path).resolve() in out.parents
    ):
        raise LocalityError(
            f"--out '{args.out}' lies inside --data-path '{args.data_path}'; choose a folder outside the data"
        )
    for name in [*(args.checkpoint or []), *(args.log or [])]:
        if Path(name).resolve().parent == out and Path(name).name in _OUTPUT_NAMES:
            raise LocalityError(f"--out '{args.out}' would overwrite the input '{name}'; choose another folder")
    start = time.perf_counter()
    result = run(args)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f}s")
    return result


def cli() -> None:
    """The ``convit-locality`` command (``python -m convit.locality``)."""
    run_entry_point("python -m convit.locality", main)


if __name__ == "__main__":
    cli()
