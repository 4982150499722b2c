"""``python -m convit.locality``: measure the locality of ConViTs and timm vision transformers, side by side.

python -m convit.locality --model convit_tiny --data digits --out out/locality
python -m convit.locality --model convit_tiny --model deit_tiny_patch16_224 --out out/compare
python -m convit.locality --checkpoint out/best.pth --data-path /data/imagenet/val --ablate --out out/locality
python -m convit.locality --log out/train/log.jsonl --out out/locality
"""

import argparse
import csv
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import run_entry_point
from ..training.data import DigitsDataset, digits_split
from ..variants import VARIANTS, create_model
from ..weights import extract_state_dict, load_weights, model_from_checkpoint, read_checkpoint
from .measures import LocalityError, _resolve, attention_rollout, capture, head_ablation, patch_grid
from .measures import _report as build_report
from .plots import (
    plot_ablation,
    plot_attention_maps,
    plot_centres,
    plot_compare,
    plot_gates,
    plot_log,
    plot_nonlocality,
    plot_nonlocality_parts,
    plot_overlays,
    plot_training_curves,
)

# ---------------------------------------------------------------------------------------------- inputs


def _timm_model(name: str, pretrained: bool = False, checkpoint: str | None = None) -> nn.Module:
    """Any timm model by name (pretrained=False unless asked), with a checkpoint's weights if given."""
    import timm

    if not timm.is_model(name):
        raise LocalityError(
            f"unknown model '{name}': neither a convit variant ({', '.join(VARIANTS)}) nor a timm model"
        )
    kwargs, state_dict = {}, None
    if checkpoint is not None:
        state_dict = extract_state_dict(read_checkpoint(checkpoint))
        if "head.weight" in state_dict:
            kwargs["num_classes"] = state_dict["head.weight"].shape[0]
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as error:  # a download or construction failure of someone else's model: one line
        line = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise LocalityError(f"cannot create timm model {name}: {line}") from None
    if state_dict is not None:
        load_weights(model, state_dict, f"checkpoint '{checkpoint}'")
    return model


def load_model(name: str | None = None, checkpoint: str | None = None, pretrained: bool = False) -> nn.Module:
    """A ConViT or any timm vision transformer by name, with weights from ``checkpoint`` if given.

    ConViT checkpoints are read by ``convit.weights.model_from_checkpoint``: ours (which name the model,
    so ``name`` may be None), timm's state dicts and safetensors, and the original authors' files.
    Other timm names (``deit_tiny_patch16_224``, ``vit_small_patch16_224`` ...) are built by timm.
    A model whose attention the measures cannot read is a LocalityError naming its class.
    """
    if checkpoint is not None and (not name or name in VARIANTS):
        model, ckpt = model_from_checkpoint(checkpoint, name)
        model.class_names = ckpt.get("class_names")  # ours store them; timm's and the authors' files do not
    elif not name:
        raise LocalityError("no model name: pass --model (or a --checkpoint written by train.py)")
    elif name in VARIANTS:
        model = create_model(name, num_classes=1000, pretrained=pretrained)
    else:
        model = _timm_model(name, pretrained, checkpoint)
    _resolve(model)
    return model


def _input_size(model: nn.Module) -> tuple[int, int]:
    # The patch embedding's size is the one the model was built (and trained) at; pretrained_cfg can be
    # stale when img_size was overridden at creation.
    size = getattr(_resolve(model).model.patch_embed, "img_size", None)
    if size is None:
        size = model.pretrained_cfg["input_size"][-2:]
    return int(size[0]), int(size[1])


def _in_chans(model: nn.Module) -> int:
    core = _resolve(model).model
    return int(getattr(core, "in_chans", None) or core.patch_embed.proj.in_channels)


