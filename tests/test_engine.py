import math

import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader, TensorDataset

from convit.training.config import parse_args
from convit.training.engine import (
    Progress,
    build_criterion,
    build_mixup,
    build_optimizer,
    evaluate,
    model_kwargs,
    train_one_epoch,
)
from convit.variants import create_model


def test_embed_dim_is_the_total_width():
    model = create_model(
        "convit_tiny", 10, img_size=16, patch_size=8, embed_dim=32, num_heads=4, depth=2, local_up_to_layer=1
    )
    assert model.embed_dim == 32 and model.head.in_features == 32 and len(model.blocks) == 2
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_digits_default_model():
    cfg = parse_args([])
    model = create_model(cfg.model, 10, **model_kwargs(cfg))
    assert model.embed_dim == 96 and model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_evaluate_counts_exactly():
    # the "model" is the identity: inputs are logits, so the expected counts are known
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0], [0, 5.0, 4, 3, 2, 1], [0, 1, 2, 3, 4, 5.0]])
    targets = torch.tensor([0, 2, 0])  # hit top-1; top-5 only; miss both
    loader = DataLoader(TensorDataset(logits, targets), batch_size=2)
    stats = evaluate(torch.nn.Identity(), loader, torch.device("cpu"))
    assert (stats["val_images"], stats["val_correct1"], stats["val_correct5"]) == (3, 1, 2)
    assert stats["val_acc1"] == pytest.approx(100 / 3) and stats["val_acc5"] == pytest.approx(200 / 3)
    expected = torch.nn.functional.cross_entropy(logits, targets).item()
    assert stats["val_loss"] == pytest.approx(expected)


def test_train_one_epoch_learns_and_follows_the_schedule():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    model = torch.nn.Linear(8, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=4, min_lr=0.0, step_on_epochs=False, updates_per_epoch=4
    )
    criterion = torch.nn.CrossEntropyLoss()
    losses, updates = [], 0
    for epoch in range(4):
        stats = train_one_epoch(
            model, loader, optimizer, criterion, torch.device("cpu"), epoch, scheduler=scheduler, num_updates=updates
        )
        updates = stats["num_updates"]
        losses.append(stats["train_loss"])
    assert updates == 16 and stats["train_images"] == 64
    assert losses[-1] < 0.7 * losses[0]
    # the last step (update 15 of 16) ran at epoch 3 + 3/4 of a 4-epoch cosine schedule counted in updates
    assert stats["lr"] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 3.75 / 4)))
    assert evaluate(model, loader, torch.device("cpu"))["val_acc1"] > 90


def test_criterion_and_mixup_choice():
    cfg = parse_args([])
    assert build_mixup(cfg, 10) is None
    assert isinstance(build_criterion(cfg, False), torch.nn.CrossEntropyLoss)
    cfg = parse_args(["--smoothing", "0.1"])
    assert isinstance(build_criterion(cfg, False), LabelSmoothingCrossEntropy)
    cfg = parse_args(["--mixup", "0.8", "--cutmix", "1.0", "--smoothing", "0.1"])
    mixup = build_mixup(cfg, 10)
    assert isinstance(build_criterion(cfg, mixup is not None), SoftTargetCrossEntropy)
    _, soft = mixup(torch.randn(4, 1, 16, 16), torch.arange(4))
    assert soft.shape == (4, 10) and torch.allclose(soft.sum(1), torch.ones(4))


def test_no_local_init_needs_our_models_or_passes_through():
    cfg = parse_args(["--local-init", "false"])
    assert model_kwargs(cfg)["local_init"] is False
    assert "local_init" not in model_kwargs(parse_args([]))


def test_accumulating_two_batches_of_32_equals_one_step_of_64():
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    results = []
    for batch, accum in ((64, 1), (32, 2)):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        loader = DataLoader(TensorDataset(x, y), batch_size=batch)
        stats = train_one_epoch(
            model, loader, optimizer, torch.nn.CrossEntropyLoss(), torch.device("cpu"), 0, accum_steps=accum
        )
        assert stats["num_updates"] == 1
        results.append(model.state_dict())
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-5, atol=1e-6)


def test_optimizer_lr_is_scaled_by_the_global_batch():
    cfg = parse_args(["--lr", "0.008", "--batch-size", "64"])
    model = torch.nn.Linear(2, 2)
    assert build_optimizer(cfg, model, world_size=2).param_groups[0]["lr"] == pytest.approx(0.008 * 128 / 512)
    assert build_optimizer(cfg, model, world_size=1, accum_steps=4).param_groups[0]["lr"] == pytest.approx(
        0.008 * 256 / 512
    )


def test_progress_is_a_log_line_when_stdout_is_not_a_terminal():
    import io

    stream = io.StringIO()
    progress = Progress(10, 8, "epoch 1/3", enabled=True, interval=4, stream=stream)
    for step in range(10):
        progress.update(step, 8, torch.tensor(0.5), 1e-3)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in stream.getvalue()  # steps 4, 8 and the last
    assert lines[-1].startswith("epoch 1/3 step 10/10 (100%)") and "img/s" in lines[-1] and "ETA 0:00:00" in lines[-1]
    assert "loss 0.5000" in lines[0] and "lr 1.00e-03" in lines[0]
