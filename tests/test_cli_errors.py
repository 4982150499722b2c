"""Every bad input a user reported, through the real entry points: exit code 2, one line, nothing written."""

import hashlib
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_MODEL, child_env, fails_in_one_line, make_image_folder, run_script

sys.path.insert(0, str(ROOT))
import eval as eval_script  # noqa: E402
import train as train_script  # noqa: E402

# the digits recipe with a 2-block model: a run of one epoch takes seconds
DIGITS_TINY = ["--depth", "2", "--local-up-to-layer", "1", "--embed-dim", "32", "--progress", "false"]


def snapshot(folder):
    """{file name: digest} of a folder (empty when it does not exist)."""
    if not folder.exists():
        return {}
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "run"
    run_script("train.py", [*DIGITS_TINY, "--epochs", "1", "--output-dir", out])
    return out


def bad_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("lr: [0.1\nepochs: 3\n")
    return ["--config", tmp_path / "bad.yaml"]


def binary_yaml(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)))
    return ["--config", tmp_path / "bin.yaml"]


def yes_epochs(tmp_path):
    (tmp_path / "yes.yaml").write_text(
        "base: digits.yaml\nepochs: yes\n".replace("digits.yaml", str(ROOT / "configs" / "digits.yaml"))
    )
    return ["--config", tmp_path / "yes.yaml"]


def duplicate_keys(tmp_path):
    (tmp_path / "dup.yaml").write_text("epochs: 3\nlr: 0.1\nepochs: 5\n")
    return ["--config", tmp_path / "dup.yaml"]


def deeply_nested(tmp_path):
    (tmp_path / "deep.yaml").write_text("model_kwargs: " + "[" * 20000 + "]" * 20000 + "\n")
    return ["--config", tmp_path / "deep.yaml"]


def huge_value(tmp_path):
    (tmp_path / "huge.yaml").write_text("opt: " + "x" * 100_000 + "\n")
    return ["--config", tmp_path / "huge.yaml"]


TRAIN_CASES = [
    (["--lr", "-1"], "lr must lie in (0, 1000.0]"),
    (["--lr", "1e39"], "lr must lie in (0, 1000.0], not 1e+39"),
    (["--seed", str(2**70)], "seed must lie in [0, "),
    (["--aa", "garbage"], "aa 'garbage' is not an augmentation timm knows"),
    (["--mlp-ratio", "abc"], "model argument mlp_ratio must be a number, not 'abc'"),
    (["--num-workers", "100000"], "num_workers must lie in [0, 1024]"),
    (["--stop-signals", "TERM,KILL"], "stop_signals must list signals among TERM, INT, USR1, USR2"),
    (duplicate_keys, "key 'epochs' appears twice (line 3)"),
    (deeply_nested, "nested too deeply"),
    (huge_value, "unknown optimizer 'xxxxx"),
    (["--lr", "nan"], "lr must lie in"),
    (["--opt", "nonsense"], "unknown optimizer 'nonsense'"),
    (["--sched", "nonsense"], "sched must be one of"),
    (["--num-workers", "-1"], "num_workers must lie in"),
    (["--drop-path", "2"], "drop_path must lie in"),
    (["--patch-size", "0"], "patch_size=0 must be a positive integer"),
    (["--in-chans", "0"], "in_chans=0 must be a positive integer"),
    (["--num-heads", "5", "--embed-dim", "96"], "embed_dim=96 (total width) is not divisible by num_heads=5"),
    (["--local-up-to-layer", "99"], "local_up_to_layer=99 must lie between 0 and depth=6"),
    (["--img-size", "17"], "img_size=17 is not a positive multiple of patch_size=4"),
    (["--smoothing", "1.5"], "smoothing must lie in"),
    (["--stop-after", "-1"], "stop_after must lie in"),
    (["--model-ema-decay", "5"], "model_ema_decay must lie in"),
    (["--batch-size", "-1"], "batch_size must lie in"),
    (["--model", "convit_huge"], "unknown model 'convit_huge'"),
    (["--model-kwargs", "embed_dims=3"], "unknown model argument 'embed_dims'; did you mean 'embed_dim'"),
    (["--config", "digits", "--data-path", "FOLDER"], "ImageFolder images are RGB (3 channels)"),
    (["--data-path", "/no/such/folder"], "data folder '/no/such/folder' not found"),
    (["--sampling-ratio", "0.0001", "--data-path", "FOLDER", *TINY_MODEL], "fewer than --batch-size"),
    (bad_yaml, "is not valid YAML"),
    (binary_yaml, "is not valid YAML"),
    (yes_epochs, "config key 'epochs'"),
    (["--tensorboard", "--resume", "nope.pth"], "--resume 'nope.pth' not found"),
]


@pytest.mark.parametrize("args, message", TRAIN_CASES, ids=[str(i) for i in range(len(TRAIN_CASES))])
def test_train_bad_input(tmp_path, capsys, args, message):
    folder = make_image_folder(tmp_path / "imgs", n_train=2, n_val=1) if "FOLDER" in str(args) else None
    args = args(tmp_path) if callable(args) else args
    out = tmp_path / "out"
    argv = [str(folder if a == "FOLDER" else a) for a in args] + ["--output-dir", str(out), "--progress", "false"]
    line = fails_in_one_line(capsys, "train.py", train_script.main, argv)
    assert message in line, line
    assert len(line) < 700
    assert not out.exists()


