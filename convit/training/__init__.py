"""The training system: recipes (config), data, the engine (optimizer, schedule, step loop, evaluation),
torchrun integration (distributed) and checkpoints. Entry points: ``train.py`` and ``eval.py``."""
