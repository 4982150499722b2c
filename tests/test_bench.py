"""The benchmark script runs end to end on a tiny configuration (it measures, it asserts no speed)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_runs_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_models.py"),
            "--model",
            "convit_tiny",
            "--batch",
            "2",
            "--img-size",
            "32",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    for figure in ("inference_images_per_s", "train_images_per_s", "train_peak_memory_mib", "saved_activations_mib"):
        assert set(result[figure]) == {"ours", "timm_convit", "vit"}
        assert all(value > 0 for value in result[figure].values()), result[figure]
        assert set(result["ratios"][figure]) == {"ours/vit", "ours/timm_convit", "timm_convit/vit"}
    assert "| train-step peak MiB |" in done.stdout and "| activations saved for backward, MiB |" in done.stdout


def test_benchmark_rejects_an_image_size_off_the_patch_grid():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_models.py"), "--img-size", "230"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "not a multiple of the patch size 16" in done.stderr


def test_benchmark_names_its_flags():
    """--compile, --runs, --threads and --no-timm exist (compiling is too slow for a CPU test)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_models.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for flag in ("--compile", "--runs", "--threads", "--no-timm", "--no-memory", "--json"):
        assert flag in done.stdout, flag


def test_benchmark_measures_this_checkout(tmp_path):
    """The script imports the convit beside it, not another pip-installed checkout."""
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runpy; "
            f"g = runpy.run_path({str(ROOT / 'benchmarks' / 'bench_models.py')!r}); "
            "print(g['convit'].__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert check.stdout.strip() == str(ROOT / "convit" / "__init__.py"), check.stdout + check.stderr


def test_gpu_check_script_parses_and_uses_flags_that_exist():
    """benchmarks/gpu_check.sh (not run here: it needs a GPU) is valid bash and names only existing flags."""
    script = ROOT / "benchmarks" / "gpu_check.sh"
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = script.read_text()
    bench_part, train_part = text.split("# 50 training steps")
    bench_flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", bench_part))
    assert {"--compile", "--device", "--batch", "--img-size", "--model"} <= bench_flags
    help_text = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_models.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    bench_flags -= {"--query-gpu", "--format"}  # nvidia-smi's
    assert all(flag in help_text for flag in bench_flags), bench_flags
    train_lines = [line for line in train_part.splitlines() if "train.py" in line or line.startswith("    --")]
    train_flags = set(re.findall(r"(?<![\w-])--[a-z][a-z_-]*", "\n".join(train_lines)))
    allowed = {"--nproc_per_node", "--data-path", "--model", "--epochs", "--batch-size", "--output-dir"}
    assert train_flags and train_flags <= allowed, train_flags


