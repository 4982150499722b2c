"""``python -m convit.locality``: measure a ConViT's locality on the digits or an ImageFolder; plot a log.

python -m convit.locality --model convit_tiny --data digits --out out/locality
python -m convit.locality --checkpoint out/best.pth --data-path /data/imagenet/val --ablate --out out/locality
python -m convit.locality --log out/train/log.jsonl --out out/locality
"""

import argparse
import csv
import json
import os
import time
from collections.abc import Sequence

import torch

from ..errors import run_entry_point
from ..model import ConViT
from ..training.data import DigitsDataset, digits_split
from ..variants import create_model
from ..weights import model_from_checkpoint
from .measures import LocalityError, _attention_maps, _report, head_ablation
from .plots import plot_ablation, plot_attention_maps, plot_gates, plot_log, plot_nonlocality

# ---------------------------------------------------------------------------------------------- inputs


def load_model(name: str | None = None, checkpoint: str | None = None) -> ConViT:
    """A ConViT by timm name, with weights from ``checkpoint`` if given.

    Checkpoints are read by ``convit.weights.model_from_checkpoint``: ours (which name the model, so
    ``name`` may be None), timm's state dicts and safetensors, and the original authors' files.
    """
    if checkpoint is not None:
        model = model_from_checkpoint(checkpoint, name)[0]
    elif not name:
        raise LocalityError("no model name: pass --model (or a --checkpoint written by train.py)")
    else:
        model = create_model(name, num_classes=1000)
    if not isinstance(model, ConViT):
        raise LocalityError(f"{name} is a {type(model).__name__}, not a ConViT")
    return model


def _input_size(model: ConViT) -> tuple[int, int]:
    # The patch embedding's size is the one the model was built (and trained) at; pretrained_cfg can be
    # stale when img_size was overridden at creation.
    return tuple(int(s) for s in model.patch_embed.img_size)


def _digits_batch(model: ConViT, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_images`` digits of the fixed validation split, as train.py feeds them, and labels."""
    _, (images, labels) = digits_split()
    if not 0 < num_images <= len(labels):
        raise LocalityError(f"--num-images must be between 1 and {len(labels)} for the digits validation split")
    if _input_size(model)[0] != _input_size(model)[1]:
        raise LocalityError(f"the digits are square; this model takes {_input_size(model)} images")
    dataset = DigitsDataset(
        images[:num_images], labels[:num_images], _input_size(model)[0], model.in_chans, train=False
    )
    return dataset.images, torch.tensor(dataset.targets)


def _folder_batch(model: ConViT, path: str, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_images`` evenly spaced images of an ImageFolder, with timm's eval transform for the model."""
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(path):
        raise LocalityError(f"data folder {path} does not exist")
    config = resolve_data_config({"input_size": (model.in_chans, *_input_size(model))}, model=model)
    try:
        dataset = ImageFolder(path, transform=create_transform(**config))
    except (FileNotFoundError, OSError) as error:
        raise LocalityError(f"{path} is not an image folder (class sub-folders of images): {error}") from None
    count = min(num_images, len(dataset))
    indices = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
    samples = [dataset[i] for i in indices]
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


# ---------------------------------------------------------------------------------------------- command


def _write_csv(report: dict, path: str, drop: torch.Tensor | None = None) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["block", "type", "head", "nonlocality", "gate"] + (["ablation_drop"] if drop is not None else [])
        )
        for block in report["blocks"]:
            for h, distance in enumerate(block["nonlocality"]):
                gate = "" if block["gate"] is None else f"{block['gate'][h]:.6f}"
                row = [block["block"], block["type"], h, f"{distance:.6f}", gate]
                writer.writerow(row + ([f"{drop[block['block'], h].item():.6f}"] if drop is not None else []))


def run(args: argparse.Namespace) -> dict:
    """Everything the command does; returns the report it writes to ``locality.json``."""
    os.makedirs(args.out, exist_ok=True)
    if args.log:
        return {"plots": plot_log(args.log, args.out)}
    model = load_model(args.model, args.checkpoint)
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    if args.data_path:
        images, labels = _folder_batch(model, args.data_path, args.num_images)
    else:
        images, labels = _digits_batch(model, args.num_images)
    # checked before the long part; the grid is the one the model's patch embedding will make
    query = _parse_query(args.query, (images.shape[-2] // model.patch_size[0], images.shape[-1] // model.patch_size[1]))
    maps, grid_size = _attention_maps(model, images, args.batch_size, progress=True)
    report = _report(model, maps, grid_size, images.shape[0])
    name = getattr(model, "pretrained_cfg", {}).get("architecture", args.model)
    report.update(model=name, checkpoint=args.checkpoint, data=args.data_path or "digits", query=list(query))
    drop = None
    if args.ablate:
        base, drop = head_ablation(model, images, labels, args.batch_size, progress=True)
        report["ablation"] = {"top1": base, "drop": drop.tolist()}
        plot_ablation(drop, base, os.path.join(args.out, "ablation.png"))
    with open(os.path.join(args.out, "locality.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    _write_csv(report, os.path.join(args.out, "locality.csv"), drop)
    plot_nonlocality(report, os.path.join(args.out, "nonlocality.png"))
    plot_gates(report, os.path.join(args.out, "gates.png"))
    plot_attention_maps(
        maps,
        grid_size,
        query,
        os.path.join(args.out, "attention_maps.png"),
        [block["gate"] for block in report["blocks"]],
    )
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m convit.locality", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="timm model name, e.g. convit_tiny (optional if the checkpoint names it)")
    parser.add_argument("--checkpoint", help="state dict, official checkpoint or training checkpoint")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data-path", help="ImageFolder directory (class sub-folders of images)")
    data.add_argument("--data", choices=["digits"], default="digits", help="built-in data set (default: digits)")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--query", help="ROW,COL of the query patch for attention_maps.png (default: centre)")
    parser.add_argument("--ablate", action="store_true", help="also measure the top-1 drop when each head is zeroed")
    parser.add_argument("--log", help="training log.jsonl: plot non-locality and gates over epochs instead")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--out", required=True, help="output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv``, run the command; user errors raise ``convit.UserError`` (one line from the shell)."""
    args = build_parser().parse_args(argv)
    if not args.log and not args.model and not args.checkpoint:
        raise LocalityError("pass --model NAME (or --checkpoint, or --log)")
    if args.num_images < 1:
        raise LocalityError("--num-images must be at least 1")
    start = time.perf_counter()
    result = run(args)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f}s")
    return result


def cli() -> None:
    """The ``convit-locality`` command (``python -m convit.locality``)."""
    run_entry_point("python -m convit.locality", main)


if __name__ == "__main__":
    cli()
