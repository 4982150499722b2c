import subprocess
import sys

from conftest import ROOT, child_env

from convit.errors import UserError, error_line
from convit.training.config import ConfigError


def test_error_line_strips_worker_tracebacks():
    from convit.data import DataError

    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback:\n"
        "  File x\nconvit.data.folders.DataError: cannot read image 'a.jpg'; delete it"
    )
    assert error_line(wrapped) == "cannot read image 'a.jpg'; delete it"
    assert error_line(ConfigError("unknown config key 'x'")) == "unknown config key 'x'"


def test_entry_points_print_user_errors_as_one_line_and_exit_2(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(
        "from convit.errors import UserError, run_entry_point\n"
        "def main():\n"
        "    raise UserError('bad value; pass a good one')\n"
        "run_entry_point('prog', main)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], env=child_env(), cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == "prog: error: bad value; pass a good one\n"


def test_real_bugs_keep_their_traceback(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(
        "from convit.errors import run_entry_point\ndef main():\n    return [][1]\nrun_entry_point('prog', main)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], env=child_env(), cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "IndexError" in proc.stderr


def test_every_package_error_is_a_user_error():
    from convit.data import DataError
    from convit.locality.errors import LocalityError
    from convit.weights import CheckpointError

    for cls in (ConfigError, DataError, CheckpointError, LocalityError):
        assert issubclass(cls, UserError), cls
