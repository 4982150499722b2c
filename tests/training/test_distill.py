"""DeiT's distillation on the class head: the loss on fixed logits, a frozen teacher, the log, bad teachers."""

import pytest
import torch
import torch.nn.functional as F
from conftest import NO_AUG, TINY_MODEL, fails_in_one_line, read_log
from torch.utils.data import DataLoader, TensorDataset

import train as train_script
from convit.training.checkpoint import build_checkpoint
from convit.training.distill import DistillationLoss, distillation_term
from convit.training.engine import train_one_epoch
from convit.variants import create_model

TINY_KWARGS = dict(patch_size=8, embed_dim=32, num_heads=4, depth=2, local_up_to_layer=1)
S = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
T = torch.tensor([[1.0, 0.0, -2.0], [0.0, 2.5, 1.0]])


def test_soft_distillation_is_deits_formula():
    for tau in (1.0, 3.0):
        p_t = torch.softmax(T / tau, dim=1)
        by_hand = (p_t * (p_t.log() - torch.log_softmax(S / tau, dim=1))).sum() * tau * tau / S.numel()
        assert distillation_term(S, T, "soft", tau).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_hard_distillation_and_the_mix():
    # the teacher's argmax is (0, 1): -log softmax(S)[0, 0] and [1, 1], averaged
    logp = torch.log_softmax(S, dim=1)
    by_hand = -(logp[0, 0] + logp[1, 1]) / 2
    assert distillation_term(S, T, "hard", 1.0).item() == pytest.approx(by_hand.item(), rel=1e-6)
    teacher = torch.nn.Identity()  # "images" are the teacher's logits
    targets = torch.tensor([2, 2])
    loss, parts = DistillationLoss(torch.nn.CrossEntropyLoss(), teacher, "hard", 0.3, 1.0)(T, S, targets)
    base = F.cross_entropy(S, targets)
    assert parts["cls"].item() == pytest.approx(base.item())
    assert parts["distill"].item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert loss.item() == pytest.approx(0.7 * base.item() + 0.3 * by_hand.item(), rel=1e-6)


def test_teacher_is_frozen_in_eval_mode_and_unchanged_by_training():
    torch.manual_seed(0)
    student = create_model("convit_tiny", 3, img_size=16, **TINY_KWARGS)
    teacher = create_model("convit_tiny", 3, img_size=16, drop_rate=0.5, **TINY_KWARGS)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss_fn = DistillationLoss(torch.nn.CrossEntropyLoss(), teacher, "soft", 0.5, 2.0)
    loss_fn.train()  # the teacher stays in eval mode whatever its owner does
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 3, (16,))
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.01)
    stats = train_one_epoch(
        student,
        DataLoader(TensorDataset(x, y), batch_size=8),
        optimizer,
        torch.nn.CrossEntropyLoss(),
        torch.device("cpu"),
        0,
        loss_fn=loss_fn,
    )
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in teacher.parameters())
    expected = 0.5 * stats["train_loss_cls"] + 0.5 * stats["train_loss_distill"]
    assert stats["train_loss"] == pytest.approx(expected, rel=1e-5)


def save_ours(path, num_classes: int):
    """A checkpoint in train.py's format (what --teacher PATH reads)."""
    model = create_model("convit_tiny", num_classes, img_size=16, **TINY_KWARGS)
    torch.save(
        build_checkpoint(model, "convit_tiny", {"img_size": 16, **TINY_KWARGS}, None, num_classes=num_classes), path
    )
    return model


def test_distillation_through_train_logs_both_losses(folder, tmp_path, capsys):
    save_ours(tmp_path / "teacher.pth", 3)
    out = tmp_path / "run"
    argv = ["--data-path", folder, *TINY_MODEL, *NO_AUG, "--epochs", "1", "--batch-size", "8", "--output-dir", out]
    argv += ["--teacher", tmp_path / "teacher.pth", "--distillation-type", "soft", "--locality-images", "0"]
    train_script.main([str(a) for a in argv])
    assert "distillation (soft, alpha 0.5, tau 1.0) from checkpoint" in capsys.readouterr().out
    (row,) = read_log(out)
    assert row["train_loss"] == pytest.approx(0.5 * row["train_loss_cls"] + 0.5 * row["train_loss_distill"], rel=1e-5)


def train_fails(capsys, argv) -> str:
    return fails_in_one_line(capsys, "train.py", train_script.main, [str(a) for a in argv])


def test_bad_teachers_stop_in_one_line_before_anything_is_written(folder, tmp_path, capsys):
    save_ours(tmp_path / "ten.pth", 10)
    out = tmp_path / "out"
    base = ["--data-path", folder, *TINY_MODEL, "--batch-size", "8", "--output-dir", out]
    line = train_fails(capsys, [*base, "--teacher", "resnet_nonsense", "--distillation-type", "hard"])
    assert "unknown teacher 'resnet_nonsense'" in line
    line = train_fails(capsys, [*base, "--teacher", tmp_path / "ten.pth", "--distillation-type", "soft"])
    assert "predicts 10 classes, the data has 3" in line
    line = train_fails(capsys, [*base, "--distillation-type", "soft"])
    assert "needs --teacher" in line
    assert "distillation_alpha must lie in" in train_fails(capsys, [*base, "--distillation-alpha", "1.5"])
    assert "distillation_type must be one of" in train_fails(capsys, [*base, "--distillation-type", "x"])
    assert not out.exists()
