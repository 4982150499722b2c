"""`python -m build` makes an sdist and a wheel; the wheel installed in a fresh virtual environment trains,
evaluates and analyses from a folder that is not the repository."""

import os
import shutil
import site
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT


def run(cmd, cwd, env):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repository(tmp_path):
    source = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:  # the committed tree only, as a clean clone has it
        if (ROOT / name).is_file() and not (ROOT / name).is_symlink():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WORLD_SIZE", "RANK")}
    env["OMP_NUM_THREADS"] = "1"
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", dist, source], source, env)
    (wheel,) = dist.glob("convit-*.whl")
    assert len(list(dist.glob("convit-*.tar.gz"))) == 1
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "convit/training/configs/in1k.yaml" in names and "convit/training/configs/digits.yaml" in names

    # a fresh environment; its dependencies (torch, timm, ...) are those of this one, the package is the wheel's
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path, env)
    py = venv / "bin" / "python"
    purelib = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).stdout.strip()
    with open(os.path.join(purelib, "parent_env.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    run([py, "-m", "pip", "install", "--no-deps", "--no-index", wheel], tmp_path, env)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run([py, "-c", "import convit; print(convit.__file__)"], work, env).stdout
    assert str(venv) in where, where

    bin_ = venv / "bin"
    listed = run([bin_ / "convit-train", "--list-configs"], work, env).stdout.split()
    assert "in1k" in listed and "digits" in listed
    proc = subprocess.run(
        [bin_ / "convit-train", "--config", "nosuch"], cwd=work, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "one of the shipped recipes:" in proc.stderr and "in1k" in proc.stderr
    run([bin_ / "convit-train", "--epochs", "1", "--progress", "false", "--output-dir", "run"], work, env)
    out = run([bin_ / "convit-eval", "--checkpoint", "run/best.pth", "--output", "eval.json"], work, env).stdout
    assert "top-1" in out and (work / "eval.json").is_file()
    run([bin_ / "convit-locality", "--checkpoint", "run/best.pth", "--num-images", "8", "--out", "loc"], work, env)
    assert (work / "loc" / "locality.json").is_file()
    code = "import convit, timm; m = timm.create_model('convit_small'); print(type(m).__module__)"
    assert run([py, "-c", code], work, env).stdout.strip() == "convit.model"
