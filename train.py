#!/usr/bin/env python
"""Train a ConViT, on one process or many under torchrun.

    python train.py                                        # small ConViT on the digits, CPU, minutes
    python train.py --config configs/convit_small_in1k.yaml --data-path /data/imagenet
    torchrun --nproc_per_node=8 train.py --config configs/convit_small_in1k.yaml --data-path /data/imagenet

Writes OUTPUT_DIR/{config.yaml, log.jsonl, last.pth, best.pth}. `--resume auto` continues from last.pth.
"""

import json
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler
from torch.nn.parallel import DistributedDataParallel

from convit.errors import run_entry_point
from convit.locality import epoch_locality
from convit.training.checkpoint import FORMAT, save_checkpoint, training_state
from convit.training.config import Config, parse_args, save_yaml, to_dict
from convit.training.data import build_loaders
from convit.training.distributed import barrier, cleanup, init_distributed
from convit.training.engine import (
    build_criterion,
    build_mixup,
    evaluate,
    model_kwargs,
    seed_everything,
    train_one_epoch,
)
from convit.variants import create_model
from convit.weights import load_weights, read_checkpoint


def resume_path(cfg: Config):
    """The checkpoint to resume from, or None. "auto" means OUTPUT_DIR/last.pth when it exists."""
    if cfg.resume == "auto":
        last = Path(cfg.output_dir) / "last.pth"
        return last if last.is_file() else None
    return cfg.resume


def read_log(path: Path, before_epoch: int) -> list:
    """Log lines of epochs already done (a resumed run rewrites anything later)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] < before_epoch]


def main(cfg: Config) -> None:
    dist = init_distributed()
    device = dist.device
    amp_dtype = getattr(torch, cfg.amp_dtype) if cfg.amp and device.type == "cuda" else None
    out = Path(cfg.output_dir)

    # data
    loaders = build_loaders(cfg, dist.rank, dist.world_size, pin_memory=device.type == "cuda")

    # model, optimizer, schedule: identical initial weights on every rank
    seed_everything(cfg.seed)
    kwargs = model_kwargs(cfg)
    model = create_model(cfg.model, loaders.num_classes, **kwargs).to(device)
    global_batch = cfg.batch_size * dist.world_size
    lr = cfg.lr * global_batch / cfg.lr_base_batch if cfg.lr_base_batch else cfg.lr
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr,
        min_lr=cfg.min_lr,
        step_on_epochs=True,
    )
    loss_scaler = NativeScaler(device=device.type) if amp_dtype == torch.float16 else None

    # resume: weights, optimizer, schedule, scaler, EMA and epoch (the sampler is seeded by epoch)
    path = resume_path(cfg)
    state = training_state(read_checkpoint(path)) if path else None
    if state:
        load_weights(model, state["model"], f"checkpoint '{path}'")
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None  # copies the weights
    start_epoch, best_acc1, num_updates = 0, -1.0, 0
    if state:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if loss_scaler is not None and state.get("scaler"):
            loss_scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("model_ema"):
            load_weights(ema.module, state["model_ema"], f"EMA weights in '{path}'")
        start_epoch = state["sampler"]["epoch"]
        best_acc1, num_updates = state["best_acc1"], state["num_updates"]

    ddp_model = model
    if dist.distributed:
        ddp_model = DistributedDataParallel(model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    mixup_fn = build_mixup(cfg, loaders.num_classes)
    criterion = build_criterion(cfg, mixup_active=mixup_fn is not None)

    log_path = out / "log.jsonl"
    log = read_log(log_path, start_epoch) if path else []
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, out / "config.yaml")
        log_path.write_text("".join(json.dumps(r) + "\n" for r in log))
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"{cfg.model} ({n_params / 1e6:.2f}M params), {len(loaders.train.dataset)} train images, "
            f"{dist.world_size} process(es) on {device.type}, global batch {global_batch}, lr {lr:.2e}",
            flush=True,
        )

    # a fixed batch of validation images on which rank 0 logs non-locality and gates every epoch
    locality_images = None
    if dist.is_main and cfg.locality_images > 0:
        val_set = loaders.val.dataset
        locality_images = torch.stack([val_set[i][0] for i in range(min(cfg.locality_images, len(val_set)))]).to(device)

    end_epoch = min(cfg.epochs, start_epoch + cfg.stop_after) if cfg.stop_after else cfg.epochs
    for epoch in range(start_epoch, end_epoch):
        # every epoch's randomness depends only on (seed, epoch, rank): resuming replays it exactly
        loaders.train.sampler.set_epoch(epoch)
        seed_everything(cfg.seed + 100_003 * (epoch + 1) + dist.rank)
        train_stats = train_one_epoch(
            ddp_model,
            loaders.train,
            optimizer,
            criterion,
            device,
            epoch,
            scheduler=scheduler,
            mixup_fn=mixup_fn,
            amp_dtype=amp_dtype,
            loss_scaler=loss_scaler,
            clip_grad=cfg.clip_grad,
            ema=ema,
            num_updates=num_updates,
            world_size=dist.world_size,
            progress=cfg.progress and dist.is_main,
        )
        num_updates = train_stats["num_updates"]
        val_stats = evaluate(model, loaders.val, device, amp_dtype)
        row = {
            "epoch": epoch,
            "lr": train_stats["lr"],
            "train_loss": train_stats["train_loss"],
            **{k: val_stats[k] for k in ("val_loss", "val_acc1", "val_acc5", "val_images")},
        }
        if locality_images is not None:
            row["locality"] = epoch_locality(model, locality_images)
        if ema is not None:
            ema_stats = evaluate(ema.module, loaders.val, device, amp_dtype)
            row.update(val_acc1_ema=ema_stats["val_acc1"], val_acc5_ema=ema_stats["val_acc5"])
        row["epoch_time_s"] = train_stats["train_time_s"]
        row["train_images_per_s"] = train_stats["train_images"] / train_stats["train_time_s"]
        is_best = row["val_acc1"] > best_acc1
        best_acc1 = max(best_acc1, row["val_acc1"])

        if dist.is_main:
            weights = {
                "format": FORMAT,
                "model_name": cfg.model,
                "model_kwargs": kwargs,
                "num_classes": loaders.num_classes,
                "config": to_dict(cfg),
                "model": model.state_dict(),
                "epoch": epoch,
                "val_acc1": row["val_acc1"],
                "best_acc1": best_acc1,
                "model_ema": ema.module.state_dict() if ema is not None else None,
            }
            save_checkpoint(
                {
                    **weights,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": loss_scaler.state_dict() if loss_scaler is not None else None,
                    "sampler": {"epoch": epoch + 1},
                    "num_updates": num_updates,
                },
                out / "last.pth",
            )
            if is_best:
                save_checkpoint(weights, out / "best.pth")
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"epoch {epoch + 1}/{cfg.epochs}  lr {row['lr']:.2e}  train_loss {row['train_loss']:.4f}  "
                f"val_loss {row['val_loss']:.4f}  val_acc1 {row['val_acc1']:.2f}  "
                f"val_acc5 {row['val_acc5']:.2f}  {row['epoch_time_s']:.1f}s  "
                f"{row['train_images_per_s']:.0f} img/s",
                flush=True,
            )
        barrier()
    if dist.is_main:
        print(f"best val_acc1 {best_acc1:.2f}; checkpoints in {out}/", flush=True)
    cleanup()


if __name__ == "__main__":
    run_entry_point("train.py", lambda: main(parse_args()))
