"""A run's ``log.jsonl``: one JSON object per epoch. Training reads it to resume, the analysis to plot.

It sits beside the zoo, not in ``convit.training``, so that the analysis reads logs without the training system.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import UserError


class RunLogError(UserError):
    """A ``log.jsonl`` that cannot be read (bytes that are not UTF-8, a damaged line)."""


def read_log(path: str | Path, before_epoch: int | None = None) -> tuple[list[dict], str | None]:
    """(the log's rows, of epochs before ``before_epoch`` if given; a note or None). A missing file has no rows.

    A truncated last line (a kill mid-write) is dropped with a note; a damaged line elsewhere is a one-line error.
    """
    path = Path(path)
    if not path.is_file():
        return [], None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise RunLogError(f"{path}:{line} holds bytes that are not UTF-8; repair or remove the file") from None
    lines = [line for line in text.splitlines() if line.strip()]
    rows, note = [], None
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                note = f"dropped a truncated last line of {path}"
                break
            raise RunLogError(f"{path}:{number} is not a JSON line; repair or remove the file") from None
    rows = [r for r in rows if isinstance(r, dict)]
    if before_epoch is not None:
        rows = [r for r in rows if r.get("epoch", -1) < before_epoch]
    return rows, note


def log_rows(path: str | Path) -> list[dict]:
    """Every row of the ``log.jsonl`` at ``path`` (a file or its run folder); a missing log is a one-line error."""
    path = Path(path)
    path = path / "log.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise RunLogError(f"no training log at '{path}'; name a run folder or its log.jsonl")
    return read_log(path)[0]


EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pth$")  # a kept epoch's checkpoint, N counted from 0


def kept_checkpoints(run: str | Path) -> list[Path]:
    """A run folder's ``epoch_N.pth`` (kept by ``--checkpoint-hist`` / ``--save-every``), in epoch order."""
    files = [f for f in Path(run).glob("epoch_*.pth") if EPOCH_FILE.match(f.name)]
    return sorted(files, key=lambda f: int(EPOCH_FILE.match(f.name).group(1)))
