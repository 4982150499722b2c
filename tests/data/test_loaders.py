"""convit.data.loaders: datasets of a run, samplers, sharded validation, persistent workers."""

from collections import Counter

import pytest
import torch
from conftest import make_image_folder
from timm.data.distributed_sampler import RepeatAugSampler

from convit.data import (
    DataError,
    build_datasets,
    build_loaders,
    shard,
    train_sampler,
)
from convit.training.config import parse_args


def test_sampling_ratio_on_an_image_folder(tmp_path):
    root = make_image_folder(tmp_path, n_train=[20, 10, 6], n_val=2)
    cfg = parse_args(["--data-path", str(root), "--sampling-ratio", "0.5", "--img-size", "16"])
    train, val, class_names = build_datasets(cfg)
    assert class_names == ["class_0", "class_1", "class_2"] and len(val) == 6
    assert Counter(train.targets) == {0: 10, 1: 5, 2: 3}
    assert Counter(train.dataset.targets[i] for i in train.indices) == Counter(train.targets)
    image, label = train[0]
    assert image.shape == (3, 16, 16) and label == train.targets[0]


def test_repeated_aug_sampler_keeps_the_whole_epoch():
    dataset = list(range(300))
    cfg = parse_args(["--repeated-aug", "--num-repeats", "3"])
    samplers = [train_sampler(dataset, cfg, rank, 2) for rank in range(2)]
    assert all(len(s) == 150 for s in samplers)  # 300 images per epoch over 2 ranks
    seen = [i for s in samplers for i in s]
    assert len(seen) == 300 and len(set(seen)) >= 95  # each image repeated ~3x, ~100 distinct
    # timm's default rounds each epoch down to a multiple of 256: 256 of 300 here, 0.. of smaller sets
    assert len(RepeatAugSampler(dataset, num_replicas=2, rank=0)) == 128


def test_shard_counts_every_image_once():
    data = list(range(7))
    shards = [list(shard(data, r, 2)) for r in range(2)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5]]
    assert sum(len(shard(data, r, 3)) for r in range(3)) == 7


def test_too_few_images_for_the_batch(tmp_path):
    root = make_image_folder(tmp_path, n_train=2, n_val=1)
    cfg = parse_args(["--data-path", str(root), "--batch-size", "16", "--img-size", "16"])
    with pytest.raises(DataError, match="fewer than --batch-size"):
        build_loaders(cfg)


def test_an_imagefolder_needs_a_three_channel_model(tmp_path):
    root = make_image_folder(tmp_path, n_train=2, n_val=1)
    cfg = parse_args(["--config", "digits", "--data-path", str(root)])  # digits' model takes 1 channel
    with pytest.raises(DataError, match="RGB .* in_chans=1"):
        build_datasets(cfg)


def _epoch_batches(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [x for x, _ in loader]


def test_worker_loaders_persist_and_replay_an_epoch_after_a_restart():
    """With workers the loaders are built once (persistent workers); each image's augmentation depends on
    (seed, epoch, image) only, so a fresh loader (a resumed run) gives epoch 1 exactly as a continuing one."""
    cfg = parse_args(["--batch-size", "256", "--num-workers", "2"])
    loaders = build_loaders(cfg)
    assert loaders.train.persistent_workers and loaders.val.persistent_workers
    first, second = _epoch_batches(loaders.train, 0), _epoch_batches(loaders.train, 1)
    resumed = _epoch_batches(build_loaders(cfg).train, 1)
    assert len(second) == len(resumed) > 0
    assert all(torch.equal(a, b) for a, b in zip(second, resumed))
    assert not all(torch.equal(a, b) for a, b in zip(first, second))  # a new epoch, new shifts and order
    assert len(loaders.train.dataset) == len(loaders.train.sampler)  # one process: every image


def test_loaders_without_workers_are_plain():
    loaders = build_loaders(parse_args(["--batch-size", "32"]))
    assert not loaders.train.persistent_workers and loaders.train.num_workers == 0
    x, y = next(iter(loaders.train))
    assert x.shape[0] == 32 and y.dtype == torch.long
