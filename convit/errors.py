"""One base class for the user's mistakes, and the helper that turns them into one line at every entry point."""

import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any


class UserError(Exception):
    """A mistake the user can fix (a path, a value, a file); entry points print it as one line and exit 2.

    Real bugs are other exception types and keep their tracebacks.
    """


def error_line(e: BaseException) -> str:
    """One line for a user-facing error: the message's last line without a ``module.Class: `` prefix.

    DataLoader workers re-raise errors with the worker's traceback prepended to the message.
    """
    lines = [s.strip() for s in str(e).splitlines() if s.strip()] or [type(e).__name__]
    line = lines[-1]
    name = type(e).__name__
    if line.startswith(f"{name}: ") or (f".{name}: " in line and line.split(":")[0].endswith(name)):
        line = line.split(": ", 1)[1]
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of another library's error message (its type's name when empty), cut to ``limit``."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


MAX_LINE = 600  # a value pasted into a message (a huge recipe entry) never makes a screenful


def _first_to_report() -> bool:
    """True in a single process; under torchrun, True only for the first rank of this node to fail.

    Ranks usually hit the same user error together (same recipe, same data); one line is enough.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "TORCHELASTIC_RUN_ID" not in os.environ:
        return True
    # the launcher's pid and start time name this launch: a pid reused by a later launch gets a new marker
    run = os.environ["TORCHELASTIC_RUN_ID"] + "-" + os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    launch = f"{os.getppid()}-{_start_time(os.getppid())}"
    marker = os.path.join(tempfile.gettempdir(), f"convit-error-{os.getuid()}-{launch}-{run}")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or "" where /proc has none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def run_entry_point(prog: str, main: Callable[..., Any], *args: Any) -> Any:
    """Call ``main(*args)``; a UserError becomes ``prog: error: <one line>`` on stderr and exit code 2."""
    try:
        return main(*args)
    except UserError as e:
        if _first_to_report():
            print(f"{prog}: error: {error_line(e)}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
