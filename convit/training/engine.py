"""Model construction, one training epoch, and exact distributed evaluation."""

from __future__ import annotations

import math
import random
import sys
import time
from contextlib import nullcontext
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import UserError
from .config import Config, ConfigError
from .distributed import all_reduce_sum


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (DataLoader workers derive their seeds from torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_kwargs(cfg: Config) -> dict:
    """Constructor keywords of the run's model: the recipe's model_kwargs, input size and drop rates (of the last
    three, those the model takes: a CNN of timm's has no ``img_size``)."""
    from ..timm_models import takes

    generic = {"img_size": cfg.img_size, "drop_rate": cfg.drop, "drop_path_rate": cfg.drop_path}
    return {**{k: v for k, v in generic.items() if takes(cfg.model, k)}, **cfg.model_kwargs}


def scaled_lr(cfg: Config, world_size: int, accum_steps: int = 1) -> float:
    """The linear scaling rule: lr x global batch / lr_base_batch (0 turns it off)."""
    global_batch = cfg.batch_size * world_size * accum_steps
    return cfg.lr * global_batch / cfg.lr_base_batch if cfg.lr_base_batch else cfg.lr


def build_optimizer(cfg: Config, model: torch.nn.Module, world_size: int, accum_steps: int = 1):
    """timm's optimizer for ``cfg.opt`` at the linearly scaled lr (no weight decay on norms, biases, tokens).

    Frozen parameters (``requires_grad=False``) are left out. With ``cfg.layer_decay`` the groups are
    timm's ``param_groups_layer_decay`` over the model's ``group_matcher``: each carries an ``lr_scale``
    that the scheduler applies at every step (``build_scheduler`` applies it once for ``sched: none``).
    """
    from timm.optim import create_optimizer_v2

    lr = scaled_lr(cfg, world_size, accum_steps)
    gate_lr_scale = getattr(cfg, "gate_lr_scale", 1.0)
    optimizer = create_optimizer_v2(
        model,
        opt=cfg.opt,
        lr=lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        layer_decay=getattr(cfg, "layer_decay", None),
        param_group_fn=None if gate_lr_scale == 1 else partial(_gates_apart, cfg=cfg),
    )
    return optimizer


def scheduled_lr(optimizer) -> float:
    """The schedule's lr now: that of the groups without an lr_scale other than 1 (layer decay scales the
    others down, gate_lr_scale the gates up)."""
    plain = [g["lr"] for g in optimizer.param_groups if g.get("lr_scale", 1.0) == 1.0]
    return max(plain or [g["lr"] for g in optimizer.param_groups])


def _gates_apart(model: torch.nn.Module, cfg: Config) -> list[dict]:
    """timm's parameter groups (weight decay, layer decay) with the GPSA gating parameters moved into groups
    of their own whose ``lr_scale`` is multiplied by ``cfg.gate_lr_scale``."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    if getattr(cfg, "layer_decay", None):
        groups = param_groups_layer_decay(
            model, weight_decay=cfg.weight_decay, no_weight_decay_list=skip, layer_decay=cfg.layer_decay
        )
    else:
        groups = param_groups_weight_decay(model, weight_decay=cfg.weight_decay, no_weight_decay_list=skip)
    gates = {id(p) for name, p in model.named_parameters() if name.endswith("gating_param") and p.requires_grad}
    if not gates:
        raise ConfigError(f"gate_lr_scale {cfg.gate_lr_scale} has no trainable GPSA gate to scale in this model")
    split = []
    for group in groups:
        rest = [p for p in group["params"] if id(p) not in gates]
        moved = [p for p in group["params"] if id(p) in gates]
        if rest:
            split.append({**group, "params": rest})
        if moved:
            split.append({**group, "params": moved, "lr_scale": group.get("lr_scale", 1.0) * cfg.gate_lr_scale})
    return split


def build_scheduler(optimizer, cfg: Config, updates_per_epoch: int, epochs: int, warmup_epochs: float):
    """timm's scheduler counted in updates: ``step_update(num_updates)`` before every optimizer step."""
    from timm.scheduler import create_scheduler_v2

    if cfg.sched == "none":
        for group in optimizer.param_groups:  # layer decay's scales, which a scheduler would apply
            group["lr"] *= group.get("lr_scale", 1.0)
        return None
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=epochs,
        warmup_epochs=warmup_epochs,
        warmup_lr=cfg.warmup_lr,
        min_lr=cfg.min_lr,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def build_criterion(cfg: Config, mixup_active: bool) -> torch.nn.Module:
    """Soft-target loss under mixup/cutmix, label smoothing, or plain cross-entropy."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_active:
        return SoftTargetCrossEntropy()  # mixup already smooths the targets
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return torch.nn.CrossEntropyLoss()


def build_mixup(cfg: Config, num_classes: int):
    """timm's Mixup/CutMix, or None when both are off."""
    from timm.data import Mixup

    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=cfg.mixup,
        cutmix_alpha=cfg.cutmix,
        prob=cfg.mixup_prob,
        switch_prob=cfg.mixup_switch_prob,
        mode=cfg.mixup_mode,
        label_smoothing=cfg.smoothing,
        num_classes=num_classes,
    )


