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
    return line


def _first_to_report() -> bool:
    """True in a single process; under torchrun, True only for the first rank of this node to fail.

    Ranks usually hit the same user error together (same recipe, same data); one line is enough.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    run = os.environ.get("TORCHELASTIC_RUN_ID", "none") + "-" + os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    marker = os.path.join(tempfile.gettempdir(), f"convit-error-{os.getuid()}-{os.getppid()}-{run}")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def run_entry_point(prog: str, main: Callable[..., Any], *args: Any) -> Any:
    """Call ``main(*args)``; a UserError becomes ``prog: error: <one line>`` on stderr and exit code 2."""
    try:
        return main(*args)
    except UserError as e:
        if _first_to_report():
            print(f"{prog}: error: {error_line(e)}", file=sys.stderr, flush=True)
        sys.exit(2)