def test_layout_benchmark_compares_three_forms_of_the_same_layer():
    """benchmarks/bench_gpsa_layout.py: its einsum and grid forms compute what the layer does, and it runs."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("bench_gpsa_layout", ROOT / "benchmarks" / "bench_gpsa_layout.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    layer = bench.GPSA(32, 4)
    layer.local_init()
    x = torch.randn(2, 12, 32)
    for form in (bench.einsum_form, bench.grid_form):
        torch.testing.assert_close(form(layer, x, (3, 4)), layer(x, (3, 4)), rtol=1e-5, atol=1e-6)
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpsa_layout.py"), "--repeats", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 8
    assert all(
        "time / fast-path time: einsum " in line and ", grid " in line and "; ViT attention " in line for line in lines
    )


def _bench_epoch():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_epoch", ROOT / "benchmarks" / "bench_epoch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_epoch_benchmark_runs_its_smallest_form(tmp_path):
    """benchmarks/bench_epoch.py end to end, ours against ours (timm's scripts are not in its wheel)."""
    out = tmp_path / "epoch.json"
    tiny = ["--model-kwargs", "patch_size=8", "embed_dim=32", "depth=2", "num_heads=2", "local_up_to_layer=1"]
    sizes = ["--classes", "2", "--train-per-class", "8", "--val-per-class", "2", "--img-size", "32", "--batch", "4"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_epoch.py"), "--baseline", "ours", *tiny, *sizes]
        + ["--workers", "0", "--threads", "1", "--epochs", "2", "--repeats", "1", "--locality-images", "2"]
        + ["--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert set(result["ratios"]) == {"per_epoch", "step_images_per_s", "eval_per_image"}
    assert all(len(values) == 1 for values in result["ratios"].values())
    run = result["runs"][0]
    assert len(run["step_images_per_s"]["ours"]) == 2 and all(r > 0 for r in run["step_images_per_s"]["ours"])
    for line in ("per epoch", "1-epoch process", "step loop img/s", "eval time per image"):
        assert line in done.stdout, line


def test_epoch_benchmark_reads_timms_step_rate_and_needs_its_scripts(tmp_path):
    bench = _bench_epoch()
    log = (
        "Train: 0 [   0/6 (17%)]  Loss: 1.10 (1.10)  Time: 2.000s,   16.00/s  (2.000s,   16.00/s)  LR: 1e-05\n"
        "Train: 0 [   5/6 (100%)]  Loss: 1.05 (1.08)  Time: 1.900s,   16.84/s  (1.950s,   16.41/s)  LR: 1e-05\n"
        "Train: 1 [   5/6 (100%)]  Loss: 1.01 (1.02)  Time: 1.800s,   17.78/s  (1.850s,   17.30/s)  LR: 9e-06\n"
    )
    assert bench.timm_step_rates(log) == [16.41, 17.30]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_epoch.py"), "--timm-scripts", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "holding timm's train.py and validate.py" in done.stderr


def test_timm_side_builds_our_model(tmp_path):
    """timm's scripts run after `import convit`: timm.create_model then builds our ConViT, and the launcher
    refuses to run the script otherwise."""
    import argparse

    bench = _bench_epoch()
    script = tmp_path / "show.py"
    script.write_text("import timm\nprint(type(timm.create_model('convit_tiny', num_classes=3)).__module__)\n")
    args = argparse.Namespace(model="convit_tiny")
    cmd = bench.Side("timm", args, {}, tmp_path)._python(script, [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "convit.model"


def test_digits_task_writes_our_split_as_pngs(tmp_path):
    """--task digits: timm's train.py reads the default run's digits split, as 16x16 grayscale PNG files."""
    from PIL import Image

    from convit.data import digits_split

    bench = _bench_epoch()
    assert bench.make_digits_folder(tmp_path) == 10
    (_, y_train), (_, y_val) = digits_split()
    for split, y in (("train", y_train), ("val", y_val)):
        files = sorted((tmp_path / split).glob("*/*.png"))
        assert len(files) == len(y) and len({f.parent.name for f in files}) == 10
        counts = {d: sum(1 for f in files if f.parent.name == str(d)) for d in range(10)}
        assert counts == {d: int((y == d).sum()) for d in range(10)}
    with Image.open(files[0]) as image:
        assert image.mode == "L" and image.size == (16, 16)


def test_extras_benchmark_measures_every_extra(tmp_path):
    """performance.md's bench_extras.py lines, literally, on a tiny ConViT (flags appended shrink them): each extra
    measured per round, each share from those medians."""
    from doc_commands import page_commands

    lines = [c for c in page_commands("performance.md") if "bench_extras.py" in c]
    assert len(lines) == 2
    tiny = ["--img-size", "32", "--model-kwargs", "embed_dim=48", "depth=2", "patch_size=8", "num_heads=4"]
    tiny += ["local_up_to_layer=1", "--batch", "4", "--rounds", "2", "--locality-images", "4"]
    for i, line in enumerate(lines):
        out = tmp_path / f"extras{i}.json"
        words = line.split()
        assert words[:2] == ["python", "benchmarks/bench_extras.py"], line
        done = subprocess.run(
            [sys.executable, str(ROOT / words[1]), *words[2:], *tiny, "--json", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(out.read_text())
        assert {k: len(v) for k, v in result["seconds"].items()} == {
            k: 2 for k in ("step", "eval", "locality", "weights_check", "checkpoint")
        }
        assert all(v > 0 for values in result["seconds"].values() for v in values)
        step = sum(result["seconds"]["step"]) / 2  # the median of two
        evaluated = sum(result["seconds"]["eval"]) / 2
        assert abs(result["shares"]["evaluation"] - 6250 * evaluated / (1_281_167 / 8 * step)) < 1e-9
        assert "share of an ImageNet epoch on 8 GPUs" in done.stdout
