"""Train a ConViT, on one process or many under torchrun.

    convit-train (or python train.py in a clone)                   # configs/digits.yaml, on a CPU
    python train.py --model convit_base --data-path /data/imagenet   # configs/in1k.yaml, the paper's recipe
    torchrun --nproc_per_node=8 train.py --config convit_small_in1k --data-path /data/imagenet

    python train.py --config finetune_in1k_384 --finetune pretrained --data-path /data/imagenet
    python train.py --config transfer_cifar10 --finetune out/in1k/best.pth --data-path /data/cifar10

Writes OUTPUT_DIR/{config.yaml, log.jsonl, summary.csv, last.pth, best.pth}. `--resume auto` continues
from last.pth; a folder holding another run is never overwritten without --overwrite. SIGTERM, SIGUSR1
or Ctrl-C stop the run after the current step with last.pth at the last complete epoch, and exit 3.
"""

import json
import math
import sys
from pathlib import Path

import torch
from timm.utils import ModelEmaV3, NativeScaler
from torch.nn.parallel import DistributedDataParallel

from convit.data import build_loaders, first_images, input_channels, set_epoch
from convit.errors import run_entry_point
from convit.locality import EpochLocality, LocalityError, patch_grid
from convit.training.checkpoint import (
    best_weights,
    build_checkpoint,
    check_resumable,
    repair_run_record,
    save_checkpoint,
    training_state,
    write_log,
)
from convit.training.config import Config, budget, list_configs, resolve, save_yaml, to_dict
from convit.training.distill import DistillationLoss, build_teacher
from convit.training.distributed import barrier, cleanup, init_distributed
from convit.training.engine import (
    RESUME_HINT,
    TrainingDiverged,
    build_criterion,
    build_mixup,
    build_optimizer,
    build_scheduler,
    evaluate,
    model_kwargs,
    nonfinite_parameters,
    scaled_lr,
    seed_everything,
    train_one_epoch,
)
from convit.training.finetune import apply_freeze, load_source, read_source
from convit.training.history import keep_history
from convit.training.preemption import PREEMPTED_EXIT_CODE, Preempted, StopRequest
from convit.training.run_folder import RunLock, check_inputs_apart, check_output_dir, clear_previous_run
from convit.variants import create_model
from convit.weights import CheckpointError, load_weights, read_checkpoint


def resume_path(cfg: Config) -> Path | None:
    """The checkpoint to resume from, or None. "auto" means OUTPUT_DIR/last.pth when it exists."""
    if cfg.resume == "auto":
        last = Path(cfg.output_dir) / "last.pth"
        return last if last.is_file() else None
    return Path(cfg.resume) if cfg.resume else None


# What a resumed run may change: the optimizer's hyperparameters and the schedule are rebuilt from them.
SCHEDULE_KEYS = ("lr", "lr_base_batch", "batch_size", "epochs", "sched", "min_lr", "warmup_lr", "warmup_epochs")
OPTIMIZER_KEYS = ("weight_decay", "momentum", "clip_grad")


def changed_on_resume(state: dict, cfg: Config) -> dict:
    """{key: (before, now)} for the schedule and optimizer values the command line changed."""
    before = state.get("config", {})
    return {
        k: (before[k], getattr(cfg, k))
        for k in SCHEDULE_KEYS + OPTIMIZER_KEYS
        if k in before and before[k] != getattr(cfg, k)
    }


def load_optimizer_state(optimizer, saved: dict) -> None:
    """The saved moments and step counts, under the hyperparameters this run's config gives each group."""
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, values in zip(optimizer.param_groups, hyper):
        group.update(values)


def tensorboard_writer(cfg: Config, out: Path):
    """A SummaryWriter on OUTPUT_DIR/tensorboard when --tensorboard is given, else None."""
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from convit.errors import UserError

        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(out / "tensorboard"))


def epoch_scalars(row: dict) -> dict[str, float]:
    """The TensorBoard scalars of one log row: its numbers, and per block the mean non-locality and (GPSA blocks)
    the mean gate of its ``locality`` entry."""
    scalars = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"}
    locality = row.get("locality") or {}
    for name, key in (("nonlocality", "nonlocality"), ("gate", "gates")):
        for block, heads in enumerate(locality.get(key) or []):
            finite = [h for h in heads if h is not None]  # a non-finite value is logged as null
            if finite:
                scalars[f"{name}/block{block}"] = sum(finite) / len(finite)
    return scalars


