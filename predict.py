#!/usr/bin/env python
"""Label images with a trained model (a clone's entry point; an installed package has the same as ``convit-predict``).

python predict.py --checkpoint out/best.pth photos/ --topk 5
"""

from convit.predict import cli, main, parse_args  # noqa: F401  (main, parse_args: for tests)

if __name__ == "__main__":
    cli()
