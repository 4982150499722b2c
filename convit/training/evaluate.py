"""Evaluate a ConViT: top-1, top-5, loss, per-class accuracy, precision and recall, and a confusion matrix.

    python eval.py --checkpoint out/best.pth                        # ours: model and data from the file
    python eval.py --checkpoint out/ --csv results.csv              # every checkpoint of a run, one row each
    python eval.py --checkpoint out/best.pth --report-dir report/   # per_class.csv, confusion.csv and .png
    python eval.py --model convit_small --checkpoint convit_small.pth --data-path /data/imagenet
    python eval.py --model convit_small --pretrained --data-path /data/imagenet --output results.json
    torchrun --nproc_per_node=8 eval.py --checkpoint out/best.pth --data-path /data/imagenet

Checkpoints: this repo's train.py, timm's (state dict, .pth or .safetensors), or the original
authors' ({"model": state_dict}). Every validation image is counted once, whatever the world size.
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

from convit.data import DataError, build_loaders, class_difference
from convit.errors import UserError, run_entry_point
from convit.training.checks import check_range
from convit.training.cli import add_keys
from convit.training.config import Config, from_dict, validate
from convit.training.distributed import cleanup, init_distributed
from convit.training.eval_report import (
    append_row,
    evaluate_confusion,
    mean_class_accuracy,
    per_class,
    plot_confusion,
    write_tables,
)
from convit.training.values import coerce
from convit.variants import create_model
from convit.weights import extract_state_dict, inferred_settings, is_training_checkpoint, model_from_checkpoint

# The schema keys eval.py shares with train.py, and what their defaults are here.
SHARED_KEYS = (
    "data",
    "data_path",
    "digits_classes",
    "val_split",
    "class_map",
    "img_size",
    "crop_pct",
    "interpolation",
    "batch_size",
    "num_workers",
)
EVAL_DEFAULTS = {
    "data": "the checkpoint's (imagefolder for a checkpoint that names none)",
    "data_path": "the checkpoint's",
    "digits_classes": "the checkpoint's",
    "val_split": "the checkpoint's",
    "class_map": "the checkpoint's",
    "img_size": "the model's",
    "crop_pct": "the checkpoint's",
    "interpolation": "the checkpoint's",
    "batch_size": 128,
    "num_workers": "0 on the digits, else up to 8",
}


def parse_args(argv=None):
    """eval.py's arguments; the data and input flags are train.py's (the same schema), read into their types."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    what = p.add_argument_group("model")
    what.add_argument(
        "--checkpoint",
        metavar="PATH",
        nargs="+",
        help="checkpoint files (ours, timm's or the original authors'), or run folders (their *.pth, one row each)",
    )
    what.add_argument("--pretrained", action="store_true", help="timm's pretrained weights for --model")
    what.add_argument(
        "--model", metavar="NAME", help="a ConViT variant or any timm model name; read from the checkpoint when omitted"
    )
    what.add_argument("--use-ema", action="store_true", help="evaluate the EMA weights of the checkpoint")
    add_keys(p, SHARED_KEYS, EVAL_DEFAULTS)
    out = p.add_argument_group("output")
    out.add_argument("--output", metavar="PATH", help="write the results to this JSON file; default: none")
    out.add_argument("--csv", metavar="PATH", help="append one row per checkpoint to this CSV file; default: none")
    out.add_argument(
        "--report-dir",
        metavar="DIR",
        help="write per_class.csv, confusion.csv and confusion.png (up to 100 classes) here, one subfolder per "
        "checkpoint when there are several; default: none",
    )
    args = p.parse_args(argv)
    given = {k: coerce(k, v) for k, v in vars(args).items() if k in SHARED_KEYS}
    for name in SHARED_KEYS:
        setattr(args, name, given.get(name))
    return args


