#!/usr/bin/env python
"""Evaluate a ConViT (a clone's entry point; an installed package has the same as ``convit-eval``).

python eval.py --checkpoint out/digits/best.pth
python eval.py --model convit_small --checkpoint convit_small.pth --data-path /data/imagenet
"""

from convit.training.evaluate import cli, main, parse_args  # noqa: F401  (main, parse_args: for tests)

if __name__ == "__main__":
    cli()
