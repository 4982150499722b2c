"""Label images with a trained model: the top-k classes and their probabilities, as CSV or JSON.

    python predict.py --checkpoint out/best.pth photos/ --topk 5
    python predict.py --checkpoint out/best.pth 'photos/**/*.jpg' --output labels.json
    convit-predict --model convit_small --checkpoint convit_small.pth --class-map classes.txt photo.jpg

Inputs are image files, folders (searched recursively) or glob patterns. The preprocessing is the model's
own: for a checkpoint written by train.py its evaluation transform (size, crop, interpolation), for
others timm's data config of the model. Class names come from our checkpoints, else from ``--class-map``
(one name per line), else they are the class indices.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import sys
from pathlib import Path

import torch

from .errors import UserError, run_entry_point
from .weights import is_training_checkpoint, model_from_checkpoint


class PredictError(UserError):
    """A bad input of predict: a path, an unreadable image, a flag."""


def image_extensions() -> tuple[str, ...]:
    from timm.data import get_img_extensions

    return tuple(sorted(get_img_extensions()))


def find_images(inputs) -> list[Path]:
    """The image files named by files, folders (recursively) and glob patterns, each once, in order."""
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in image_extensions())
            if not found:
                raise PredictError(f"folder '{item}' holds no image file ({', '.join(image_extensions())})")
        elif p.is_file():
            found = [p]
        elif any(c in item for c in "*?["):
            found = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
            if not found:
                raise PredictError(f"pattern '{item}' matches no file")
        else:
            raise PredictError(f"'{item}' not found; name image files, folders or glob patterns")
        files += found
    seen, unique = set(), []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def open_rgb(path: Path):
    """The image as RGB, or a PredictError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError):
        raise PredictError(f"'{path}' is not an image PIL can read; remove it from the inputs") from None


def check_images(files: list[Path]) -> None:
    """Every file must be a readable image: checked before a model runs or anything is written."""
    from PIL import Image, UnidentifiedImageError

    for f in files:
        try:
            with Image.open(f) as img:
                img.verify()
        except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError):
            raise PredictError(f"'{f}' is not an image PIL can read; remove it from the inputs") from None


def load(args):
    """(model, eval transform, class names) for the checkpoint and flags."""
    from timm.data import create_transform, resolve_data_config

    model, ckpt = model_from_checkpoint(args.checkpoint, args.model, use_ema=args.use_ema)
    model.eval()
    overrides = {}
    names = None
    if is_training_checkpoint(ckpt):
        cfg = ckpt.get("config", {})
        if cfg.get("data") == "digits":
            raise PredictError(
                f"'{args.checkpoint}' is a digits model: it reads 8x8 scikit-learn digit arrays, not image files"
            )
        size = cfg.get("img_size", model.img_size[0] if hasattr(model, "img_size") else 224)
        overrides = {
            "input_size": (3, size, size),
            "crop_pct": cfg.get("crop_pct", 0.875),
            "interpolation": cfg.get("interpolation", "bicubic"),
        }
        names = ckpt.get("class_names")
    data_config = resolve_data_config(overrides, model=model)
    transform = create_transform(**data_config, is_training=False)
    num_classes = model.num_classes
    if args.class_map:
        from .data import read_class_map

        names = read_class_map(args.class_map)
    names = list(names) if names else [str(k) for k in range(num_classes)]
    if len(names) != num_classes:
        raise PredictError(f"the class names list {len(names)} classes but the model predicts {num_classes}")
    return model, transform, names


@torch.no_grad()
def predict(model, transform, files: list[Path], class_names, topk: int = 5, batch_size: int = 32) -> list[dict]:
    """For each file: {"file", "top": [{"class", "index", "prob"}, ...]} (k best, most probable first)."""
    device = next(model.parameters()).device
    k = min(topk, len(class_names))
    rows = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        batch = torch.stack([transform(open_rgb(f)) for f in chunk]).to(device)
        probs = model(batch).float().softmax(dim=1)
        p, idx = probs.topk(k, dim=1)
        for f, ps, ids in zip(chunk, p.tolist(), idx.tolist()):
            top = [{"class": class_names[i], "index": i, "prob": q} for q, i in zip(ps, ids)]
            rows.append({"file": str(f), "top": top})
    return rows


