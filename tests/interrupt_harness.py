"""Run train.py with one interruption injected at an exact moment, for the preemption tests.

    python tests/interrupt_harness.py ACTION WHERE COUNT -- train.py flags

ACTION: TERM, INT or USR1 (send that signal to this process), KILL (kill -9 this process), ENOSPC (the
write fails as on a full disk). WHERE: "step" (inside the COUNT-th training step's forward, counted over
the whole process), or a file the epoch end writes ("last.pth", "best.pth", "log.jsonl"): just before
its COUNT-th write, or with KILL just after it.
"""

import errno
import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import convit.training.train as train  # noqa: E402

action, where, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = {"n": 0}


def hit() -> bool:
    seen["n"] += 1
    return seen["n"] == count


def act() -> None:
    if action == "ENOSPC":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.kill(os.getpid(), getattr(signal, "SIG" + action))


if where == "step":
    build_criterion = train.build_criterion

    def criterion_that_interrupts(*args, **kwargs):
        inner = build_criterion(*args, **kwargs)

        def criterion(outputs, targets):
            if hit():
                act()
            return inner(outputs, targets)

        return criterion

    train.build_criterion = criterion_that_interrupts
elif action == "ENOSPC":
    replace = os.replace

    def replace_on_a_full_disk(src, dst):
        if Path(dst).name == where and hit():
            act()
        replace(src, dst)

    os.replace = replace_on_a_full_disk
else:

    def wrap(write, name_of):
        def wrapped(*args):
            mine = name_of(*args) == where
            now = mine and hit()
            if now and action != "KILL":
                act()
            write(*args)
            if now and action == "KILL":
                act()

        return wrapped

    train.save_checkpoint = wrap(train.save_checkpoint, lambda state, path: Path(path).name)
    train.write_log = wrap(train.write_log, lambda out, rows: "log.jsonl")

sys.argv = [str(ROOT / "train.py"), *sys.argv[5:]]
runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