def checkpoints_of(paths) -> list[Path]:
    """The checkpoint files named: files as given, a run folder as its *.pth in name order."""
    found = []
    for p in map(Path, paths or []):
        if p.is_dir():
            files = sorted(p.glob("*.pth"))
            if not files:
                raise UserError(
                    f"--checkpoint '{p}' is a folder without any .pth file; name a checkpoint or a run folder"
                )
            found += files
        elif p.is_file():
            found.append(p)
        else:
            raise UserError(f"--checkpoint '{p}' not found")
    return found


def check_args(args) -> None:
    """Every argument checked before the model is built or anything is evaluated (or written)."""
    if not args.checkpoint and not args.pretrained:
        raise UserError("give --checkpoint FILE or --model NAME --pretrained")
    if args.pretrained and not args.model:
        raise UserError("--pretrained needs --model NAME")
    for name in SHARED_KEYS:
        check_range(name, getattr(args, name))
    args.checkpoints = checkpoints_of(args.checkpoint)
    if len(args.checkpoints) > 1 and args.model:
        raise UserError("--model applies to one checkpoint; evaluate foreign checkpoints one at a time")
    inputs = {p.resolve() for p in args.checkpoints}
    for flag, path in (("--output", args.output), ("--csv", args.csv)):
        if path and Path(path).is_dir():
            kind, suffix = ("JSON", "results.json") if flag == "--output" else ("CSV", "results.csv")
            raise UserError(f"{flag} '{path}' is a folder; name a {kind} file, e.g. {Path(path) / suffix}")
        if path and Path(path).resolve() in inputs:
            raise UserError(
                f"{flag} '{path}' is the checkpoint itself (one being evaluated); name another file for the results"
            )
    if args.report_dir and Path(args.report_dir).exists() and not Path(args.report_dir).is_dir():
        raise UserError(f"--report-dir '{args.report_dir}' is a file; name a folder")


def load_model(args, checkpoint):
    """(model, Config describing its input, class names or None) from our checkpoint, a foreign one, or timm's."""
    if checkpoint is None:
        try:
            model = create_model(args.model, num_classes=1000, pretrained=True)
        except (OSError, RuntimeError) as e:  # no network, no hub, no file: huggingface_hub's errors are OSErrors
            raise UserError(
                f"cannot fetch timm's pretrained weights for {args.model} ({type(e).__name__}); "
                "without network, download the file elsewhere and pass --checkpoint FILE"
            ) from None
        size = model.img_size[0] if hasattr(model, "img_size") else model.pretrained_cfg["input_size"][-1]
        return model, Config(model=args.model, img_size=size, data="imagefolder"), None
    model, ckpt = model_from_checkpoint(
        checkpoint, args.model, use_ema=args.use_ema, **({"img_size": args.img_size} if args.img_size else {})
    )
    if is_training_checkpoint(ckpt):
        return model, from_dict(ckpt["config"]), ckpt.get("class_names")
    inferred = inferred_settings(ckpt, extract_state_dict(ckpt, use_ema=args.use_ema))
    told = {"model": args.model, "img_size": args.img_size}
    inferred = {k: v for k, v in inferred.items() if told[k] is None}
    if inferred and int(os.environ.get("RANK", "0")) == 0:
        said = " ".join(f"{'--model' if k == 'model' else '--img-size'} {v}" for k, v in inferred.items())
        print(f"note: read {said} from the checkpoint; pass them to override", flush=True)
    cfg = Config(
        model=args.model or inferred.get("model"),
        model_kwargs={"in_chans": model.in_chans},
        img_size=model.img_size[0],
        data="imagefolder",
    )
    return model, cfg, None


def main(args):
    """Evaluate each checkpoint: its results dict (a list of them for several checkpoints)."""
    check_args(args)
    dist = init_distributed()
    rows = []
    for checkpoint in args.checkpoints or [None]:
        rows.append(evaluate_one(args, checkpoint, dist))
    if dist.is_main and args.output:
        Path(args.output).write_text(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2) + "\n")
    cleanup()
    return rows[0] if len(rows) == 1 else rows