def draw_overlays(model, transform, files: list[Path], rows: list[dict], out: Path) -> list[Path]:
    """Each image's attention maps (every block and head, and their rollout) for its centre patch, titled
    with the prediction; PNG files named after the images (their position first, so names never clash)."""
    from .locality import attention_rollout, capture, plot_overlays

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, (f, row) in enumerate(zip(files, rows)):
        image = transform(open_rgb(f))
        captured = capture(model, image[None], per_image=True, parts=False)
        rollout = attention_rollout(captured.maps)
        rows_, cols = captured.grid_size
        top = row["top"][0]
        path = out / f"{n:04d}_{f.stem}.png"
        plot_overlays(
            image,
            [maps[0] for maps in captured.maps],
            [r[0] for r in rollout],
            captured.grid_size,
            [(rows_ // 2, cols // 2)],
            str(path),
            f"{f.name}: {top['class']} ({100 * top['prob']:.1f}%), attention of the boxed query patch",
        )
        written.append(path)
    return written


def write(rows: list[dict], fmt: str, stream) -> None:
    """CSV (file, class_1, prob_1, ..., class_k, prob_k) or JSON to ``stream``."""
    if fmt == "json":
        json.dump(rows, stream, indent=2)
        stream.write("\n")
        return
    k = len(rows[0]["top"]) if rows else 0
    writer = csv.writer(stream)
    writer.writerow(["file", *[c for j in range(1, k + 1) for c in (f"class_{j}", f"prob_{j}")]])
    for r in rows:
        writer.writerow([r["file"], *[v for t in r["top"] for v in (t["class"], f"{t['prob']:.6f}")]])


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="weights: ours, timm's or the authors'")
    p.add_argument(
        "--model", metavar="NAME", help="a ConViT variant or any timm model name, for checkpoints that do not name it"
    )
    p.add_argument("--use-ema", action="store_true", help="the checkpoint's EMA weights")
    p.add_argument("--class-map", metavar="PATH", help="class names, one per line in label order; default: ours")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes per image; default: 5")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass; default: 32")
    p.add_argument("--output", metavar="PATH", help="write here (.csv or .json); default: CSV on stdout")
    p.add_argument("--format", choices=("csv", "json"), help="default: from --output's suffix, else csv")
    p.add_argument(
        "--overlay-dir",
        metavar="DIR",
        help="also draw each image's attention (every head and the rollout, centre query patch) as "
        "DIR/<image name>.png; default: none",
    )
    return p.parse_args(argv)


def main(args) -> list[dict]:
    """Check every input, then label the images and write the table; returns its rows."""
    if args.topk < 1 or args.batch_size < 1:
        raise PredictError("--topk and --batch-size must be at least 1")
    if not Path(args.checkpoint).is_file():
        raise PredictError(f"--checkpoint '{args.checkpoint}' not found")
    fmt = args.format or ("json" if args.output and args.output.lower().endswith(".json") else "csv")
    files = find_images(args.inputs)
    if args.output:
        out = Path(args.output)
        if out.is_dir():
            raise PredictError(f"--output '{out}' is a folder; name a file, e.g. {out / ('labels.' + fmt)}")
        if out.resolve() in {f.resolve() for f in files} | {Path(args.checkpoint).resolve()}:
            raise PredictError(f"--output '{out}' is one of the inputs; name another file")
    if args.overlay_dir and Path(args.overlay_dir).exists() and not Path(args.overlay_dir).is_dir():
        raise PredictError(f"--overlay-dir '{args.overlay_dir}' is a file; name a folder")
    check_images(files)
    model, transform, names = load(args)
    rows = predict(model, transform, files, names, args.topk, args.batch_size)
    if args.overlay_dir:
        draw_overlays(model, transform, files, rows, Path(args.overlay_dir))
    if args.output:
        with open(args.output, "w", newline="") as f:
            write(rows, fmt, f)
    else:
        write(rows, fmt, sys.stdout)
    return rows


def cli() -> None:
    """The ``convit-predict`` command (and ``python predict.py`` in a clone)."""
    run_entry_point(
        Path(sys.argv[0]).name if sys.argv[0].endswith(".py") else "convit-predict", lambda: main(parse_args())
    )


if __name__ == "__main__":
    cli()