def main(argv=None) -> None:
    if "--list-configs" in (sys.argv[1:] if argv is None else argv):
        print("\n".join(list_configs()))
        return
    resolved = resolve(argv)
    cfg = resolved.config
    dist = init_distributed()
    device = dist.device
    amp_dtype = getattr(torch, cfg.amp_dtype) if cfg.amp and device.type == "cuda" else None
    out = Path(cfg.output_dir)
    path = resume_path(cfg)
    # everything below is checked before the first file is written
    check_output_dir(
        cfg.output_dir,
        resuming=cfg.resume is not None,
        overwrite=cfg.overwrite,
        resume_auto=cfg.resume == "auto",
        check_lock=dist.is_main,
    )
    epochs, warmup_epochs = budget(cfg)
    loaders = build_loaders(cfg, dist.rank, dist.world_size, pin_memory=device.type == "cuda")
    check_inputs_apart(cfg, out)

    # model, optimizer, schedule: identical initial weights on every rank
    seed_everything(cfg.seed)
    kwargs = model_kwargs(cfg)
    model = create_model(cfg.model, loaders.num_classes, **kwargs)
    state = training_state(read_checkpoint(path)) if path else None
    finetune_notes, finetuned_from = [], None
    if state:
        check_resumable(state, cfg, loaders.class_names, path)
        load_weights(model, state["model"], f"checkpoint '{path}'")
        broken = nonfinite_parameters(model)
        if broken:
            raise CheckpointError(
                f"--resume {path}: its weights hold NaN or infinity ({broken[0]}), so no run can continue from "
                "it; start over with --overwrite, or resume from a copy saved before the weights diverged"
            )
        finetuned_from = state.get("finetuned_from")  # a resumed fine-tuning run does not reload its source
    elif cfg.finetune:
        source = read_source(cfg)
        finetune_notes = load_source(model, source, loaders.class_names)
        finetuned_from = source.description
    model.to(device)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    apply_freeze(model, cfg.freeze)
    optimizer = build_optimizer(cfg, model, dist.world_size, accum_steps=cfg.accum_steps)
    updates_per_epoch = math.ceil(len(loaders.train) / cfg.accum_steps)
    scheduler = build_scheduler(optimizer, cfg, updates_per_epoch, epochs, warmup_epochs)
    loss_scaler = NativeScaler(device=device.type) if amp_dtype == torch.float16 else None
    teacher = None
    if cfg.distillation_type != "none":
        teacher, teacher_description = build_teacher(cfg, loaders.num_classes, input_channels(cfg))
        teacher.to(device)
        finetune_notes.append(
            f"distillation ({cfg.distillation_type}, alpha {cfg.distillation_alpha}, tau {cfg.distillation_tau}) "
            f"from {teacher_description}"
        )
    writer = tensorboard_writer(cfg, out) if dist.is_main else None

    ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None  # copies the weights
    start_epoch, best_acc1, best_epoch, num_updates = 0, -1.0, None, 0
    resume_changes = {}
    if state:
        resume_changes = changed_on_resume(state, cfg)
        load_optimizer_state(optimizer, state["optimizer"])
        # timm's schedules (plateau aside) are a function of the update count: rebuilt, they follow the config
        if scheduler is not None and state.get("scheduler") and cfg.sched == "plateau":
            scheduler.load_state_dict(state["scheduler"])
        if loss_scaler is not None and state.get("scaler"):
            loss_scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("model_ema"):
            load_weights(ema.module, state["model_ema"], f"EMA weights in '{path}'")
        start_epoch = state["sampler"]["epoch"]
        best_acc1, num_updates = state["best_acc1"], state["num_updates"]
        best_epoch = state.get("best_epoch")

    ddp_model = torch.compile(model) if cfg.compile else model
    if dist.distributed:
        ddp_model = DistributedDataParallel(ddp_model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    mixup_fn = build_mixup(cfg, loaders.num_classes)
    criterion = build_criterion(cfg, mixup_active=mixup_fn is not None)
    loss_fn = None
    if teacher is not None:
        loss_fn = DistillationLoss(
            criterion, teacher, cfg.distillation_type, cfg.distillation_alpha, cfg.distillation_tau
        )

    lock = RunLock(out)
    log: list[dict] = []
    if dist.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        overrides = ", ".join(f"{k}={v}" for k, v in resolved.overrides.items()) or "none"
        print(
            f"{cfg.model}: {n_params / 1e6:.2f}M parameters, model_kwargs {cfg.model_kwargs or '{}'}, "
            f"img_size {cfg.img_size}; recipe {resolved.recipe}; overrides: {overrides}",
            flush=True,
        )
        if finetuned_from:
            print(f"weights from {finetuned_from}" + (" (resumed; not reloaded)" if state else ""), flush=True)
        for note in resolved.notes + finetune_notes:
            print(f"note: {note}", flush=True)
        if resume_changes:
            change = ", ".join(f"{k} {now} (last.pth: {before})" for k, (before, now) in resume_changes.items())
            print(f"note: resuming with {change}; the optimizer and the schedule follow the new values", flush=True)
        print("config: " + json.dumps(to_dict(cfg)), flush=True)
        lock.acquire()
        if lock.note:
            print(f"note: {lock.note}", flush=True)
        if cfg.overwrite:
            clear_previous_run(out)
        if state:
            log, notes = repair_run_record(out, state, start_epoch)
            for note in notes:
                print(f"note: {note}", flush=True)
        else:
            (out / "log.jsonl").write_text("")
        save_yaml(cfg, out / "config.yaml")
        print(
            f"{len(loaders.train.dataset)} train images, {dist.world_size} process(es) on {device.type} "
            f"({f'{cfg.amp_dtype} autocast' if amp_dtype is not None else 'fp32'}), "
            f"global batch {cfg.batch_size * dist.world_size * cfg.accum_steps}, "
            f"lr {scaled_lr(cfg, dist.world_size, cfg.accum_steps):.2e}, "
            f"{epochs} epochs of {len(loaders.train)} steps ({updates_per_epoch} updates)",
            flush=True,
        )

    # rank 0 logs the locality measures of its first validation images, taken from the validation pass itself
    locality = None
    if dist.is_main and cfg.locality_images > 0:
        try:
            patch_grid(model, first_images(loaders.val.dataset, 1)[0][0].shape[-2:])  # a family the measures read
            locality = EpochLocality(model, cfg.locality_images)
        except LocalityError as e:
            print(f"note: no locality measures in the log: {e}", flush=True)

    stop = StopRequest(cfg.stop_signals).install()
    try:
        end_epoch = min(epochs, start_epoch + cfg.stop_after) if cfg.stop_after else epochs
        for epoch in range(start_epoch, end_epoch):
            # every epoch's randomness depends only on (seed, epoch, rank): resuming replays it exactly
            set_epoch(loaders.train, epoch)
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
                accum_steps=cfg.accum_steps,
                loss_fn=loss_fn,
                progress=cfg.progress and dist.is_main,
                log_interval=cfg.log_interval,
                desc=f"epoch {epoch}/{epochs - 1}",
                stop=stop,
            )
            if "stopped" in train_stats:
                raise Preempted(train_stats["stopped"], epoch, train_stats["stopped_at"])
            num_updates = train_stats["num_updates"]
            check_weights(model, ema, epoch)
            val_stats = evaluate(model, loaders.val, device, amp_dtype, locality=locality)
            if not math.isfinite(val_stats["val_loss"]):
                raise TrainingDiverged(
                    f"validation loss is {val_stats['val_loss']} after epoch {epoch}: the model's outputs are "
                    f"not finite; {RESUME_HINT}"
                )
            row = {
                "epoch": epoch,
                "lr": train_stats["lr"],
                "train_loss": train_stats["train_loss"],
                **{k: v for k, v in train_stats.items() if k.startswith("train_loss_")},
                **{k: val_stats[k] for k in ("val_loss", "val_acc1", "val_acc5", "val_images")},
            }
            if locality is not None:
                row["locality"] = locality.entry()
            if ema is not None and ema_evaluated(epoch, epochs, cfg.model_ema_eval_interval):
                ema_stats = evaluate(ema.module, loaders.val, device, amp_dtype)
                row.update(val_acc1_ema=ema_stats["val_acc1"], val_acc5_ema=ema_stats["val_acc5"])
            row["epoch_time_s"] = train_stats["train_time_s"]
            row["train_images_per_s"] = train_stats["train_images"] / train_stats["train_time_s"]
            if row["val_acc1"] > best_acc1:
                best_acc1, best_epoch = row["val_acc1"], epoch
            log.append(row)

            if dist.is_main:
                # the epoch end as one transaction: last.pth (which carries the log and the best epoch) commits
                # it; best.pth, log.jsonl and summary.csv follow and a resume rebuilds them from it
                last = build_checkpoint(
                    model,
                    cfg.model,
                    kwargs,
                    loaders.class_names,
                    config=to_dict(cfg),
                    epoch=epoch,
                    finetuned_from=finetuned_from,
                    val_acc1=row["val_acc1"],
                    metric=row["val_acc1"],
                    best_acc1=best_acc1,
                    best_epoch=best_epoch,
                    model_ema=ema.module if ema is not None else None,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    scaler=loss_scaler,
                    sampler={"epoch": epoch + 1},
                    num_updates=num_updates,
                    log=log,
                )
                save_checkpoint(last, out / "last.pth")
                if best_epoch == epoch:
                    save_checkpoint(best_weights(last), out / "best.pth")
                write_log(out, log)
                keep_history(out, log, last, cfg.checkpoint_hist, cfg.save_every)
                if writer is not None:
                    for key, value in epoch_scalars(row).items():
                        writer.add_scalar(key, value, epoch)
                    writer.flush()
                print(
                    f"epoch {epoch}/{epochs - 1}  lr {row['lr']:.2e}  train_loss {row['train_loss']:.4f}  "
                    f"val_loss {row['val_loss']:.4f}  val_acc1 {row['val_acc1']:.2f}  "
                    f"val_acc5 {row['val_acc5']:.2f}  {row['epoch_time_s']:.1f}s  "
                    f"{row['train_images_per_s']:.0f} img/s",
                    flush=True,
                )
            barrier()
            signum = stop.agreed(device)  # a signal during evaluation or the writes: the epoch is complete
            if signum is not None and epoch + 1 < end_epoch:
                raise Preempted(signum, epoch + 1, None)
        if dist.is_main and best_acc1 >= 0:
            at = f" (epoch {best_epoch})" if best_epoch is not None else ""
            print(f"best val_acc1 {best_acc1:.2f}{at}; checkpoints in {out}/", flush=True)
    except Preempted as p:
        if dist.is_main:
            print(preempted_line(p, out), flush=True)
        exit_code = PREEMPTED_EXIT_CODE
    else:
        exit_code = 0
    finally:
        stop.restore()
        if writer is not None:
            writer.close()
        lock.release()
    cleanup()
    if exit_code:
        sys.exit(exit_code)


