"""DeiT's knowledge distillation (Touvron et al. 2021), soft and hard, on ConViT's class head.

ConViT has no distillation token, so the teacher's logits supervise the one class head:

    loss = (1 - alpha) * base(student, targets) + alpha * distill(student, teacher)
    soft:  KL(log_softmax(s / T) || log_softmax(t / T)), summed, x T^2 / numel(s)
    hard:  cross_entropy(s, argmax(t))

as in DeiT's ``losses.DistillationLoss``. The teacher is frozen, in eval mode, and its logits are
computed under ``no_grad`` on the same (possibly mixed) images as the student's.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError, first_line
from .config import Config


class DistillationError(UserError):
    """A teacher that cannot be built or does not fit the data."""


def distillation_term(student: torch.Tensor, teacher: torch.Tensor, kind: str, tau: float) -> torch.Tensor:
    """DeiT's soft or hard distillation loss of ``student`` logits against ``teacher`` logits."""
    if kind == "soft":
        T = tau
        return (
            F.kl_div(
                F.log_softmax(student / T, dim=1),
                F.log_softmax(teacher / T, dim=1),
                reduction="sum",
                log_target=True,
            )
            * (T * T)
            / student.numel()
        )
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=1))
    raise ValueError(f"distillation type must be 'soft' or 'hard', not {kind!r}")


class DistillationLoss(torch.nn.Module):
    """``(images, outputs, targets) -> (loss, {"cls": base, "distill": distillation})`` for the engine's loop."""

    def __init__(self, base: torch.nn.Module, teacher: torch.nn.Module, kind: str, alpha: float, tau: float):
        super().__init__()
        self.base, self.kind, self.alpha, self.tau = base, kind, alpha, tau
        self.teacher = freeze_teacher(teacher)

    def train(self, mode: bool = True):  # the teacher stays in eval mode whatever its owner does
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, images: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor):
        base = self.base(outputs, targets)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        distill = distillation_term(outputs.float(), teacher_logits.float(), self.kind, self.tau)
        loss = (1 - self.alpha) * base + self.alpha * distill
        return loss, {"cls": base.detach(), "distill": distill.detach()}


def freeze_teacher(teacher: torch.nn.Module) -> torch.nn.Module:
    """The teacher in eval mode with every parameter frozen."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def build_teacher(cfg: Config, num_classes: int, in_chans: int) -> tuple[torch.nn.Module, str]:
    """(teacher, a description) from ``cfg.teacher``: a checkpoint written by train.py, or a timm model name.

    A named teacher is created with timm's pretrained weights only when ``teacher_pretrained`` is set
    (else it gets the data's number of classes and random weights). Its number of classes must be the data's.
    """
    if Path(cfg.teacher).is_file():
        from ..weights import CheckpointError, model_from_checkpoint

        try:
            teacher, _ = model_from_checkpoint(cfg.teacher)
        except CheckpointError as e:
            raise DistillationError(
                f"teacher '{cfg.teacher}': {e}; a teacher file must be a checkpoint written by train.py"
            ) from None
        description = f"checkpoint '{cfg.teacher}'"
    else:
        import timm

        kwargs = {"in_chans": in_chans}
        if not cfg.teacher_pretrained:
            kwargs["num_classes"] = num_classes
        try:
            teacher = timm.create_model(cfg.teacher, pretrained=cfg.teacher_pretrained, **kwargs)
        except (RuntimeError, OSError, ValueError) as e:
            first = first_line(e)
            raise DistillationError(
                f"teacher '{cfg.teacher}' could not be created ({first}); without a network, train a teacher "
                "with train.py and pass its best.pth as --teacher"
            ) from None
        description = f"timm '{cfg.teacher}'" + (" (pretrained)" if cfg.teacher_pretrained else " (random init)")
    classes = getattr(teacher, "num_classes", None)
    if classes != num_classes:
        raise DistillationError(
            f"teacher {description} predicts {classes} classes, the data has {num_classes}; "
            "use a teacher trained on these classes"
        )
    check_teacher_input(teacher, description, in_chans, cfg.img_size)
    return freeze_teacher(teacher), description


def check_teacher_input(teacher: torch.nn.Module, description: str, in_chans: int, img_size: int) -> None:
    """A DistillationError unless ``teacher`` takes the student's images (one forward of one blank image)."""
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            teacher(torch.zeros(1, in_chans, img_size, img_size))
    except (RuntimeError, ValueError, AssertionError) as e:
        first = first_line(e)
        raise DistillationError(
            f"teacher {description} does not take the student's {img_size}x{img_size} images ({first}); use a "
            "teacher built for that input size, or set --img-size to the teacher's"
        ) from None
    finally:
        teacher.train(was_training)
