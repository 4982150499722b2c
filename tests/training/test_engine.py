import math

import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader, TensorDataset

from convit.training.config import parse_args
from convit.training.engine import (
    Progress,
    TrainingDiverged,
    build_criterion,
    build_mixup,
    build_optimizer,
    build_scheduler,
    evaluate,
    model_kwargs,
    nonfinite_parameters,
    scheduled_lr,
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


def test_evaluate_takes_the_locality_measures_from_its_own_pass():
    """With an EpochLocality, the first images' attention is recorded from the validation forward itself: the
    same statistics as without it, and the entry epoch_locality gives on those images."""
    from convit.locality import EpochLocality, epoch_locality

    torch.manual_seed(0)
    model = create_model(
        "convit_tiny", 3, img_size=16, patch_size=4, embed_dim=32, num_heads=4, depth=2, local_up_to_layer=1
    )
    x, y = torch.randn(10, 3, 16, 16), torch.randint(0, 3, (10,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    locality = EpochLocality(model, 6)  # one whole batch and half of the next
    plain = evaluate(model, loader, torch.device("cpu"), num_classes=3)
    measured = evaluate(model, loader, torch.device("cpu"), num_classes=3, locality=locality)
    assert torch.equal(plain.pop("confusion"), measured.pop("confusion"))
    assert measured == pytest.approx(plain, rel=1e-5)
    entry, expected = locality.entry(), epoch_locality(model, x[:6])
    for key, value in expected.items():
        got, want = torch.tensor(entry[key], dtype=torch.float64), torch.tensor(value, dtype=torch.float64)
        assert torch.allclose(got, want, atol=1e-5, equal_nan=True), key


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
    progress = Progress(10, 8, "epoch 0/2", enabled=True, interval=4, stream=stream)
    for step in range(10):
        progress.update(step, 8, torch.tensor(0.5), 1e-3)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in stream.getvalue()  # steps 4, 8 and the last
    assert lines[-1].startswith("epoch 0/2 step 10/10 (100%)") and "img/s" in lines[-1] and "ETA 0:00:00" in lines[-1]
    assert "loss 0.5000" in lines[0] and "lr 1.00e-03" in lines[0]


@pytest.mark.parametrize("layer_decay", [[], ["--layer-decay", "0.5"]], ids=["plain", "layer-decay"])
def test_gate_lr_scale_moves_only_the_gates_to_a_faster_group(layer_decay):
    """The gates get lr x gate_lr_scale after a scheduler step; every other parameter keeps its group's lr and
    weight decay exactly as without the scale (timm's grouping: no decay on pos_embed, cls_token, 1-d)."""

    def lrs(args):
        cfg = parse_args([*args, "--lr", "0.008", "--warmup-epochs", "0", "--min-lr", "0", *layer_decay])
        torch.manual_seed(0)
        model = create_model(cfg.model, 10, img_size=16, **cfg.model_kwargs)
        optimizer = build_optimizer(cfg, model, world_size=1)
        build_scheduler(optimizer, cfg, updates_per_epoch=4, epochs=2, warmup_epochs=0).step_update(4)
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        assert len(group_of) == sum(1 for _ in model.parameters())
        lr = {n: (group_of[id(p)]["lr"], group_of[id(p)]["weight_decay"]) for n, p in model.named_parameters()}
        return {**lr, "_logged": scheduled_lr(optimizer)}

    plain, scaled = lrs([]), lrs(["--gate-lr-scale", "10"])
    assert scaled.pop("_logged") == plain.pop("_logged") == pytest.approx(plain["head.weight"][0])
    gates = [n for n in plain if n.endswith("gating_param")]
    assert len(gates) == 4 and plain["pos_embed"][1] == 0 and plain["blocks.0.attn.qk.weight"][1] == 0.05
    for name, (lr, decay) in plain.items():
        if name in gates:
            assert scaled[name] == (pytest.approx(10 * lr), decay)
        else:
            assert scaled[name] == (pytest.approx(lr), decay), name
    assert plain["head.weight"][0] == pytest.approx(0.008 * 64 / 512 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_gate_lr_scale_needs_trainable_gates():
    from convit.training.config import ConfigError

    with pytest.raises(ConfigError, match="nothing to scale with freeze: gates"):
        parse_args(["--gate-lr-scale", "10", "--freeze", "gates"])
    cfg = parse_args(["--gate-lr-scale", "10", "--local-up-to-layer", "0"])
    with pytest.raises(ConfigError, match="no trainable GPSA gate"):
        build_optimizer(cfg, create_model(cfg.model, 10, img_size=16, **cfg.model_kwargs), world_size=1)


def test_the_last_short_accumulation_group_is_weighted_by_its_batches():
    """3 batches with accum_steps 2: the second update holds one batch and must be that batch's own step."""
    torch.manual_seed(0)
    x, y = torch.randn(48, 8), torch.randint(0, 2, (48,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = torch.nn.Linear(8, 2)
    reference = torch.nn.Linear(8, 2)
    reference.load_state_dict(model.state_dict())
    criterion = torch.nn.CrossEntropyLoss()
    train_one_epoch(
        model, loader, torch.optim.SGD(model.parameters(), lr=0.1), criterion, torch.device("cpu"), 0, accum_steps=2
    )
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for chunk in (slice(0, 32), slice(32, 48)):  # the pair as one batch of 32, then the last batch alone
        optimizer.zero_grad()
        criterion(reference(x[chunk]), y[chunk]).backward()
        optimizer.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)


def test_a_non_finite_loss_names_its_step():
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    x[40] = float("nan")  # the sample in step 3 of 4
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = torch.nn.Linear(8, 2)
    with pytest.raises(TrainingDiverged, match=r"training loss is nan at step 3/4 of epoch 0; nothing of this epoch"):
        train_one_epoch(
            model,
            loader,
            torch.optim.SGD(model.parameters(), lr=0.1),
            torch.nn.CrossEntropyLoss(),
            torch.device("cpu"),
            0,
            log_interval=50,
        )
    assert nonfinite_parameters(model) == ["weight", "bias"]
