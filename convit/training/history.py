"""Checkpoint history of a run (the best K epochs by validation top-1, every N-th epoch) and weight averaging.

    python train.py --checkpoint-hist 3 --save-every 10           # epoch_N.pth beside last.pth and best.pth
    python -m convit.training.history out/run --output out/run/avg.pth --best 3

``epoch_N.pth`` (N counted from 0, as log.jsonl and the progress lines count) holds the weights of that epoch in
``best.pth``'s form; eval.py, predict.py and the locality command read it. Averaging follows timm's
``avg_checkpoints.py``: each floating tensor of the state dicts summed in float64 and divided by their number.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from ..errors import UserError, run_entry_point
from ..run_log import EPOCH_FILE, kept_checkpoints
from ..weights import extract_state_dict, is_training_checkpoint, read_checkpoint
from .checkpoint import best_weights, save_checkpoint


def epoch_file(out: Path, epoch: int) -> Path:
    """The history file of ``epoch`` (counted from 0, as everywhere): ``epoch_{epoch}.pth``."""
    return Path(out) / f"epoch_{epoch}.pth"


def kept_epochs(log: list[dict], checkpoint_hist: int | None, save_every: int) -> set[int]:
    """The 0-based epochs to keep: the best ``checkpoint_hist`` by val_acc1 (earlier first on ties), and every
    ``save_every``-th epoch."""
    kept = set()
    if checkpoint_hist:
        ranked = sorted(log, key=lambda r: (-r["val_acc1"], r["epoch"]))
        kept |= {r["epoch"] for r in ranked[:checkpoint_hist]}
    if save_every:
        kept |= {r["epoch"] for r in log if (r["epoch"] + 1) % save_every == 0}
    return kept


def keep_history(out: Path, log: list[dict], last: dict, checkpoint_hist: int | None, save_every: int) -> list[Path]:
    """At an epoch's end: write this epoch's file if it is kept, remove the epoch files no longer kept.

    ``last`` is the epoch's checkpoint (as in last.pth); the kept files are returned in epoch order.
    """
    out = Path(out)
    kept = kept_epochs(log, checkpoint_hist, save_every)
    current = log[-1]["epoch"]
    if current in kept:
        save_checkpoint(best_weights(last), epoch_file(out, current))
    for f in out.glob("epoch_*.pth"):
        m = EPOCH_FILE.match(f.name)
        if m and int(m.group(1)) not in kept:
            f.unlink(missing_ok=True)
    return [epoch_file(out, e) for e in sorted(kept) if epoch_file(out, e).exists()]


def average_state_dicts(state_dicts: list[dict]) -> dict:
    """timm's average: floating tensors summed in float64 and divided by their number, cast back to their dtype;
    other tensors (integer buffers) taken from the last state dict. Every dict must hold the same keys and shapes."""
    if not state_dicts:
        raise UserError("nothing to average: no checkpoint")
    keys = list(state_dicts[-1])
    for sd in state_dicts:
        if set(sd) != set(keys):
            raise UserError("the checkpoints hold different parameters; average checkpoints of one model only")
    average = {}
    for k in keys:
        ref = state_dicts[-1][k]
        if any(sd[k].shape != ref.shape for sd in state_dicts):
            raise UserError(f"parameter {k} has different shapes in the checkpoints; average one model's only")
        if ref.is_floating_point():
            total = sum(sd[k].to(torch.float64) for sd in state_dicts)
            average[k] = (total / len(state_dicts)).to(ref.dtype)
        else:
            average[k] = ref.clone()
    return average


def select(files: list[Path], best: int | None) -> list[Path]:
    """``files``, or the ``best`` of them by their recorded val_acc1 (ours record it)."""
    if not best:
        return files
    scored = []
    for f in files:
        ckpt = read_checkpoint(f)
        if "val_acc1" not in ckpt:
            raise UserError(f"'{f}' records no val_acc1 to rank by; drop --best or pass train.py's checkpoints")
        scored.append((-float(ckpt["val_acc1"]), int(ckpt.get("epoch", 0)), str(f), f))
    return [f for *_, f in sorted(scored)[:best]]


def average_checkpoints(files: list[Path], use_ema: bool = False) -> dict:
    """A checkpoint holding the average of ``files``' weights, with the last file's metadata (eval.py reads it)."""
    checkpoints = [read_checkpoint(f) for f in files]
    average = average_state_dicts([extract_state_dict(c, use_ema=use_ema) for c in checkpoints])
    base = checkpoints[-1]
    if is_training_checkpoint(base):
        result = {k: v for k, v in best_weights(base).items() if k not in ("model_ema", "val_acc1", "metric")}
        result["model"] = average
        result["averaged_from"] = [str(f) for f in files]
        return result
    return average


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m convit.training.history",
        description="Average checkpoints (timm's avg_checkpoints semantics) into one eval.py reads.",
        allow_abbrev=False,
    )
    p.add_argument("inputs", nargs="+", metavar="PATH", help="checkpoint files, or a run folder (its epoch_N.pth)")
    p.add_argument("--output", required=True, metavar="PATH", help="the averaged checkpoint to write")
    p.add_argument("--best", type=int, metavar="K", help="average only the K best by val_acc1; default: all")
    p.add_argument("--use-ema", action="store_true", help="average the EMA weights")
    return p.parse_args(argv)


def main(args) -> Path:
    """Check the inputs, average them, write ``--output`` (never over an input)."""
    files = []
    for item in map(Path, args.inputs):
        if item.is_dir():
            found = kept_checkpoints(item)
            if not found:
                raise UserError(f"'{item}' holds no epoch_N.pth; train with --checkpoint-hist K or --save-every N")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"'{item}' not found")
    if args.best is not None and args.best < 1:
        raise UserError(f"--best must be at least 1, not {args.best}")
    out = Path(args.output)
    if out.is_dir():
        raise UserError(f"--output '{out}' is a folder; name a file, e.g. {out / 'avg.pth'}")
    if out.resolve() in {f.resolve() for f in files}:
        raise UserError(f"--output '{out}' is one of the inputs; name another file")
    files = select(files, args.best)
    save_checkpoint(average_checkpoints(files, args.use_ema), out)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"averaged {len(files)} checkpoint(s) into {out}: " + ", ".join(f.name for f in files), flush=True)
    return out


def cli() -> None:
    """``python -m convit.training.history``."""
    run_entry_point("history", lambda: main(parse_args()))


if __name__ == "__main__":
    cli()
