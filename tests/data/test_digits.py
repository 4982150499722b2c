"""convit.data.digits: the fixed digits split and its tensors."""

import numpy as np
import torch

from convit.data import (
    build_loaders,
    digits_split,
)
from convit.training.config import parse_args


def test_digits_split_is_fixed_and_class_balanced():
    (Xtr, ytr), (Xva, yva) = digits_split()
    assert len(ytr) + len(yva) == 1797 and len(yva) == 360
    counts = np.bincount(yva.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    (_, ytr2), (_, yva2) = digits_split()
    assert torch.equal(yva, yva2) and torch.equal(ytr, ytr2)


def test_digits_loader_shapes():
    cfg = parse_args(["--batch-size", "32"])
    loaders = build_loaders(cfg)
    x, y = next(iter(loaders.train))
    assert x.shape == (32, cfg.model_kwargs["in_chans"], cfg.img_size, cfg.img_size) and y.shape == (32,)
    assert -1.0 <= x.min() and x.max() <= 1.0 and loaders.num_classes == 10
