"""Run the commands of a docs page literally (in this process where a script has a ``main``), in a folder of
generated data; train.py gets only flags that shrink the run."""

import re
import shlex
import subprocess
import sys

from conftest import NO_AUG, ROOT, TINY_MODEL, child_env

SHRINK = [*TINY_MODEL, *NO_AUG, "--epochs", "1", "--batch-size", "4"]
LOCALITY_SHRINK = ["--num-images", "4"]


def page_commands(page: str) -> list[str]:
    """The ```bash commands of ``docs/<page>``, continuation lines joined, comments dropped."""
    return bash_commands((ROOT / "docs" / page).read_text())


def bash_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks of a markdown text: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def run_command(command: str, cwd, shrink=SHRINK, locality_shrink=LOCALITY_SHRINK):
    """One documented command, run from ``cwd``; returns what its ``main`` returns (or the process).
    ``shrink`` goes before train.py's own flags, ``locality_shrink`` after python -m convit.locality's."""
    words = shlex.split(command)
    if words[0] == "torchrun":
        script = next(i for i, w in enumerate(words) if w.endswith(".py"))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", *words[1:script]]
        cmd += [str(ROOT / words[script]), *words[script + 1 :]]
        proc = subprocess.run(cmd, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc
    if words[0] == "tar":  # packing a folder the page's next commands read
        return subprocess.run(words, cwd=cwd, check=True, timeout=60)
    assert words[0] == "python", command
    if words[1] == "train.py":
        from convit.training import train

        return train.main([*shrink, *words[2:]])  # the page's own flags come last and win
    if words[1] == "eval.py":
        from convit.training.evaluate import main, parse_args

        return main(parse_args(words[2:]))
    if words[1] == "predict.py":
        from convit.predict import main, parse_args

        return main(parse_args(words[2:]))
    if words[1:3] == ["-m", "convit.locality"]:
        from convit.locality.__main__ import main

        return main([*words[3:], *locality_shrink])
    if words[1:3] == ["-m", "convit.training.history"]:
        from convit.training.history import main, parse_args

        return main(parse_args(words[3:]))
    raise AssertionError(f"no runner for {command!r}")
