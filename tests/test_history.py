"""Checkpoint history (best K, every N-th epoch) and timm-style averaging, read back by eval.py."""

import pytest
import torch
from conftest import TINY_MODEL, fails_in_one_line, read_log

from convit.training import train
from convit.training.config import ConfigError
from convit.training.config import parse_args as train_args
from convit.training.history import average_state_dicts, kept_epochs, main, parse_args
from convit.weights import read_checkpoint


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


def test_history_of_a_run_and_its_average(folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY_MODEL, "--data-path", folder, "--epochs", "4", "--batch-size", "8", "--lr", "5e-3"]
    train.main([str(a) for a in args + ["--checkpoint-hist", "2", "--save-every", "3", "--output-dir", out]])
    log = read_log(out)
    expected = kept_epochs(log, 2, 3)
    assert 2 in expected
    assert {p.name for p in out.glob("epoch_*.pth")} == {f"epoch_{e + 1}.pth" for e in expected}
    for e in expected:
        assert read_checkpoint(out / f"epoch_{e + 1}.pth")["val_acc1"] == log[e]["val_acc1"]
    main(parse_args([str(out), "--output", str(tmp_path / "avg.pth")]))
    files = sorted(expected)
    avg = read_checkpoint(tmp_path / "avg.pth")
    states = [read_checkpoint(out / f"epoch_{e + 1}.pth")["model"] for e in files]
    for k, v in avg["model"].items():
        torch.testing.assert_close(v, sum(s[k].double() for s in states).float() / len(states), msg=k)
    from convit.training.evaluate import main as eval_main
    from convit.training.evaluate import parse_args as eval_args

    assert eval_main(eval_args(["--checkpoint", str(tmp_path / "avg.pth")]))["val_images"] == 21
    fails_in_one_line(capsys, "history", main, parse_args([str(out), "--output", str(out / "epoch_3.pth")]))
    with pytest.raises(ConfigError, match="checkpoint_hist must lie in"):
        train_args(["--checkpoint-hist", "0"])
