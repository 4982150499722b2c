"""Checkpoint history (best K, every N-th epoch) and timm-style averaging; a run's history is checked with the
evaluation page's commands (tests/training/test_eval_report.py)."""

import pytest
import torch

from convit.training.config import ConfigError
from convit.training.config import parse_args as train_args
from convit.training.history import average_state_dicts, kept_epochs


def test_kept_epochs_rule():
    log = [{"epoch": e, "val_acc1": a} for e, a in enumerate([10, 30, 20, 30, 5, 1])]
    assert kept_epochs(log, 2, 0) == {1, 3}
    assert kept_epochs(log, None, 3) == {2, 5}
    assert kept_epochs(log, 1, 2) == {1, 3, 5}
    assert kept_epochs(log, None, 0) == set()


def test_average_is_the_float64_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([2.0, 5.0]), "n": torch.tensor(4)}
    avg = average_state_dicts([a, b])
    assert avg["w"].tolist() == [1.5, 3.5] and avg["n"].item() == 4


def test_checkpoint_hist_0_is_refused():
    with pytest.raises(ConfigError, match="checkpoint_hist must lie in"):
        train_args(["--checkpoint-hist", "0"])
