"""The step loop and evaluation never wait for the device per batch: the number of ``.item()``, ``.cpu()`` and
``.tolist()`` calls made from this package's code is the same for a short and a long epoch."""

from pathlib import Path

import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy
from torch.utils.data import DataLoader, TensorDataset

import convit
from convit.training.engine import evaluate, train_one_epoch
from convit.variants import create_model

PACKAGE = str(Path(convit.__file__).parent)


@pytest.fixture
def host_reads(monkeypatch):
    """Counts the calls of Tensor.item/cpu/tolist whose caller is a file of the convit package."""
    import sys

    counts = {"item": 0, "cpu": 0, "tolist": 0}
    for name in counts:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(PACKAGE):
                counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def tiny_model():
    torch.manual_seed(0)
    return create_model(
        "convit_tiny", 3, img_size=16, patch_size=4, embed_dim=32, num_heads=2, depth=2, local_up_to_layer=1
    )


def loader(batches: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(4 * batches, 3, 16, 16, generator=g), torch.randint(0, 3, (4 * batches,), generator=g)
    )
    return DataLoader(data, batch_size=4)


def reads_in_epoch(counts, batches: int) -> dict:
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for key in counts:
        counts[key] = 0
    stats = train_one_epoch(
        model, loader(batches), optimizer, LabelSmoothingCrossEntropy(0.1), torch.device("cpu"), 0, progress=False
    )
    assert len(stats["step_losses"]) == batches
    return dict(counts)


def reads_in_evaluation(counts, batches: int) -> dict:
    model = tiny_model()
    for key in counts:
        counts[key] = 0
    stats = evaluate(model, loader(batches), torch.device("cpu"))
    assert stats["val_images"] == 4 * batches
    return dict(counts)


def test_train_one_epoch_reads_the_device_a_fixed_number_of_times(host_reads):
    short, long = reads_in_epoch(host_reads, 2), reads_in_epoch(host_reads, 7)
    assert short == long, (short, long)
    assert sum(long.values()) <= 4, long  # the epoch's totals, read once at its end


def test_evaluate_reads_the_device_a_fixed_number_of_times(host_reads):
    short, long = reads_in_evaluation(host_reads, 2), reads_in_evaluation(host_reads, 7)
    assert short == long, (short, long)
    assert sum(long.values()) <= 3, long


def test_the_counter_sees_reads_made_from_the_package(host_reads):
    """A per-batch read inside convit is counted (the fixture can fail)."""
    from convit.training import distributed

    distributed.all_reduce_sum([1.0], torch.device("cpu"))
    distributed.all_reduce_sum([1.0], torch.device("cpu"))
    assert host_reads["tolist"] == 2
