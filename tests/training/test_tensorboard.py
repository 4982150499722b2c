"""--tensorboard: the epoch's scalars and, per block, the mean non-locality and gate of its locality entry."""

from conftest import NO_AUG, TINY_MODEL

import train as train_script
from convit.training.train import epoch_scalars


def test_epoch_scalars_hold_each_blocks_locality():
    row = {"epoch": 0, "lr": 0.1, "locality": {"nonlocality": [[1.0, 3.0], [2.0, None]], "gates": [[0.5, 0.7]]}}
    assert epoch_scalars(row) == {"lr": 0.1, "nonlocality/block0": 2.0, "nonlocality/block1": 2.0, "gate/block0": 0.6}


def test_tensorboard_gets_the_locality_series(folder, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    argv = ["--data-path", folder, *TINY_MODEL, *NO_AUG, "--epochs", "2", "--batch-size", "8", "--output-dir", out]
    train_script.main([str(a) for a in [*argv, "--tensorboard", "--locality-images", "4", "--progress", "false"]])
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val_acc1", "train_loss", "gate/block0", "nonlocality/block0"} <= tags
    assert [e.step for e in events.Scalars("gate/block0")] == [0, 1]