def ema_evaluated(epoch: int, epochs: int, interval: int) -> bool:
    """Whether the EMA weights are evaluated after ``epoch`` (0-based): every ``interval`` epochs and after the
    last; an evaluation of the EMA costs as much as the model's, about 1 % of an ImageNet epoch."""
    return (epoch + 1) % interval == 0 or epoch + 1 == epochs


def check_weights(model, ema, epoch: int) -> None:
    """TrainingDiverged if the model's (or the EMA's) weights hold NaN or infinity: nothing is saved then."""
    for name, module in (("weights", model), ("EMA weights", ema.module if ema is not None else None)):
        broken = nonfinite_parameters(module) if module is not None else []
        if broken:
            raise TrainingDiverged(
                f"the {name} hold NaN or infinity after epoch {epoch} ({broken[0]}); nothing of this epoch "
                f"was saved; {RESUME_HINT.removeprefix('nothing of this epoch was saved; ')}"
            )


def preempted_line(p: Preempted, out: Path) -> str:
    """The one line a stopped run prints: what stopped it, what is kept, how to continue."""
    # p.epoch is the number of complete epochs: the index of the one stopped in, or of the next
    where = f"at step {p.step + 1} of epoch {p.epoch}" if p.step is not None else f"after epoch {p.epoch - 1}"
    kept = (
        f"last.pth holds epoch {p.epoch - 1} (a partial epoch is not kept)"
        if p.epoch
        else "no epoch was complete, so the run starts afresh"
    )
    return (
        f"stopped by {p.signal_name} {where}; {kept}; continue with the same command and --resume auto "
        f"(exit code {PREEMPTED_EXIT_CODE})"
    )


def cli() -> None:
    """The ``convit-train`` command (and ``python train.py`` in a clone)."""
    run_entry_point(Path(sys.argv[0]).name if sys.argv[0].endswith(".py") else "convit-train", main)


if __name__ == "__main__":
    cli()