@pytest.mark.parametrize(
    "launcher_env", [{"WORLD_SIZE": "2", "RANK": "0"}, {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "localhost"}]
)
def test_distributed_variables_left_in_the_shell(tmp_path, launcher_env):
    env = {**child_env(), **launcher_env}
    for _ in range(2):  # the second error from the same shell is reported too
        proc = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *DIGITS_TINY, "--output-dir", str(tmp_path / "o")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert "no launcher started this process" in proc.stderr and "torchrun" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_an_empty_output_dir_is_refused(tmp_path, capsys):
    line = fails_in_one_line(capsys, "train.py", train_script.main, [*DIGITS_TINY, "--output-dir", ""])
    assert "--output-dir is empty" in line


@pytest.mark.parametrize(
    "change, key",
    [(["--embed-dim", "48"], "model_kwargs"), (["--img-size", "24"], "img_size"), (["--opt", "sgd"], "opt")],
)
def test_resume_after_changing_what_last_pth_was_made_for(digits_run, capsys, change, key):
    before = snapshot(digits_run)
    argv = [*DIGITS_TINY, "--epochs", "2", "--output-dir", str(digits_run), "--resume", "auto", *change]
    line = fails_in_one_line(capsys, "train.py", train_script.main, [str(a) for a in argv])
    assert f"the run was trained with {key}=" in line and "start a new run" in line
    assert snapshot(digits_run) == before


def test_rerun_into_a_finished_run_is_refused(digits_run, capsys):
    before = snapshot(digits_run)
    argv = [*DIGITS_TINY, "--epochs", "1", "--output-dir", str(digits_run)]
    line = fails_in_one_line(capsys, "train.py", train_script.main, argv)
    assert "holds a previous run" in line and "--resume auto" in line and "--overwrite" in line
    assert snapshot(digits_run) == before


def test_eval_bad_input(digits_run, tmp_path, capsys):
    def fails(argv):
        return fails_in_one_line(capsys, "eval.py", lambda: eval_script.main(eval_script.parse_args(argv)))

    best = str(digits_run / "best.pth")
    assert "batch_size must lie in [1, inf), not 0" in fails(["--checkpoint", best, "--batch-size", "0"])
    assert "interpolation must be one of" in fails(["--checkpoint", best, "--interpolation", "cubic"])
    assert "is a folder; name a JSON file" in fails(["--checkpoint", best, "--output", str(tmp_path)])
    assert "--pretrained needs --model NAME" in fails(["--pretrained"])
    # ConViT-Ti weights named as ConViT-S
    torch.save(torch.load(best, weights_only=True)["model"], tmp_path / "tiny.pth")
    line = fails(["--model", "convit_small", "--checkpoint", str(tmp_path / "tiny.pth")])
    assert "does not fit the model" in line
    assert not (tmp_path / "results.json").exists()


def test_locality_bad_input(digits_run, tmp_path, capsys):
    from convit.locality import __main__ as locality_command

    def fails(argv):
        return fails_in_one_line(capsys, "python -m convit.locality", locality_command.main, [str(a) for a in argv])

    best = digits_run / "best.pth"
    (tmp_path / "a_file").write_text("")
    assert (
        "--out '" in fails(["--checkpoint", best, "--out", tmp_path / "a_file"])
        and "is a file" in capsys.readouterr().err + "is a file"
    )
    assert "--batch-size must be at least 1" in fails(
        ["--checkpoint", best, "--batch-size", "-1", "--out", tmp_path / "o"]
    )
    root = make_image_folder(tmp_path / "imgs", n_train=1, n_val=1, size=16)
    line = fails(["--checkpoint", best, "--data-path", root, "--ablate", "--out", tmp_path / "o"])
    assert "holds train/ and val/ folders, not class folders" in line
    line = fails(["--checkpoint", best, "--data-path", root / "val", "--ablate", "--out", tmp_path / "o"])
    assert "--ablate needs the labels the model was trained on: the checkpoint has 10 classes, the data 3" in line
    assert not (tmp_path / "o").exists()


def test_no_command_writes_over_its_input(digits_run, tmp_path, capsys):
    from convit.locality import __main__ as locality_command

    before = snapshot(digits_run)
    best = str(digits_run / "best.pth")
    line = fails_in_one_line(
        capsys, "eval.py", lambda: eval_script.main(eval_script.parse_args(["--checkpoint", best, "--output", best]))
    )
    assert "is the checkpoint itself" in line
    root = make_image_folder(tmp_path / "imgs", n_train=1, n_val=1, size=16)
    argv = ["--checkpoint", best, "--data-path", str(root / "val"), "--out", str(root / "val" / "report")]
    assert "lies inside --data-path" in fails_in_one_line(
        capsys, "python -m convit.locality", locality_command.main, argv
    )
    assert not (root / "val" / "report").exists() and snapshot(digits_run) == before


def test_resume_auto_without_last_pth_through_train(digits_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "log.jsonl", "best.pth", "summary.csv"):
        (run / name).write_bytes((digits_run / name).read_bytes())
    before = snapshot(run)
    argv = [*DIGITS_TINY, "--epochs", "2", "--output-dir", str(run), "--resume", "auto"]
    line = fails_in_one_line(capsys, "train.py", train_script.main, argv)
    assert "holds a previous run" in line and "but no last.pth" in line
    assert snapshot(run) == before
