#!/usr/bin/env python
"""Train a ConViT (a clone's entry point; an installed package has the same as ``convit-train``).

python train.py                                                  # the digits demo, CPU, about a minute
python train.py --model convit_base --data-path /data/imagenet   # the paper's recipe
torchrun --nproc_per_node=8 train.py --config convit_small_in1k --data-path /data/imagenet
"""

from convit.training.train import cli, main  # noqa: F401  (main: for tests and scripts)

if __name__ == "__main__":
    cli()
