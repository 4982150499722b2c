"""Our train.py and eval.py beside timm's train.py and validate.py on the same generated ImageFolder.

    python benchmarks/bench_epoch.py --timm-scripts DIR      # DIR holds timm's train.py and validate.py
    python benchmarks/bench_epoch.py --baseline ours         # ours against ours: the machine's noise
    python benchmarks/bench_epoch.py --timm-scripts DIR --task digits --epochs 6   # our default run

Both sides train the same model (timm's scripts run after ``import convit``, so ``convit_tiny`` is ours)
with batch --batch, AdamW, a cosine schedule, label smoothing 0.1, --workers loader processes and
--threads threads; no RandAugment, mixup, erasing, EMA or repeated augmentation. Measured, with the two
sides interleaved in every repetition:
  per epoch      (time of an --epochs process - time of a 1-epoch process) / (--epochs - 1): start-up cancels
  step img/s     the step loop's own rate, per epoch (our log.jsonl; timm's last line of each epoch)
  eval per image (time on the training folder - time on the val folder) / (difference in images)
With --task digits, ours is the default run (configs/digits.yaml) and timm's train.py reads the same digits
split written as 16x16 grayscale PNG files, with the same model, batch, optimizer and schedule, no
augmentation and no loader workers (ours shifts each image by up to one pixel); the evaluation is left
out there (ours reads the digits from memory, so no folder of two sizes is shared).
Prints ours/baseline for each, median and range over the repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMM_STEP = re.compile(r"Train: (\d+) \[\s*\d+/\d+ \(100%\)\].*?\(\s*([\d.]+)s,\s*([\d.]+)/s\)")


def make_folder(root: Path, classes: int, train_per_class: int, val_per_class: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(rng.normal(40 + 60 * k, 50, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
    # the training images as a second validation folder (more images, for the per-image difference)
    (root / "as_val").mkdir(exist_ok=True)
    if not (root / "as_val" / "val").exists():
        (root / "as_val" / "val").symlink_to(root / "train")


def make_digits_folder(root: Path) -> int:
    """Our digits split (the default run's data) as 16x16 grayscale PNG files, as timm's train.py reads them;
    returns the number of classes."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from convit.data import DIGITS_CLASSES, digits_split

    for split, (X, y) in zip(("train", "val"), digits_split()):
        x = F.interpolate(X.float().view(-1, 1, 8, 8) / 16.0, size=(16, 16), mode="bilinear", align_corners=False)
        pixels = (x[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        for i, (image, label) in enumerate(zip(pixels, y.tolist())):
            folder = root / split / DIGITS_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(image), mode="L").save(folder / f"{i:04d}.png")
    return len(DIGITS_CLASSES)


# configs/digits.yaml's run, as timm's train.py takes it (lr: 0.008 x 64 / 512)
DIGITS_MODEL_KWARGS = {
    "img_size": 16,
    "patch_size": 4,
    "embed_dim": 96,
    "num_heads": 4,
    "depth": 6,
    "local_up_to_layer": 4,
}
DIGITS_TIMM_ARGS = ["--in-chans", "1", "--img-size", "16", "--num-classes", "10", "--batch-size", "64"]
DIGITS_TIMM_ARGS += ["--lr", "1e-3", "--warmup-epochs", "2", "--warmup-lr", "1e-6", "--min-lr", "1e-5"]
DIGITS_TIMM_ARGS += ["--smoothing", "0", "--drop-path", "0", "--workers", "0", "--no-aug", "--crop-pct", "1.0"]
DIGITS_TIMM_ARGS += ["--interpolation", "bilinear", "--mean", "0.5", "--std", "0.5"]


def timm_step_rates(text: str) -> list[float]:
    """Images per second of timm's step loop, one per epoch (the average its 100 % line reports)."""
    return [float(m.group(3)) for m in TIMM_STEP.finditer(text)]


class Side:
    """One script pair (train, eval) and the command lines it takes."""

    def __init__(self, name: str, args, model_kwargs: dict, timm_dir: Path | None):
        self.name, self.args, self.model_kwargs, self.timm_dir = name, args, model_kwargs, timm_dir

    def _python(self, script: Path, argv: list[str]) -> list[str]:
        if self.name == "ours":
            return [sys.executable, str(script), *argv]
        # after `import convit`, timm's registry builds our model under this name: checked before the script runs
        code = (
            "import convit, runpy, sys, timm; sys.argv = sys.argv[1:]; "
            f"entry = timm.models.model_entrypoint({self.args.model!r}); "
            "assert entry.__module__.split('.')[0] == 'convit', f'timm builds {entry.__module__}, not ours'; "
            "runpy.run_path(sys.argv[0], run_name='__main__')"
        )
        return [sys.executable, "-c", code, str(script), *argv]

    def train(self, data: Path, epochs: int, out: Path) -> list[str]:
        a = self.args
        if a.task == "digits":
            return self.train_digits(data, epochs, out)
        if self.name == "ours":
            kw = [f"--{k.replace('_', '-')}={v}" for k, v in self.model_kwargs.items()]
            argv = ["--config", "in1k", "--data-path", str(data), "--model", a.model, "--img-size", str(a.img_size)]
            argv += ["--batch-size", str(a.batch), "--aa", "", "--reprob", "0", "--mixup", "0", "--cutmix", "0"]
            argv += ["--model-ema", "false", "--repeated-aug", "false", "--num-workers", str(a.workers)]
            argv += ["--epochs", str(epochs), "--warmup-epochs", "0", "--output-dir", str(out), "--overwrite", "true"]
            argv += ["--locality-images", str(a.locality_images), *kw]
            return self._python(ROOT / "train.py", argv)
        kw = ["--model-kwargs", *(f"{k}={v}" for k, v in self.model_kwargs.items())] if self.model_kwargs else []
        argv = ["--data-dir", str(data), "--train-split", "train", "--val-split", "val", "--model", a.model]
        argv += ["--num-classes", str(a.classes), "--img-size", str(a.img_size), "--batch-size", str(a.batch)]
        argv += ["--opt", "adamw", "--lr", "6.25e-5", "--weight-decay", "0.05", "--sched", "cosine"]
        argv += ["--epochs", str(epochs), "--warmup-epochs", "0", "--smoothing", "0.1", "--drop-path", "0.1"]
        argv += ["--workers", str(a.workers), "--output", str(out), "--experiment", "run", "--color-jitter", "0.4"]
        argv += ["--device", a.device] + (["--amp", "--amp-dtype", "bfloat16"] if a.device.startswith("cuda") else [])
        return self._python(self.timm_dir / "train.py", argv + kw)

    def train_digits(self, data: Path, epochs: int, out: Path) -> list[str]:
        a = self.args
        if self.name == "ours":  # the default recipe: only what a benchmark must set
            argv = ["--epochs", str(epochs), "--output-dir", str(out), "--overwrite", "true", "--progress", "false"]
            return self._python(ROOT / "train.py", argv + ["--locality-images", str(a.locality_images)])
        kw = ["--model-kwargs", *(f"{k}={v}" for k, v in DIGITS_MODEL_KWARGS.items())]
        argv = ["--data-dir", str(data), "--train-split", "train", "--val-split", "val", "--model", a.model]
        argv += ["--opt", "adamw", "--weight-decay", "0.05", "--sched", "cosine", "--epochs", str(epochs)]
        argv += ["--output", str(out), "--experiment", "run", "--device", a.device, *DIGITS_TIMM_ARGS]
        return self._python(self.timm_dir / "train.py", argv + kw)

    def eval(self, data: Path, checkpoint: Path) -> list[str]:
        a = self.args
        if self.name == "ours":
            argv = ["--checkpoint", str(checkpoint), "--data-path", str(data), "--batch-size", str(a.batch)]
            return self._python(ROOT / "eval.py", argv + ["--num-workers", str(a.workers)])
        kw = ["--model-kwargs", *(f"{k}={v}" for k, v in self.model_kwargs.items())] if self.model_kwargs else []
        argv = ["--data-dir", str(data), "--split", "val", "--model", a.model, "--num-classes", str(a.classes)]
        argv += ["--img-size", str(a.img_size), "--checkpoint", str(checkpoint), "--batch-size", str(a.batch)]
        argv += ["--workers", str(a.workers), "--device", a.device]
        argv += ["--amp", "--amp-dtype", "bfloat16"] if a.device.startswith("cuda") else []  # as ours on a GPU
        return self._python(self.timm_dir / "validate.py", argv + kw)

    def step_rates(self, out: Path, stdout: str) -> list[float]:
        if self.name == "ours":
            rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
            return [row["train_images_per_s"] for row in rows]
        return timm_step_rates(stdout)


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return elapsed, done.stdout + done.stderr


def spread(values: list[float]) -> str:
    if not values:
        return "not measured"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}, n={len(values)})"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timm-scripts", type=Path, metavar="DIR", help="folder holding timm's train.py and validate.py")
    p.add_argument(
        "--baseline", choices=["timm", "ours"], default="timm", help="what ours is compared with (default: %(default)s)"
    )
    p.add_argument(
        "--task",
        choices=["imagefolder", "digits"],
        default="imagefolder",
        help="a generated ImageFolder (the options below), or our default run on the digits beside timm's "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--model", default="convit_tiny", metavar="NAME", help="model both sides train (default: %(default)s)"
    )
    p.add_argument(
        "--model-kwargs",
        nargs="*",
        default=[],
        metavar="K=V",
        help="model arguments, e.g. embed_dim=32 depth=2 (default: none)",
    )
    p.add_argument(
        "--classes",
        type=int,
        default=3,
        metavar="N",
        help="classes of the generated ImageFolder (default: %(default)s)",
    )
    p.add_argument(
        "--train-per-class", type=int, default=64, metavar="N", help="training images per class (default: %(default)s)"
    )
    p.add_argument(
        "--val-per-class", type=int, default=16, metavar="N", help="validation images per class (default: %(default)s)"
    )
    p.add_argument(
        "--img-size", type=int, default=224, metavar="PX", help="image side in pixels (default: %(default)s)"
    )
    p.add_argument("--batch", type=int, default=32, metavar="N", help="batch size of both sides (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="data loader workers (default: %(default)s)")
    p.add_argument(
        "--threads", type=int, default=2, metavar="N", help="torch CPU threads per process (default: %(default)s)"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=3,
        metavar="N",
        help="the long process's epochs, at least 2 (the short: 1) (default: %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=2,
        metavar="N",
        help="interleaved repetitions of both sides (default: %(default)s)",
    )
    p.add_argument(
        "--locality-images",
        type=int,
        default=64,
        metavar="N",
        help="ours' per-epoch locality images (default: %(default)s)",
    )
    p.add_argument(
        "--device", default="cpu", metavar="DEV", help="timm's --device (ours picks its own) (default: %(default)s)"
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to this JSON file (default: none)")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the per-epoch cost is a difference with a 1-epoch process)")
    timm_dir = args.timm_scripts
    if args.baseline == "timm":
        if timm_dir is None or not all((timm_dir / f).is_file() for f in ("train.py", "validate.py")):
            p.error("--baseline timm needs --timm-scripts DIR holding timm's train.py and validate.py")
    model_kwargs = dict(kv.split("=", 1) for kv in args.model_kwargs)
    ours = Side("ours", args, model_kwargs, None)
    base = ours if args.baseline == "ours" else Side("timm", args, model_kwargs, timm_dir)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ratios: dict[str, list[float]] = {"per_epoch": [], "step_images_per_s": [], "eval_per_image": []}
    raw: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        if args.task == "digits":
            make_digits_folder(data)
        else:
            make_folder(data, args.classes, args.train_per_class, args.val_per_class, args.img_size)
        n_small, n_big = args.classes * args.val_per_class, args.classes * args.train_per_class
        for rep in range(args.repeats):
            order = [("ours", ours), ("base", base)] if rep % 2 == 0 else [("base", base), ("ours", ours)]
            t: dict = {}
            for epochs in (1, args.epochs):
                for key, side in order:
                    out = tmp / f"{key}_{rep}_{epochs}"
                    t[key, epochs], text = timed(side.train(data, epochs, out), env)
                    if epochs == args.epochs:
                        t[key, "rates"] = side.step_rates(out if side.name == "ours" else out / "run", text)
                        t[key, "ckpt"] = out / "last.pth" if side.name == "ours" else out / "run" / "last.pth.tar"
            # the same checkpoint (ours) for both evaluations
            for folder, n in ((data, n_small), (data / "as_val", n_big)) if args.task == "imagefolder" else ():
                for key, side in order:
                    t[key, "eval", n], _ = timed(side.eval(folder, t["ours", "ckpt"]), env)
            per_epoch = {k: (t[k, args.epochs] - t[k, 1]) / (args.epochs - 1) for k in ("ours", "base")}
            per_image = {
                k: (t[k, "eval", n_big] - t[k, "eval", n_small]) / (n_big - n_small)
                if args.task == "imagefolder"
                else None
                for k in ("ours", "base")
            }
            rate = {k: statistics.median(t[k, "rates"]) for k in ("ours", "base")}
            ratios["per_epoch"].append(per_epoch["ours"] / per_epoch["base"])
            ratios["step_images_per_s"].append(rate["ours"] / rate["base"])
            if args.task == "imagefolder":
                ratios["eval_per_image"].append(per_image["ours"] / per_image["base"])
            raw.append(
                {
                    "per_epoch_s": per_epoch,
                    "one_epoch_process_s": {k: t[k, 1] for k in ("ours", "base")},
                    "step_images_per_s": {k: t[k, "rates"] for k in ("ours", "base")},
                    "eval_per_image_s": per_image,
                }
            )
            print(f"repetition {rep + 1}: " + json.dumps(raw[-1]), flush=True)
    one_process = [r["one_epoch_process_s"]["ours"] / r["one_epoch_process_s"]["base"] for r in raw]
    label = f"ours/{args.baseline}"
    print(f"{label}, {args.task}, {args.threads} thread(s), median (min-max, n) over repetitions:")
    print(f"  per epoch            {spread(ratios['per_epoch'])}")
    print(f"  1-epoch process      {spread(one_process)}")
    print(f"  step loop img/s      {spread(ratios['step_images_per_s'])}   (above 1: ours faster)")
    print(f"  eval time per image  {spread(ratios['eval_per_image'])}")
    result = {"baseline": args.baseline, "threads": args.threads, "ratios": ratios, "runs": raw, "args": vars(args)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
