"""Model construction, one training epoch, and exact distributed evaluation."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .config import Config
from .distributed import all_reduce_sum

_MODEL_KEYS = ("patch_size", "embed_dim", "num_heads", "depth", "mlp_ratio", "local_up_to_layer", "locality_strength")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (DataLoader workers derive their seeds from torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_kwargs(cfg: Config) -> dict:
    """Constructor keywords from the config; None values keep the variant's own setting."""
    kw = dict(img_size=cfg.img_size, in_chans=cfg.in_chans, drop_rate=cfg.drop, drop_path_rate=cfg.drop_path)
    kw.update({k: getattr(cfg, k) for k in _MODEL_KEYS if getattr(cfg, k) is not None})
    if not cfg.local_init:
        kw["local_init"] = False
    return kw


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
    progress: bool = False,
) -> dict:
    """One pass over `loader`; the lr follows `scheduler` at fractional epochs, step by step.

    Returns the global mean training loss, the last lr, image count, time and update count.
    """
    model.train()
    n_steps = len(loader)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_images = 0
    start = time.perf_counter()
    bar = tqdm(
        total=n_steps * loader.batch_size * world_size,
        unit="img",
        unit_scale=True,
        desc=f"epoch {epoch}",
        disable=not progress,
        dynamic_ncols=True,
        leave=False,
    )
    for step, (images, targets) in enumerate(loader):
        if scheduler is not None:
            scheduler.step(epoch + step / n_steps)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        if loss_scaler is not None:
            loss_scaler(loss, optimizer, clip_grad=clip_grad, parameters=model.parameters())
        else:
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        num_updates += 1
        if ema is not None:
            ema.update(model, step=num_updates)
        loss_sum += loss.detach().double() * len(images)
        n_images += len(images)
        bar.update(len(images) * world_size)
        if progress and (step % 10 == 0 or step == n_steps - 1):
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    total_loss, total_images = all_reduce_sum([loss_sum.item(), n_images], device)
    if not math.isfinite(total_loss):
        raise FloatingPointError(f"training loss is {total_loss} in epoch {epoch}; lower --lr or set --clip-grad")
    elapsed = time.perf_counter() - start
    return {
        "train_loss": total_loss / max(total_images, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "train_images": int(total_images),
        "train_time_s": elapsed,
        "num_updates": num_updates,
    }


@torch.no_grad()
def evaluate(model, loader, device, amp_dtype=None) -> dict:
    """Top-1/top-5 accuracy (%) and mean loss, summed exactly over every rank's shard.

    Pass the bare model (not the DDP wrapper): ranks may hold different numbers of batches.
    """
    model.eval()
    loss_sum = correct1 = correct5 = n = 0.0
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == targets[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        n += len(targets)
    loss_sum, correct1, correct5, n = all_reduce_sum([loss_sum, correct1, correct5, n], device)
    denom = max(n, 1)
    return {
        "val_loss": loss_sum / denom,
        "val_acc1": 100.0 * correct1 / denom,
        "val_acc5": 100.0 * correct5 / denom,
        "val_images": int(n),
        "val_correct1": int(correct1),
        "val_correct5": int(correct5),
    }