def evaluate_one(args, checkpoint, dist) -> dict:
    """Results of one checkpoint (or of timm's pretrained weights); its CSV row and report written on rank 0."""
    model, cfg, class_names = load_model(args, checkpoint)
    model.to(dist.device)
    if args.data_path and args.data is None and cfg.data in ("auto", "digits"):
        cfg.data = "imagefolder"  # a folder given for a digits model: its val/ ImageFolder
    for name in SHARED_KEYS:
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.data == "digits" and args.data_path is None:
        cfg.data_path = None
    cfg = validate(cfg)
    cfg.batch_size = args.batch_size or 128
    cfg.num_workers = (
        args.num_workers
        if args.num_workers is not None
        else (0 if cfg.data in ("digits", "cluttered") else min(8, os.cpu_count() or 1))
    )
    cfg.sampling_ratio = 1.0
    loaders = build_loaders(cfg, dist.rank, dist.world_size, need_train=False, pin_memory=dist.device.type == "cuda")
    if loaders.num_classes != model.num_classes:
        raise DataError(
            f"the model predicts {model.num_classes} classes but the data has "
            f"{loaders.num_classes}; evaluate on the dataset it was trained for"
        )
    if class_names is None and dist.is_main:
        print(
            "note: the checkpoint carries no class names (timm's and the original authors' files do not): "
            "the data's classes are taken in their order",
            flush=True,
        )
    elif class_names is not None and list(class_names) != loaders.class_names:
        raise DataError(f"{class_difference(class_names, loaders.class_names)}; evaluate on the data it was trained on")
    amp_dtype = torch.bfloat16 if dist.device.type == "cuda" else None
    stats, confusion = evaluate_confusion(model, loaders.val, dist.device, loaders.num_classes, amp_dtype)
    if not math.isfinite(stats["val_loss"]):
        raise UserError(
            f"the model's outputs are not finite on this data (loss {stats['val_loss']}): the checkpoint's weights "
            "are broken; evaluate another checkpoint of the run"
        )
    classes = per_class(confusion, loaders.class_names)
    results = {
        "model": cfg.model,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "pretrained": args.pretrained,
        "data": cfg.data,
        "data_path": cfg.data_path,
        "split": cfg.val_split if "/" in cfg.data else "val",
        "img_size": cfg.img_size,
        "crop_pct": cfg.crop_pct,
        "interpolation": cfg.interpolation,
        "world_size": dist.world_size,
        **stats,
        "val_mean_class_acc": mean_class_accuracy(classes),
    }
    if dist.is_main:
        print(
            f"{cfg.model if len(args.checkpoints) <= 1 else f'{checkpoint} ({cfg.model})'}: "
            f"top-1 {stats['val_acc1']:.2f}%  top-5 {stats['val_acc5']:.2f}%  loss {stats['val_loss']:.4f}  "
            f"({stats['val_images']} images)  mean class {results['val_mean_class_acc']:.2f}%  data {cfg.data}",
            flush=True,
        )
        if args.csv:
            append_row(Path(args.csv), results)
        if args.report_dir:
            folder = Path(args.report_dir)
            if len(args.checkpoints) > 1:
                folder = folder / f"{Path(checkpoint).parent.name}_{Path(checkpoint).stem}"
            write_tables(confusion, loaders.class_names, folder)
            title = f"{cfg.model} on {cfg.data} ({results['split']}): top-1 {stats['val_acc1']:.2f}%"
            plot_confusion(confusion, loaders.class_names, folder / "confusion.png", title)
    results["per_class"] = classes
    return results


def cli() -> None:
    """The ``convit-eval`` command (and ``python eval.py`` in a clone)."""
    run_entry_point(
        Path(sys.argv[0]).name if sys.argv[0].endswith(".py") else "convit-eval", lambda: main(parse_args())
    )


if __name__ == "__main__":
    cli()