class Progress:
    """A tqdm bar on a terminal; otherwise (a cluster job's log) one line every ``interval`` steps and at the end.

    Each line holds the step, the image rate, the ETA of the epoch, the loss and the lr.
    """

    def __init__(
        self, total_steps: int, images_per_step: int, desc: str, enabled: bool, interval: int = 50, stream=None
    ):
        self.total, self.images_per_step, self.desc = total_steps, images_per_step, desc
        self.images = 0
        self.enabled, self.interval = enabled, interval
        self.stream = stream or sys.stdout
        self.start = time.perf_counter()
        self.bar = None
        if enabled and self.stream.isatty():
            self.bar = tqdm(total=total_steps * images_per_step, unit="img", unit_scale=True, desc=desc, leave=False)

    def update(self, step: int, images: int, loss: torch.Tensor, lr: float) -> None:
        """Record that ``step`` (0-based) of ``images`` images is done; ``loss`` is read only when shown."""
        if not self.enabled:
            return
        done = step + 1
        self.images += images
        if self.bar is not None:
            self.bar.update(images)
            if step % 10 == 0 or done == self.total:
                self.bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
        elif done % self.interval == 0 or done == self.total:
            elapsed = time.perf_counter() - self.start
            rate = self.images / max(elapsed, 1e-9)
            eta = elapsed / done * (self.total - done)
            print(
                f"{self.desc} step {done}/{self.total} ({100 * done / self.total:.0f}%)  {rate:.0f} img/s  "
                f"ETA {_clock(eta)}  loss {loss.item():.4f}  lr {lr:.2e}",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_one_epoch(
    model,
    loader,
    optimizer,
    criterion,
    device,
    epoch: int,
    *,
    scheduler=None,
    mixup_fn=None,
    amp_dtype=None,
    loss_scaler=None,
    clip_grad=None,
    ema=None,
    num_updates: int = 0,
    world_size: int = 1,
    accum_steps: int = 1,
    loss_fn=None,
    progress: bool = False,
    log_interval: int = 50,
    desc: str | None = None,
    stop=None,
) -> dict:
    """One pass over ``loader``: the step loop of every training in this project.

    Every ``accum_steps`` batches make one update (the loss is averaged over them; DDP syncs only on
    the last); the scheduler is stepped in updates (``step_update``) and the EMA once per update.
    ``loss_fn(images, outputs, targets) -> (loss, {name: part})``, when given, replaces
    ``criterion(outputs, targets)`` (distillation needs the images); each part's global mean is
    returned as ``train_loss_<name>``.
    A non-finite loss is found at the step where it appears (checked on the host every ``log_interval``
    steps, so the device is not synchronised per step) and raises TrainingDiverged naming that step.
    ``stop`` (a StopRequest), when given, is asked after every step; once it answers, the epoch ends
    early and the result holds ``stopped`` (the signal) and ``stopped_at`` (the step).
    Returns the global mean training loss, each step's loss, the largest lr of the last step (the
    top layer's under layer decay), image count, time and update count.
    """
    model.train()
    n_steps = len(loader)
    if n_steps == 0:
        raise FloatingPointError("the training loader yields no batch")
    step_losses = []
    part_sums: dict = {}
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_images = 0
    start = time.perf_counter()
    bar = Progress(n_steps, (loader.batch_size or 0) * world_size, desc or f"epoch {epoch}", progress, log_interval)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    optimizer.zero_grad(set_to_none=True)
    for step, (images, targets) in enumerate(loader):
        last_micro = (step + 1) % accum_steps == 0 or step == n_steps - 1
        group = min(accum_steps, n_steps - step // accum_steps * accum_steps)  # the last group may be short
        if scheduler is not None and step % accum_steps == 0:
            scheduler.step_update(num_updates)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        sync = nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                if loss_fn is None:
                    loss = criterion(model(images), targets)
                else:
                    loss, parts = loss_fn(images, model(images), targets)
                    for name, value in parts.items():
                        part_sums[name] = part_sums.get(name, 0.0) + value.detach().double() * len(images)
            scaled = loss / group if group > 1 else loss
            if loss_scaler is not None:
                loss_scaler(
                    scaled,
                    optimizer,
                    clip_grad=clip_grad,
                    parameters=model.parameters(),
                    need_update=last_micro,
                )
            else:
                scaled.backward()
        if last_micro:
            if loss_scaler is None:
                if clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            if ema is not None:
                ema.update(model, step=num_updates)
        step_losses.append(loss.detach())
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
        loss_sum += loss.detach().double() * len(images)
        n_images += len(images)
        if (step + 1) % log_interval == 0 or step == n_steps - 1:
            _check_finite(first_bad, step_losses, epoch, n_steps)
        bar.update(step, len(images) * world_size, loss, scheduled_lr(optimizer))
        signum = stop.at_step(step, device) if stop is not None else None
        if signum is not None:
            bar.close()
            _check_finite(first_bad, step_losses, epoch, n_steps)
            return {"stopped": signum, "stopped_at": step, "num_updates": num_updates}
    bar.close()
    names = sorted(part_sums)
    total_loss, total_images, *part_totals = all_reduce_sum(
        [loss_sum.item(), n_images, *(float(part_sums[k]) for k in names)], device
    )
    if not math.isfinite(total_loss):
        raise TrainingDiverged(f"training loss is {total_loss} in epoch {epoch}; {RESUME_HINT}")
    elapsed = time.perf_counter() - start
    return {
        "train_loss": total_loss / max(total_images, 1),
        "step_losses": torch.stack(step_losses).float().tolist(),
        "lr": scheduled_lr(optimizer),
        **{f"train_loss_{k}": v / max(total_images, 1) for k, v in zip(names, part_totals)},
        "train_images": int(total_images),
        "train_time_s": elapsed,
        "num_updates": num_updates,
    }


class TrainingDiverged(UserError):
    """The loss or the weights stopped being finite; nothing of the epoch is saved."""


RESUME_HINT = "nothing of this epoch was saved; run again with a lower --lr or with --clip-grad (--resume auto continues from the last complete epoch)"


def _check_finite(first_bad: torch.Tensor, step_losses: list, epoch: int, n_steps: int) -> None:
    """Raise TrainingDiverged if a step's loss was not finite (one host sync)."""
    step = int(first_bad.item())
    if step >= 0:
        value = float(step_losses[step])
        raise TrainingDiverged(f"training loss is {value} at step {step + 1}/{n_steps} of epoch {epoch}; {RESUME_HINT}")


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers holding a NaN or an infinity (one host sync)."""
    named = [(n, t) for n, t in model.state_dict().items() if t.is_floating_point()]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [n for (n, _), ok in zip(named, flags) if not ok]


@torch.no_grad()
def evaluate(model, loader, device, amp_dtype=None, num_classes: int | None = None, locality=None) -> dict:
    """Top-1/top-5 accuracy (%) and mean loss, summed exactly over every rank's shard; with ``num_classes``, also
    the confusion matrix (``"confusion"``: rows true class, columns top-1 prediction, int64). With ``locality``
    (a ``convit.locality.EpochLocality``), its first images go through ``locality.forward``, which records
    their attention: the measures ride on this pass.

    Pass the bare model (not the DDP wrapper): ranks may hold different numbers of batches.
    """
    model.eval()
    # summed on the device and read once at the end: no device synchronisation per batch
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    cells = (num_classes or 0) ** 2
    confusion = torch.zeros(cells, dtype=torch.int64, device=device)
    n = 0
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        head = min(locality.wanted, len(images)) if locality is not None else 0
        outputs = [locality.forward(images[:head]).float()] if head else []
        if head < len(images):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs.append(model(images[head:]).float())
        logits = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == targets[:, None]
        sums += torch.stack(
            [F.cross_entropy(logits, targets, reduction="sum"), hits[:, 0].sum(), hits.any(dim=1).sum()]
        ).double()
        if cells:
            confusion += torch.bincount(targets * num_classes + top[:, 0], minlength=cells)
        n += len(targets)
    loss_sum, correct1, correct5 = sums.tolist()
    loss_sum, correct1, correct5, n, *counts = all_reduce_sum(
        [loss_sum, correct1, correct5, n, *confusion.tolist()], device
    )
    denom = max(n, 1)
    stats = {
        "val_loss": loss_sum / denom,
        "val_acc1": 100.0 * correct1 / denom,
        "val_acc5": 100.0 * correct5 / denom,
        "val_images": int(n),
        "val_correct1": int(correct1),
        "val_correct5": int(correct5),
    }
    if cells:
        stats["confusion"] = torch.tensor([int(round(c)) for c in counts], dtype=torch.int64).view(num_classes, -1)
    return stats
