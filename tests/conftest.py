"""Shared helpers: tiny generated ImageFolders, tiny-model flags, and running the scripts for real."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convit.run_log import log_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's convit, even when another one is pip-installed
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# A ConViT small enough for a CPU test: 16x16 images, 4 patches, width 32, 2 blocks (1 GPSA).
TINY_MODEL = [
    "--model",
    "convit_tiny",
    "--img-size",
    "16",
    "--patch-size",
    "8",
    "--in-chans",
    "3",
    "--embed-dim",
    "32",
    "--num-heads",
    "4",
    "--depth",
    "2",
    "--local-up-to-layer",
    "1",
    "--num-workers",
    "0",
    "--progress",
    "false",
]
# No random augmentation, so that runs are comparable image for image.
NO_AUG = [
    "--aa",
    "none",
    "--color-jitter",
    "0",
    "--scale",
    "1,1",
    "--ratio",
    "1,1",
    "--hflip",
    "0",
    "--reprob",
    "0",
    "--mixup",
    "0",
    "--cutmix",
    "0",
    "--smoothing",
    "0",
    "--drop-path",
    "0",
]
COLORS = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]


def make_image_folder(root: Path, n_train, n_val, size: int = 16, seed: int = 0) -> Path:
    """root/{train,val}/class_k/*.jpg; n_train / n_val are counts per class (ints or lists)."""
    rng = np.random.default_rng(seed)
    n_train = n_train if isinstance(n_train, (list, tuple)) else [n_train] * len(COLORS)
    n_val = n_val if isinstance(n_val, (list, tuple)) else [n_val] * len(COLORS)
    for split, counts in (("train", n_train), ("val", n_val)):
        for k, count in enumerate(counts):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(np.array(COLORS[k]) + rng.normal(0, 40, (size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def run_script(script: str, args, nproc: int = 1, check: bool = True, timeout: int = 240, cwd: Path = ROOT):
    """Run train.py / eval.py in a real process (from ``cwd``), or under torchrun with `nproc` gloo processes."""
    if nproc == 1:
        cmd = [sys.executable, str(ROOT / script)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            str(ROOT / script),
        ]
    proc = subprocess.run(
        cmd + [str(a) for a in args], cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_module(module: str, args, timeout: int = 240):
    """Run `python -m module args` in a real process (never raises on a non-zero exit)."""
    cmd = [sys.executable, "-m", module, *[str(a) for a in args]]
    return subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout)


def read_log(out_dir: Path) -> list:
    """Every row of a run folder's log.jsonl."""
    return log_rows(out_dir)


@pytest.fixture(scope="session")
def folder(tmp_path_factory) -> Path:
    """3 classes, 8 training and 7 validation images each: 24 train, 21 (odd) val."""
    return make_image_folder(tmp_path_factory.mktemp("imgs"), n_train=8, n_val=7)


def fails_in_one_line(capsys, prog, main, *args) -> str:
    """Call an entry point's ``main`` as its command does; assert exit 2 and one ``prog: error:`` line."""
    from convit.errors import run_entry_point

    with pytest.raises(SystemExit) as exit_info:
        run_entry_point(prog, main, *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]
