"""Every command README, docs/ and the experiments' write-ups show runs in a test, in its smallest form, so that README cannot drift from the code.

`COVERED` maps each command of the pages' ```bash blocks to where it runs: a runner in this file (the
smallest form: --epochs 1, a tiny model, a few generated images, two processes instead of eight), or
the test elsewhere that runs it. A command added to a page without an entry here fails
`test_every_readme_command_is_covered`.
"""

import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_MODEL, make_image_folder, run_module, run_script
from doc_commands import bash_commands, run_command
from PIL import Image

# every page whose commands must run: README, the docs and the experiments' write-ups
# (docs/experiments/<name> are links to experiments/<name>, so the site shows the write-ups: each page once)
PAGES = list(
    dict.fromkeys(
        p.resolve()
        for p in [
            ROOT / "README.md",
            *sorted((ROOT / "docs").rglob("*.md")),
            *sorted((ROOT / "experiments").glob("*/README.md")),
        ]
    )
)
FAST = ["--progress", "false", "--locality-images", "0", "--num-workers", "0"]
DIGITS_TINY = ["--depth", "2", "--local-up-to-layer", "1", "--embed-dim", "32", *FAST]


def readme_commands() -> list[str]:
    """The commands of every page's ```bash blocks: continuation lines joined, comments dropped."""
    return bash_commands("\n".join(page.read_text() for page in PAGES))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imagenet"), n_train=2, n_val=2)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """README's `python train.py`, shrunk, run from a scratch folder: the default run's out/digits there."""
    scratch = tmp_path_factory.mktemp("digits")
    assert "python train.py" in readme_commands()
    proc = run_script("train.py", [*DIGITS_TINY, "--epochs", "1", "--locality-images", "4"], cwd=scratch)
    assert proc.stdout.startswith("convit_tiny: ")
    return scratch / "out" / "digits"


def convit_base(data, tmp_path, config):
    """python train.py [--config configs/in1k.yaml] --model convit_base --data-path X --epochs 1: the real ConViT-B."""
    args = [*config, "--model", "convit_base", "--data-path", data, "--epochs", "1", "--batch-size", "2", *FAST]
    proc = run_script("train.py", [*args, "--output-dir", tmp_path / "b"], timeout=600)
    first = proc.stdout.splitlines()[0]
    from convit import create_model

    n_params = sum(p.numel() for p in create_model("convit_base", 3).parameters())  # 86.5 M with 1000 classes
    assert first.startswith(f"convit_base: {n_params / 1e6:.2f}M parameters, model_kwargs {{}}, img_size 224;")
    assert "recipe " + str(ROOT / "convit" / "training" / "configs" / "in1k.yaml") in first


def torchrun_recipe(data, tmp_path, extra=()):
    args = ["--config", "configs/convit_small_in1k.yaml", "--data-path", data, *TINY_MODEL, "--batch-size", "2"]
    return run_script("train.py", [*args, *FAST, "--epochs", "2", *extra, "--output-dir", tmp_path / "s"], nproc=2)


def run_torchrun_then_resume(data, tmp_path):
    torchrun_recipe(data, tmp_path, ["--stop-after", "1"])
    torchrun_recipe(data, tmp_path, ["--resume", "auto"])
    rows = (tmp_path / "s" / "log.jsonl").read_text().splitlines()
    assert len(rows) == 2


def run_eval_forms(data, tmp_path):
    run_script(
        "train.py",
        ["--data-path", data, *TINY_MODEL, "--batch-size", "2", *FAST, "--epochs", "1", "--output-dir", tmp_path / "t"],
    )
    best = tmp_path / "t" / "best.pth"
    assert "top-1" in run_script("eval.py", ["--checkpoint", best, "--data-path", data]).stdout
    run_script("eval.py", ["--checkpoint", best, "--data-path", data, "--output", tmp_path / "r.json"], nproc=2)
    assert (tmp_path / "r.json").is_file()
    import timm

    import convit  # noqa: F401

    torch.save(timm.create_model("convit_small", num_classes=3).state_dict(), tmp_path / "convit_small.pth")
    out = run_script(
        "eval.py", ["--model", "convit_small", "--checkpoint", tmp_path / "convit_small.pth", "--data-path", data]
    )
    assert "convit_small: top-1" in out.stdout


def run_eval_pretrained_offline(data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here: the command's one-line answer
    proc = run_script("eval.py", ["--model", "convit_small", "--pretrained", "--data-path", data], check=False)
    assert proc.returncode == 2 and "cannot fetch timm's pretrained weights for convit_small" in proc.stderr


def run_eval_digits(digits_run):
    assert "(360 images)" in run_script("eval.py", ["--checkpoint", digits_run / "best.pth"]).stdout


def run_locality_digits(digits_run):
    """README's two locality commands as written, from the folder holding the default run's out/digits."""
    readme = bash_commands((ROOT / "README.md").read_text())
    commands = [c for c in readme if c.startswith("python -m convit.locality")]
    assert len(commands) == 2, commands
    for line in commands:
        run_command(line, digits_run.parent.parent)
    out = digits_run.parent / "locality"
    report = (out / "report.md").read_text()
    for name in ("locality.csv", "nonlocality.png", "gates.png", "centres.png", "overlay_image0.png"):
        assert (out / name).stat().st_size > 0 and f"({name})" in report, name
    for name in ("nonlocality_over_epochs.png", "gates_over_epochs.png", "centres_over_epochs.png"):
        Image.open(out / name).verify()


def check_sbatch():
    script = (ROOT / "scripts" / "train.sbatch").read_text()
    assert "```sh\n" + script + "```" in (ROOT / "docs" / "training.md").read_text()  # shown as it is
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "train.sbatch")], check=True)


def run_timm_script_extraction(tmp_path):
    """performance.md's two `git -C pytorch-image-models show` lines, literally, in a local stand-in repository."""
    repo = tmp_path / "pytorch-image-models"
    repo.mkdir()
    (repo / "train.py").write_text("print('train')\n")
    (repo / "validate.py").write_text("print('validate')\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "scripts"]):
        subprocess.run([*git, *args], check=True)
    (tmp_path / "timm_scripts").mkdir()
    for command in [c for c in readme_commands() if c.startswith("git -C pytorch-image-models show")]:
        subprocess.run(command, shell=True, cwd=tmp_path, check=True)
    assert (tmp_path / "timm_scripts" / "validate.py").read_text() == "print('validate')\n"
    assert (tmp_path / "timm_scripts" / "train.py").read_text() == "print('train')\n"


def check_ci_runs(*lines):
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert all(line in ci for line in lines), lines


ELSEWHERE = "runs elsewhere"
CONVERGENCE = "tests/test_readme.py::test_convergence_and_dynamics_commands"
DATA_PAGE = "tests/data/test_factory.py::test_the_data_page_commands"
EVAL_PAGE = "tests/training/test_eval_report.py::test_the_evaluation_page_commands"
COVERED = {
    "pip install torch==2.14.1 torchvision==0.29.1": ("ci", "pip install torch==2.14.1 torchvision==0.29.1"),
    'pip install -e ".[dev]"': ("ci", 'pip install -e ".[dev]"'),
    "pytest": ("ci", "pytest"),
    "python -m build": (ELSEWHERE, "tests/test_wheel.py::test_wheel_installs_and_runs_outside_the_repository"),
    'pip install "dist/convit-0.1.0-py3-none-any.whl[train,analysis]"': (ELSEWHERE, "tests/test_wheel.py"),
    "convit-train --list-configs": (ELSEWHERE, "tests/test_wheel.py"),
    "convit-train --epochs 1": (ELSEWHERE, "tests/test_wheel.py"),
    "convit-eval --checkpoint out/digits/best.pth": (ELSEWHERE, "tests/test_wheel.py"),
    "convit-locality --checkpoint out/digits/best.pth --out out/locality": (ELSEWHERE, "tests/test_wheel.py"),
    # docs/data.md and docs/evaluation.md
    "python train.py --data hfds/colors --data-path data/hf --output-dir out/hf": (ELSEWHERE, DATA_PAGE),
    "python eval.py --checkpoint out/hf/best.pth": (ELSEWHERE, DATA_PAGE),
    "python train.py --data wds/colors --data-path data/shards --class-map data/classes.txt --output-dir out/wds": (
        ELSEWHERE,
        DATA_PAGE,
    ),
    "torchrun --nproc_per_node=2 eval.py --checkpoint out/wds/best.pth": (ELSEWHERE, DATA_PAGE),
    "tar -cf data/colors.tar -C data/images train val": (ELSEWHERE, DATA_PAGE),
    "python train.py --data-path data/colors.tar --class-map data/classes.txt --output-dir out/tar": (
        ELSEWHERE,
        DATA_PAGE,
    ),
    "python eval.py --checkpoint out/tar/best.pth": (ELSEWHERE, DATA_PAGE),
    "python train.py --data torch/mnist --data-path data/mnist --val-split test --output-dir out/mnist": (
        ELSEWHERE,
        DATA_PAGE,
    ),
    "python eval.py --checkpoint out/run --csv out/results.csv --report-dir out/report": (ELSEWHERE, EVAL_PAGE),
    "python eval.py --checkpoint out/run/best.pth --crop-pct 1.0 --interpolation bilinear --output out/best.json": (
        ELSEWHERE,
        EVAL_PAGE,
    ),
    "python predict.py --checkpoint out/run/best.pth data/images/val --topk 3 --output out/labels.csv": (
        ELSEWHERE,
        EVAL_PAGE,
    ),
    "python predict.py --checkpoint out/run/best.pth 'data/images/val/*/*.jpg' --output out/labels.json": (
        ELSEWHERE,
        EVAL_PAGE,
    ),
    "python train.py --data-path data/images --epochs 4 --checkpoint-hist 2 --save-every 3 --output-dir out/run": (
        ELSEWHERE,
        EVAL_PAGE,
    ),
    "python -m convit.training.history out/run --best 2 --output out/run_avg.pth": (ELSEWHERE, EVAL_PAGE),
    "python -m convit.locality --run out/run --data-path data/images/val --out out/run_locality": (
        ELSEWHERE,
        EVAL_PAGE,
    ),
    "python eval.py --checkpoint out/run_avg.pth": (ELSEWHERE, EVAL_PAGE),
    "python train.py": ("digits", None),
    "python train.py --model resnet18 --output-dir out/resnet18_digits": (
        ELSEWHERE,
        "tests/training/test_timm_models.py::test_the_baselines_command_trains_and_evaluates_a_resnet",
    ),
    "python train.py --model convit_base --data-path /data/imagenet --epochs 1": ("base", []),
    "python train.py --config configs/in1k.yaml --model convit_base --data-path /data/imagenet --epochs 1": (
        "base",
        ["--config", "configs/in1k.yaml"],
    ),
    "torchrun --nproc_per_node=8 train.py --config configs/convit_small_in1k.yaml --data-path /data/imagenet": (
        "torchrun",
        None,
    ),
    "torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=$HEAD:29500 --rdzv-id=convit_s "
    "train.py --config configs/convit_small_in1k.yaml --data-path /data/imagenet --batch-size 64": (
        ELSEWHERE,
        "tests/training/test_distributed.py::test_two_nodes_equal_one_node_with_two_processes",
    ),
    "torchrun --nproc_per_node=8 train.py --config configs/convit_small_in1k.yaml --data-path /data/imagenet "
    "--resume auto": ("torchrun", None),
    "python eval.py --checkpoint out/convit_small_in1k/best.pth --data-path /data/imagenet": ("eval", None),
    "torchrun --nproc_per_node=8 eval.py --checkpoint out/convit_small_in1k/best.pth --data-path /data/imagenet "
    "--output results.json": ("eval", None),
    "python eval.py --model convit_small --checkpoint convit_small.pth --data-path /data/imagenet": ("eval", None),
    "python eval.py --model convit_small --pretrained --data-path /data/imagenet": ("pretrained", None),
    "python eval.py --checkpoint out/digits/best.pth": ("digits", None),
    "python -m convit.locality --model convit_tiny --out out/locality": (
        ELSEWHERE,
        "tests/locality/test_command.py::test_the_commands_by_name",
    ),
    "python -m convit.locality --model convit_tiny --model deit_tiny_patch16_224 --out out/untrained": (
        ELSEWHERE,
        "tests/locality/test_command.py::test_the_commands_by_name",
    ),
    "python train.py --data-path data/images --output-dir out/images": (
        ELSEWHERE,
        "tests/locality/test_command.py::test_the_image_folder_commands",
    ),
    "python -m convit.locality --checkpoint out/images/best.pth --data-path data/images/val --num-images 256 "
    "--images 0,17 --query 7,7 --query 2,11 --ablate --out out/images_locality": (
        ELSEWHERE,
        "tests/locality/test_command.py::test_the_image_folder_commands",
    ),
    "python train.py --epochs 10 --output-dir out/convit_digits": (
        ELSEWHERE,
        "tests/locality/test_command.py::test_the_digits_twin_commands",
    ),
    "python train.py --epochs 10 --local-up-to-layer 0 --output-dir out/deit_digits": (
        ELSEWHERE,
        "tests/locality/test_command.py::test_the_digits_twin_commands",
    ),
    "python -m convit.locality --checkpoint out/convit_digits/best.pth --checkpoint out/deit_digits/best.pth "
    "--images 2 --query 1,1 --query 2,2 --ablate --out docs/figures/locality_digits": (
        ELSEWHERE,
        "tests/locality/test_command.py::test_the_digits_twin_commands",
    ),
    "python -m convit.locality --checkpoint out/digits/best.pth --out out/locality": ("digits", None),
    "python -m convit.locality --log out/digits/log.jsonl --out out/locality": ("digits", None),
    "mkdocs build --strict --site-dir site": (ELSEWHERE, "tests/test_docs_site.py::test_site_builds_strictly"),
    "python -m convit.locality --log out/convit_digits/log.jsonl --out docs/figures/locality_digits/over_epochs": (
        ELSEWHERE,
        "tests/locality/test_command.py::test_the_digits_twin_commands",
    ),
    "python train.py --config finetune_in1k_384 --model convit_small --finetune pretrained --data-path /data/imagenet": (
        ELSEWHERE,
        "tests/training/test_finetune.py::test_finetune_pretrained_reads_an_offline_file",
    ),
    "python train.py --config transfer_cifar10 --model convit_small --finetune out/in1k/best.pth --data-path /data/cifar": (
        ELSEWHERE,
        "tests/data/test_transfer.py::test_cifar10_from_local_pickles_trains_one_epoch",
    ),
    "python train.py --config transfer_flowers102 --finetune pretrained --pretrained-file convit_small.safetensors "
    "--data-path /data/flowers --freeze head_only": (
        ELSEWHERE,
        "tests/training/test_finetune.py::test_finetune_pretrained_reads_an_offline_file",
    ),
    "OMP_NUM_THREADS=1 python -m experiments.transfer.run": (
        ELSEWHERE,
        "tests/experiments/test_transfer.py::test_the_transfer_experiment_runs_in_tiny_form",
    ),
    "python -m experiments.data_efficiency.run --fractions 0.05,0.1,0.3,0.5,1.0 --seeds 0,1,2 --steps 800 "
    "--out experiments/data_efficiency/results": (
        ELSEWHERE,
        "tests/experiments/test_data_efficiency.py::test_tiny_run_writes_every_output",
    ),
    "python -m experiments.ablations.run --out experiments/ablations/results": (
        ELSEWHERE,
        "tests/experiments/test_ablations.py::test_tiny_run_of_every_setting_then_resume",
    ),
    "OMP_NUM_THREADS=1 python train.py --config experiments/convergence/config.yaml --seed 0 "
    "--output-dir experiments/convergence/results/convit_seed0": (ELSEWHERE, CONVERGENCE),
    "OMP_NUM_THREADS=1 python train.py --config experiments/convergence/config.yaml --seed 0 --local-up-to-layer 0 "
    "--output-dir experiments/convergence/results/deit_seed0": (ELSEWHERE, CONVERGENCE),
    "python -m convit.locality --log experiments/convergence/results/convit_seed0/log.jsonl "
    "--log experiments/convergence/results/convit_seed1/log.jsonl --log experiments/convergence/results/convit_seed2/log.jsonl "
    "--log experiments/convergence/results/deit_seed0/log.jsonl --log experiments/convergence/results/deit_seed1/log.jsonl "
    "--log experiments/convergence/results/deit_seed2/log.jsonl "
    "--label ConViT --label ConViT --label ConViT --label DeiT --label DeiT --label DeiT "
    "--out experiments/convergence/results/figures": (ELSEWHERE, CONVERGENCE),
    "OMP_NUM_THREADS=1 python train.py --config experiments/dynamics/config.yaml "
    "--output-dir experiments/dynamics/results/paper_lr": (ELSEWHERE, CONVERGENCE),
    "OMP_NUM_THREADS=1 python train.py --config experiments/dynamics/config.yaml --gate-lr-scale 20 "
    "--output-dir experiments/dynamics/results/gate_lr_x20": (ELSEWHERE, CONVERGENCE),
    "python -m convit.locality --log experiments/dynamics/results/paper_lr/log.jsonl "
    "--log experiments/dynamics/results/gate_lr_x20/log.jsonl --out experiments/dynamics/results/figures": (
        ELSEWHERE,
        CONVERGENCE,
    ),
    "python benchmarks/bench_models.py --model convit_tiny --img-size 224 --batch 16 --repeats 7 --runs 3 --no-timm "
    "--threads 2": (ELSEWHERE, "tests/test_bench.py"),
    "python benchmarks/bench_models.py --model convit_tiny --img-size 224 --batch 16 --repeats 7 --runs 3 --no-timm "
    "--threads 1 --no-memory": (ELSEWHERE, "tests/test_bench.py"),
    "python benchmarks/bench_models.py --model convit_tiny --img-size 224 --batch 16 --repeats 7 --runs 3 --no-timm "
    "--threads 1 --no-memory --compile": (ELSEWHERE, "tests/test_bench.py"),
    "git -C pytorch-image-models show HEAD:train.py > timm_scripts/train.py": ("timm_scripts", None),
    "git -C pytorch-image-models show HEAD:validate.py > timm_scripts/validate.py": ("timm_scripts", None),
    "python benchmarks/bench_epoch.py --timm-scripts timm_scripts --threads 2 --repeats 3": (
        ELSEWHERE,
        "tests/test_bench.py::test_epoch_benchmark_runs_its_smallest_form",
    ),
    "python benchmarks/bench_epoch.py --timm-scripts timm_scripts --threads 1 --repeats 3": (
        ELSEWHERE,
        "tests/test_bench.py::test_epoch_benchmark_runs_its_smallest_form",
    ),
    "python benchmarks/bench_epoch.py --timm-scripts timm_scripts --task digits --epochs 8 --threads 2 --repeats 3": (
        ELSEWHERE,
        "tests/test_bench.py::test_digits_task_writes_our_split_as_pngs",
    ),
    "python benchmarks/bench_epoch.py --timm-scripts timm_scripts --task digits --epochs 8 --threads 1 --repeats 3": (
        ELSEWHERE,
        "tests/test_bench.py::test_digits_task_writes_our_split_as_pngs",
    ),
    "python benchmarks/bench_extras.py --threads 1 --rounds 3": (
        ELSEWHERE,
        "tests/test_bench.py::test_extras_benchmark_measures_every_extra",
    ),
    "python benchmarks/bench_extras.py --threads 2 --rounds 3": (
        ELSEWHERE,
        "tests/test_bench.py::test_extras_benchmark_measures_every_extra",
    ),
    "python benchmarks/bench_epoch.py --baseline ours --repeats 3": (
        ELSEWHERE,
        "tests/test_bench.py::test_epoch_benchmark_runs_its_smallest_form",
    ),
    "python -m experiments.from_vit.distance": (ELSEWHERE, "tests/test_convert.py::test_docs_commands"),
    "python train.py --local-up-to-layer 0 --output-dir out/deit_digits": (
        ELSEWHERE,
        "tests/test_convert.py::test_docs_commands",
    ),
    "python train.py --finetune out/deit_digits/best.pth --output-dir out/convit_from_deit": (
        ELSEWHERE,
        "tests/test_convert.py::test_docs_commands",
    ),
    "python -m convit.locality --checkpoint out/convit_from_deit/best.pth --intervene --authors-measure "
    "--out out/locality_from_deit": (ELSEWHERE, "tests/test_convert.py::test_docs_commands"),
    "python -m experiments.from_vit.run --out experiments/from_vit/results --resume": (
        ELSEWHERE,
        "tests/experiments/test_from_vit.py::test_from_vit_experiment_smallest_form_and_resume",
    ),
    "python train.py --config cluttered": (
        ELSEWHERE,
        "tests/data/test_cluttered.py::test_train_eval_and_locality_on_cluttered",
    ),
    "python eval.py --checkpoint out/cluttered/best.pth": (
        ELSEWHERE,
        "tests/data/test_cluttered.py::test_train_eval_and_locality_on_cluttered",
    ),
    "python -m convit.locality --checkpoint out/cluttered/best.pth --data cluttered --out out/cluttered/locality": (
        ELSEWHERE,
        "tests/data/test_cluttered.py::test_train_eval_and_locality_on_cluttered",
    ),
    "OMP_NUM_THREADS=1 python -m experiments.cluttered.run --out experiments/cluttered/results": (
        ELSEWHERE,
        "tests/data/test_cluttered.py::test_experiment_command_smallest_form",
    ),
    "OMP_NUM_THREADS=1 python -m experiments.cluttered.run --out experiments/cluttered/results --resume": (
        ELSEWHERE,
        "tests/data/test_cluttered.py::test_experiment_command_smallest_form",
    ),
    "python benchmarks/bench_gpsa_layout.py --threads 1": (
        ELSEWHERE,
        "tests/test_bench.py::test_layout_benchmark_compares_three_forms_of_the_same_layer",
    ),
}


def test_every_readme_command_is_covered():
    commands = readme_commands()
    assert set(commands) == set(COVERED), (
        f"not covered: {sorted(set(commands) - set(COVERED))}; gone: {sorted(set(COVERED) - set(commands))}"
    )
    for kind, where in COVERED.values():
        if kind == ELSEWHERE:  # the test that runs it exists
            path, _, name = where.partition("::")
            assert (ROOT / path).is_file() and (not name or f"def {name}(" in (ROOT / path).read_text()), where


def test_set_up_and_test_commands_are_what_ci_runs():
    check_ci_runs(*(where for kind, where in COVERED.values() if kind == "ci"))


def test_readme_python_snippets_run():
    """README's ```python blocks, executed as they are."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    for block in blocks:
        scope = {}
        exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 (the repository's own README)
    assert scope["model"].num_classes == 100 and scope["from_deit"].local_up_to_layer == 10


def test_timm_script_extraction_commands(tmp_path):
    run_timm_script_extraction(tmp_path)


def test_slurm_example():
    check_sbatch()


def test_digits_commands(digits_run, monkeypatch):
    run_eval_digits(digits_run)
    monkeypatch.chdir(digits_run.parent.parent)
    run_locality_digits(digits_run)


@pytest.mark.slow
@pytest.mark.parametrize("config", [[], ["--config", "configs/in1k.yaml"]], ids=["no-config", "in1k"])
def test_convit_base_commands(data, tmp_path, config):
    convit_base(data, tmp_path, config)


def test_torchrun_and_resume_commands(data, tmp_path):
    run_torchrun_then_resume(data, tmp_path)


def test_eval_commands(data, tmp_path, monkeypatch):
    run_eval_forms(data, tmp_path)
    run_eval_pretrained_offline(data, tmp_path, monkeypatch)


def test_train_py_is_the_digits_recipe():
    """`python train.py` is configs/digits.yaml; its smallest form (one epoch, small model) runs in digits_run."""
    sys.path.insert(0, str(ROOT))
    from convit.training.config import parse_args

    assert parse_args([]) == parse_args(["--config", "configs/digits.yaml"])


def test_convergence_and_dynamics_commands(tmp_path):
    """README's convergence and dynamics commands at one epoch of a 2-block model (every seed the text names),
    then its plotting commands on those logs, all under tmp_path instead of experiments/."""
    moved = str(tmp_path) + "/"
    commands = [
        c.replace("experiments/convergence/results/", moved + "convergence_").replace(
            "experiments/dynamics/results/", moved + "dynamics_"
        )
        for c in readme_commands()
    ]
    trains = [c for c in commands if "train.py --config experiments/" in c and moved in c]
    assert len(trains) == 4
    for command in trains:
        args = command.split()[command.split().index("train.py") + 1 :]
        tiny = ["--epochs", "1", "--depth", "2", "--embed-dim", "32", "--progress", "false", "--locality-images", "4"]
        if "--local-up-to-layer" not in args:
            tiny += ["--local-up-to-layer", "1"]
        seeds = ["0", "1", "2"] if "--seed" in args else [None]
        for seed in seeds:
            run = [a.replace("seed0", f"seed{seed}") for a in args] if seed else args
            if seed:
                run[run.index("--seed") + 1] = seed
            run_script("train.py", [*run, *tiny])
    plots = [c for c in commands if c.startswith("python -m convit.locality --log " + moved)]
    assert len(plots) == 2
    for command in plots:
        proc = run_module("convit.locality", command.split()[3:])
        assert proc.returncode == 0, proc.stderr
        out = command.split()[command.split().index("--out") + 1]
        Image.open(f"{out}/training_curves.png").verify()
