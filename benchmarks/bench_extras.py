"""What each per-epoch extra of train.py costs, measured per image beside a training step, and its share of an
ImageNet epoch on --gpus GPUs.

    python benchmarks/bench_extras.py --model convit_tiny --img-size 224 --batch 32 --threads 1 --rounds 3

Measured in one process, the parts interleaved in each round (median and range over --rounds):
  training step    forward, backward and AdamW on a batch, per image
  evaluated image  a forward pass without gradients (the validation set, and the EMA's when it is evaluated)
  locality image   ``convit.locality.epoch_locality`` (what the log's ``locality`` entry holds), per image
  weights check    the finiteness check of the weights after each epoch (model and EMA), per epoch
  checkpoint       ``last.pth`` as train.py writes it (model, EMA, optimizer, fsynced), per epoch
The ImageNet shares assume the accelerator keeps these ratios: an epoch is --train-images / --gpus training
images per process, with --val-images / --gpus evaluated images, and --locality-images on rank 0 (the other
ranks wait for it). The per-epoch seconds (weights check, checkpoint) are shown beside the time of that
epoch's training steps on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's convit
import timm  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402
from timm.utils import ModelEmaV3  # noqa: E402

import convit  # noqa: E402, F401  (registers our models)
from convit.locality import epoch_locality  # noqa: E402
from convit.training.checkpoint import build_checkpoint, save_checkpoint  # noqa: E402
from convit.training.engine import nonfinite_parameters  # noqa: E402
from convit.training.values import parse_scalar  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(args) -> dict[str, list[float]]:
    """Per round: seconds per image (step, eval, locality) and per epoch (weights check, checkpoint)."""
    model = timm.create_model(args.model, num_classes=1000, img_size=args.img_size, **args.model_kwargs)
    ema = ModelEmaV3(model, decay=0.99996)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)
    x = torch.randn(args.batch, model.in_chans, args.img_size, args.img_size)
    y = torch.randint(0, 1000, (args.batch,))
    locality_x = torch.randn(args.locality_images, model.in_chans, args.img_size, args.img_size)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    def evaluate():
        model.eval()
        with torch.no_grad():
            model(x)

    def check():
        nonfinite_parameters(model)
        nonfinite_parameters(ema.module)

    times: dict[str, list[float]] = {k: [] for k in ("step", "eval", "locality", "weights_check", "checkpoint")}
    with tempfile.TemporaryDirectory() as tmp:

        def checkpoint():
            state = build_checkpoint(
                model, args.model, {}, None, num_classes=1000, epoch=0, model_ema=ema.module, optimizer=optimizer
            )
            save_checkpoint(state, Path(tmp) / "last.pth")

        step(), evaluate(), epoch_locality(model, locality_x), check(), checkpoint()  # warm-up
        for r in range(args.rounds):
            times["step"].append(timed(step) / args.batch)
            times["eval"].append(timed(evaluate) / args.batch)
            times["locality"].append(timed(lambda: epoch_locality(model, locality_x)) / args.locality_images)
            times["weights_check"].append(timed(check))
            times["checkpoint"].append(timed(checkpoint))
            print(f"round {r + 1}/{args.rounds}: step {times['step'][-1]:.4f} s/image", flush=True)
    return times


def spread(values: list[float], digits: int = 4) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def shares(times: dict[str, list[float]], args) -> dict[str, float]:
    """Each extra's share of an ImageNet epoch per process, from the medians."""
    med = {k: statistics.median(v) for k, v in times.items()}
    train_images = args.train_images / args.gpus
    epoch_s = train_images * med["step"]
    return {
        "evaluation": args.val_images / args.gpus * med["eval"] / epoch_s,
        "ema_evaluation": args.val_images / args.gpus * med["eval"] / epoch_s,
        "locality": args.locality_images * med["locality"] / epoch_s,
        "weights_check": med["weights_check"] / epoch_s,
        "checkpoint": med["checkpoint"] / epoch_s,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="convit_tiny", metavar="NAME", help="the variant (default: %(default)s)")
    p.add_argument(
        "--model-kwargs", nargs="*", default=[], metavar="K=V", help="model arguments, e.g. depth=2 (default: none)"
    )
    p.add_argument("--img-size", type=int, default=224, metavar="PX", help="image side (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32, metavar="N", help="batch of a step (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="torch CPU threads (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, metavar="N", help="interleaved rounds (default: %(default)s)")
    p.add_argument(
        "--locality-images",
        type=int,
        default=64,
        metavar="N",
        help="train.py's --locality-images (default: %(default)s)",
    )
    p.add_argument(
        "--gpus", type=int, default=8, metavar="N", help="processes of the ImageNet run (default: %(default)s)"
    )
    p.add_argument(
        "--train-images",
        type=int,
        default=1_281_167,
        metavar="N",
        help="images per epoch (default: %(default)s, ImageNet's)",
    )
    p.add_argument(
        "--val-images",
        type=int,
        default=50_000,
        metavar="N",
        help="validation images (default: %(default)s, ImageNet's)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to this JSON file (default: none)")
    args = p.parse_args(argv)
    if min(args.batch, args.rounds, args.locality_images, args.gpus, args.threads) < 1:
        p.error("--batch, --rounds, --locality-images, --gpus and --threads must be at least 1")
    args.model_kwargs = {k: parse_scalar(v) for k, v in (kv.split("=", 1) for kv in args.model_kwargs)}
    torch.set_num_threads(args.threads)
    times = measure(args)
    share = shares(times, args)
    step = statistics.median(times["step"])
    print(
        f"{args.model} at {args.img_size} px, batch {args.batch}, {args.threads} thread(s), median (range) of {args.rounds}:"
    )
    print(f"  training step    {spread(times['step'])} s per image")
    print(
        f"  evaluated image  {spread(times['eval'])} s per image ({statistics.median(times['eval']) / step:.2f} of a step)"
    )
    print(
        f"  locality image   {spread(times['locality'])} s per image "
        f"({statistics.median(times['locality']) / step:.2f} of a step)"
    )
    print(f"  weights check    {spread(times['weights_check'])} s per epoch")
    print(f"  checkpoint       {spread(times['checkpoint'])} s per epoch")
    print(f"share of an ImageNet epoch on {args.gpus} GPUs ({args.train_images // args.gpus} training images each):")
    for key, value in share.items():
        print(f"  {key:16s} {100 * value:.3f} %")
    result = {"args": {k: v for k, v in vars(args).items() if k != "json"}, "seconds": times, "shares": share}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