def _digits_batch(model: nn.Module, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_images`` digits of the fixed validation split, as train.py feeds them, and labels."""
    _, (images, labels) = digits_split()
    if not 0 < num_images <= len(labels):
        raise LocalityError(f"--num-images must be between 1 and {len(labels)} for the digits validation split")
    size = _input_size(model)
    if size[0] != size[1]:
        raise LocalityError(f"the digits are square; this model takes {size} images")
    dataset = DigitsDataset(images[:num_images], labels[:num_images], size[0], _in_chans(model), train=False)
    return dataset.images, torch.tensor(dataset.targets)


def _folder_batch(model: nn.Module, path: str, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_images`` evenly spaced images of an ImageFolder, with timm's eval transform for the model."""
    from timm.data import create_transform, resolve_data_config

    from ..training.data import UniqueImageFolder

    if not os.path.isdir(path):
        raise LocalityError(f"data folder {path} does not exist")
    config = resolve_data_config({"input_size": (_in_chans(model), *_input_size(model))}, model=model)
    try:
        dataset = UniqueImageFolder(path, transform=create_transform(**config))
    except (FileNotFoundError, OSError) as error:
        raise LocalityError(f"{path} is not an image folder (class sub-folders of images): {error}") from None
    if {"train", "val"} <= set(dataset.classes):
        raise LocalityError(
            f"'{path}' holds train/ and val/ folders, not class folders: pass {os.path.join(path, 'val')}"
        )
    count = min(num_images, len(dataset))
    indices = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
    samples = []
    for i in indices:
        try:
            samples.append(dataset[i])
        except OSError as error:  # PIL's UnidentifiedImageError, truncated files
            raise LocalityError(f"cannot read image {dataset.samples[i][0]}: {error}") from None
    return torch.stack([image for image, _ in samples]), torch.tensor([label for _, label in samples])


def _parse_query(text: str | None, grid_size: tuple[int, int]) -> tuple[int, int]:
    if text is None:
        return grid_size[0] // 2, grid_size[1] // 2
    try:
        row, col = (int(part) for part in text.split(","))
    except ValueError:
        raise LocalityError(f"--query must be ROW,COL (two integers), got {text!r}") from None
    if not (0 <= row < grid_size[0] and 0 <= col < grid_size[1]):
        raise LocalityError(f"--query {row},{col} is outside the {grid_size[0]}x{grid_size[1]} patch grid")
    return row, col


def _parse_images(text: str, count: int) -> list[int]:
    """``--images``: N (the first N images) or comma-separated indices (``3,`` for image 3 alone)."""
    try:
        if "," in text:
            indices = [int(part) for part in text.split(",") if part.strip()]
        else:
            indices = list(range(int(text)))
    except ValueError:
        raise LocalityError(f"--images must be a count N or indices I,J,... got {text!r}") from None
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise LocalityError(f"--images index {bad[0]} is outside the {count} images analysed (see --num-images)")
    return indices


# ---------------------------------------------------------------------------------------------- outputs

COLUMNS = [
    "block",
    "type",
    "head",
    "nonlocality",
    "gate",
    "nonlocality_content",
    "nonlocality_positional",
    "centre_dx",
    "centre_dy",
    "sharpness",
]


def _number(value) -> str:
    return "" if value is None else f"{value:.6f}"


def _rows(report: dict) -> list[list[str]]:
    drop = report.get("ablation", {}).get("drop")
    rows = []
    for block in report["blocks"]:
        for h, distance in enumerate(block["nonlocality"]):

            def head(key: str, block: dict = block, h: int = h):
                return None if block[key] is None else block[key][h]

            centre = head("centre") or [None, None]
            row = [block["block"], block["type"], h, _number(distance), _number(head("gate"))]
            row += [_number(head("nonlocality_content")), _number(head("nonlocality_positional"))]
            row += [_number(centre[0]), _number(centre[1]), _number(head("sharpness"))]
            rows.append(row + ([_number(drop[block["block"]][h])] if drop is not None else []))
    return rows


def _write_csv(reports: Sequence[dict], path: str, with_model: bool) -> None:
    ablated = any("ablation" in report for report in reports)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow((["model"] if with_model else []) + COLUMNS + (["ablation_drop"] if ablated else []))
        for report in reports:
            for row in _rows(report):
                row = row + ([""] if ablated and "ablation" not in report else [])
                writer.writerow(([report["label"]] if with_model else []) + row)


class _Written:
    """The files a run writes, each with one sentence on how to read it (for report.md)."""

    def __init__(self, root: str):
        self.root, self.items = root, []

    def add(self, path: str, section: str, sentence: str) -> str:
        self.items.append((os.path.relpath(path, self.root), section, sentence))
        return path


def _analyse(model: nn.Module, label: str, args: argparse.Namespace, out: str, written: _Written) -> dict:
    """Measure one model, write its tables and figures in ``out``; returns its report."""
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    if args.data_path:
        images, labels = _folder_batch(model, args.data_path, args.num_images)
    elif args.data == "cluttered":  # hook: the cluttered digits (convit/data/cluttered.py)
        from ..data.cluttered import validation_batch

        images, labels = validation_batch(_input_size(model)[0], _in_chans(model), args.num_images)
    else:
        images, labels = _digits_batch(model, args.num_images)
    stored = getattr(model, "class_names", None)
    if args.ablate and stored is not None:
        from torchvision.datasets.folder import find_classes

        from ..training.checkpoint import class_difference
        from ..training.data import DIGITS_CLASSES

        data_classes = find_classes(args.data_path)[0] if args.data_path else DIGITS_CLASSES
        if list(stored) != list(data_classes):
            raise LocalityError(
                f"--ablate needs the labels the model was trained on: {class_difference(stored, data_classes)}"
            )
    # checked before the long part; the grid is the one the model's patch embedding will make
    grid_size = patch_grid(model, images.shape)
    queries = [_parse_query(text, grid_size) for text in (args.query or [None])]
    chosen = _parse_images(args.images, images.shape[0])
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
    with open(os.path.join(out, "locality.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    written.add(
        os.path.join(out, "locality.json"),
        section,
        "Every measure per block and head (non-locality, gates, GPSA parts, centres, sharpness), as nested lists.",
    )
    _write_csv([report], os.path.join(out, "locality.csv"), with_model=False)
    written.add(
        os.path.join(out, "locality.csv"),
        section,
        "One row per block and head; the GPSA-only columns are empty for self-attention blocks, centres are empty "
        "where a head has no positional peak.",
    )
    plot_nonlocality(report, written.add(os.path.join(out, "nonlocality.png"), section, _SENTENCES["nonlocality"]))
    has_gpsa = bool(report["gates"])
    if has_gpsa:
        plot_gates(report, written.add(os.path.join(out, "gates.png"), section, _SENTENCES["gates"]))
        plot_nonlocality_parts(
            report, written.add(os.path.join(out, "nonlocality_parts.png"), section, _SENTENCES["parts"])
        )
        plot_centres(report, written.add(os.path.join(out, "centres.png"), section, _SENTENCES["centres"]))
    plot_attention_maps(
        captured.maps,
        captured.grid_size,
        queries,
        written.add(os.path.join(out, "attention_maps.png"), section, _SENTENCES["maps"]),
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
            written.add(path, section, _SENTENCES["overlay"].format(index=index))
    return report


_SENTENCES = {
    "nonlocality": "Non-locality per block, one dot per head, in patches: low = the head looks near its query "
    "patch, high = far (a uniform head sits at the grid's mean pairwise distance); GPSA blocks shaded.",
    "gates": "Gate sigmoid(lambda) per GPSA block and head: 1 = the head follows its positional (convolution-like) "
    "attention, 0 = its content attention.",
    "parts": "Per GPSA head, the non-locality of its content part, its positional part and of the gated mix it "
    "applies: the mix sits between the two, nearer the part its gate favours.",
    "centres": "Where each GPSA head's positional attention peaks, as the (dx, dy) offset from the query patch "
    "(-(w0, w1)/(2 w2)); the marker area is the sharpness -w2, large = a narrow, convolution-like kernel.",
    "maps": "Every head's image-averaged attention for the query patch (red cross), rows = blocks, columns = "
    "heads, with the gate of GPSA heads above each map.",
    "overlay": "Image {index} with each head's attention of the boxed query patch on top (rows = blocks), and in "
    "the last column the attention rollout through all blocks up to that row: where the token's "
    "representation draws from, residuals included.",
}


def _labels(names: Sequence[str | None], checkpoints: Sequence[str | None], models: Sequence[nn.Module]) -> list[str]:
    labels = [
        name or getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        for name, model in zip(names, models, strict=True)
    ]
    if len(set(labels)) < len(labels):  # the same architecture twice: name them after their checkpoints' folders
        labels = [
            os.path.basename(os.path.dirname(os.path.abspath(c))) if c else label
            for label, c in zip(labels, checkpoints, strict=True)
        ]
    if len(set(labels)) < len(labels):
        labels = [f"{i}_{label}" for i, label in enumerate(labels)]
    return labels


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


def _write_markdown(path: str, argv: Sequence[str], reports: Sequence[dict], notes: Sequence[str], written: _Written):
    lines = ["# Locality report", "", f"`python -m convit.locality {shlex.join(argv)}`", ""]
    for report in reports:
        rows, cols = report["grid_size"]
        lines.append(
            f"- **{report['label']}**: {report['architecture']} (from {report['family']}), {len(report['blocks'])} blocks, "
            f"{report['num_heads']} heads, {report['local_up_to_layer']} GPSA blocks, {rows}x{cols} patch grid, "
            f"{report['num_images']} images of {report['data']}"
            + (f", weights {report['checkpoint']}" if report["checkpoint"] else "")
            + (f", top-1 {100 * report['ablation']['top1']:.1f}%" if "ablation" in report else "")
        )
    lines += [""] + [f"> Note: {note}" for note in notes] + ([""] if notes else [])
    lines += [
        "Non-locality is the attention-weighted distance in patches from each query patch to the patches it "
        "attends, averaged over queries and images; class and register tokens are left out.",
        "",
    ]
    section = None
    for rel, item_section, sentence in written.items:
        if item_section != section:
            section = item_section
            lines += [f"## {section}", ""]
        if rel.endswith(".png"):
            lines += [f"![{rel}]({rel})", "", f"`{rel}`: {sentence}", ""]
        else:
            lines += [f"- [`{rel}`]({rel}): {sentence}", ""]
    with open(path, "w") as handle:
        handle.write("\n".join(lines))


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


def run(args: argparse.Namespace) -> dict:
    """Everything the command does; returns the report of a single model, or ``{"models": [...]}`` for several."""
    if args.log:
        return _plot_logs(args.log, args.label, args.out)
    pairs = _pairs(args)
    models = [load_model(name, checkpoint, args.pretrained) for name, checkpoint in pairs]
    labels = args.label or _labels([n for n, _ in pairs], [c for _, c in pairs], models)
    if len(labels) != len(models):
        raise LocalityError(f"{len(labels)} --label for {len(models)} models")
    written = _Written(args.out)
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
        _write_csv(reports, os.path.join(args.out, "locality.csv"), with_model=True)
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
    _write_markdown(os.path.join(args.out, "report.md"), args._argv, reports, notes, written)
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
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--query",
        action="append",
        help="ROW,COL of a query patch for attention_maps.png and the overlays (repeatable; default: the centre)",
    )
    parser.add_argument(
        "--images",
        default="1",
        help="images to overlay attention on: N (the first N) or indices I,J (a single index: I,); 0 for none",
    )
    parser.add_argument("--ablate", action="store_true", help="also measure the top-1 drop when each head is zeroed")
    parser.add_argument(
        "--log",
        action="append",
        help="training log.jsonl: plot the measures and the loss over epochs instead; repeat to overlay runs' curves",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--out", required=True, help="output folder")
    return parser


# the files this command may write in --out
_OUTPUT_NAMES = {"locality.json", "locality.csv", "report.md", "ablation.png", "training_curves.png"}


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv``, run the command; user errors raise ``convit.UserError`` (one line from the shell)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args._argv = argv
    if not args.log and not args.model and not args.checkpoint:
        raise LocalityError("pass --model NAME (or --checkpoint, or --log)")
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
