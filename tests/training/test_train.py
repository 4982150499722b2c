import json

import pytest
import torch
from conftest import TINY_MODEL, make_image_folder, read_log, run_module, run_script

from convit.weights import CheckpointError, is_training_checkpoint, read_checkpoint

TIMING = ("epoch_time_s", "train_images_per_s")


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """A 1-epoch tiny run on the generated folder (its best.pth feeds the evaluation tests)."""
    out = tmp_path_factory.mktemp("run")
    run_script(
        "train.py", ["--data-path", folder, *TINY_MODEL, "--epochs", "1", "--batch-size", "8", "--output-dir", out]
    )
    return out


def test_outputs_of_a_run(trained):
    assert {p.name for p in trained.iterdir()} == {"config.yaml", "log.jsonl", "summary.csv", "last.pth", "best.pth"}
    (row,) = read_log(trained)
    for key in ("epoch", "lr", "train_loss", "val_loss", "val_acc1", "val_acc5", *TIMING):
        assert isinstance(row[key], (int, float)), key
    assert row["val_images"] == 21
    # non-locality (blocks x heads) and gates (GPSA blocks x heads) on a fixed batch of val images
    assert [len(r) for r in row["locality"]["nonlocality"]] == [4, 4]
    assert [len(r) for r in row["locality"]["gates"]] == [4]
    best = read_checkpoint(trained / "best.pth")
    assert is_training_checkpoint(best) and best["model_name"] == "convit_tiny"
    assert best["model_kwargs"]["embed_dim"] == 32 and best["config"]["data_path"]


def test_eval_counts_are_identical_with_1_and_2_processes(trained, tmp_path):
    results = []
    for nproc in (1, 2):
        out = tmp_path / f"r{nproc}.json"
        run_script(
            "eval.py",
            ["--checkpoint", trained / "best.pth", "--num-workers", "0", "--batch-size", "4", "--output", out],
            nproc=nproc,
        )
        results.append(json.loads(out.read_text()))
    one, two = results
    assert one["val_images"] == two["val_images"] == 21  # odd: no image padded or dropped
    for key in ("val_correct1", "val_correct5", "val_acc1", "val_acc5"):
        assert one[key] == two[key], key
    assert one["val_loss"] == pytest.approx(two["val_loss"], rel=1e-5)
    assert two["world_size"] == 2
    assert one["val_acc1"] == pytest.approx(read_log(trained.parent / trained.name)[0]["val_acc1"])


def test_stopped_and_resumed_run_matches_an_uninterrupted_one(folder, tmp_path):
    args = [
        "--data-path",
        folder,
        *TINY_MODEL,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--repeated-aug",
        "--mixup",
        "0.8",
        "--cutmix",
        "1.0",
        "--smoothing",
        "0.1",
        "--model-ema",
        "--model-ema-decay",
        "0.9",
        "--drop-path",
        "0.1",
    ]
    run_script("train.py", args + ["--output-dir", tmp_path / "full"])
    run_script("train.py", args + ["--output-dir", tmp_path / "part", "--stop-after", "1"])
    assert len(read_log(tmp_path / "part")) == 1
    run_script("train.py", args + ["--output-dir", tmp_path / "part", "--resume", "auto"])
    full, part = (read_checkpoint(tmp_path / d / "last.pth") for d in ("full", "part"))
    assert part["epoch"] == 1
    for key in ("model", "model_ema"):
        for name, value in full[key].items():
            assert torch.equal(value, part[key][name]), (key, name)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(read_log(tmp_path / "full")) == strip(read_log(tmp_path / "part"))
    assert len(read_log(tmp_path / "part")) == 2


def test_digits_train_then_eval(tmp_path):
    run_script("train.py", ["--epochs", "1", "--output-dir", tmp_path, "--progress", "false"])
    out = tmp_path / "r.json"
    run_script("eval.py", ["--checkpoint", tmp_path / "best.pth", "--data", "digits", "--output", out])
    result = json.loads(out.read_text())
    assert result["data"] == "digits" and result["val_images"] == 360
    assert result["val_acc1"] == pytest.approx(read_log(tmp_path)[0]["val_acc1"])


def one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].split(": error: ")[0] in ("train.py", "eval.py"), lines[0]
    return lines[0]


def test_unknown_key_and_missing_folder(tmp_path):
    line = one_error_line(run_script("train.py", ["--epoch", "3"], check=False))
    assert "unknown config key 'epoch'; did you mean 'epochs'" in line
    line = one_error_line(run_script("train.py", ["--data-path", tmp_path / "nope"], check=False))
    assert "nope' not found" in line


def test_unreadable_image_stops_without_a_checkpoint(tmp_path):
    root = make_image_folder(tmp_path / "data", n_train=4, n_val=2)
    (root / "train" / "class_1" / "001.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out"
    for workers in ("0", "1"):  # in the main process and in a DataLoader worker
        proc = run_script(
            "train.py",
            ["--data-path", root, *TINY_MODEL, "--num-workers", workers, "--batch-size", "4", "--output-dir", out],
            check=False,
        )
        line = one_error_line(proc)
        assert "cannot read image '" in line and "class_1/001.jpg" in line
    assert not any(p.suffix in (".pth", ".tmp") for p in out.iterdir())


def test_corrupt_checkpoint(trained, tmp_path, folder):
    bad = tmp_path / "best.pth"
    bad.write_bytes((trained / "best.pth").read_bytes()[:1000])
    line = one_error_line(run_script("eval.py", ["--checkpoint", bad], check=False))
    assert "is corrupt or truncated" in line
    args = [
        "--data-path",
        folder,
        *TINY_MODEL,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--output-dir",
        tmp_path / "o",
        "--resume",
        bad,
    ]
    line = one_error_line(run_script("train.py", args, check=False))
    assert "is corrupt or truncated" in line


def test_eval_of_an_original_authors_checkpoint(folder, tmp_path, capsys):
    """{"model": state_dict, "args": Namespace} as the original code saves it, timm's variant."""
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import eval as eval_script
    from convit.variants import create_model

    torch.manual_seed(0)
    model = create_model("convit_tiny", 3, img_size=32)
    path = tmp_path / "convit_tiny_official.pth"
    torch.save({"model": model.state_dict(), "epoch": 299, "args": argparse.Namespace(lr=5e-4)}, path)
    out = tmp_path / "r.json"
    result = eval_script.main(
        eval_script.parse_args(
            [
                "--model",
                "convit_tiny",
                "--checkpoint",
                str(path),
                "--img-size",
                "32",
                "--data-path",
                str(folder),
                "--num-workers",
                "0",
                "--output",
                str(out),
            ]
        )
    )
    assert result["val_images"] == 21 and json.loads(out.read_text())["val_correct1"] == result["val_correct1"]
    assert "the checkpoint carries no class names" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="name its variant with --model"):
        eval_script.main(eval_script.parse_args(["--checkpoint", str(path), "--data-path", str(folder)]))


class _Payload:
    """Unpickling this runs code: it writes a marker file (as a hostile checkpoint would)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_checkpoint_carrying_code_is_refused_by_every_entry_point(trained, tmp_path, folder):
    marker = tmp_path / "payload_ran"
    ckpt = torch.load(trained / "best.pth", weights_only=True)
    evil = tmp_path / "best.pth"
    torch.save({**ckpt, "extra": _Payload(marker)}, evil)  # a real best.pth plus a payload
    runs = [
        ("eval.py", ["--checkpoint", evil]),
        (
            "train.py",
            [
                "--data-path",
                folder,
                *TINY_MODEL,
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--output-dir",
                tmp_path / "o",
                "--resume",
                evil,
            ],
        ),
    ]
    for script, args in runs:
        proc = run_script(script, args, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "holds code or objects other than weights" in one_error_line(proc)
    proc = run_module("convit.locality", ["--checkpoint", evil, "--out", tmp_path / "loc"])
    assert proc.returncode != 0 and "holds code" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_eval_refuses_data_whose_class_names_differ(trained, tmp_path, folder):
    import shutil

    renamed = tmp_path / "renamed"
    shutil.copytree(folder, renamed)
    (renamed / "val" / "class_2").rename(renamed / "val" / "class_9")
    proc = run_script("eval.py", ["--checkpoint", trained / "best.pth", "--data-path", renamed], check=False)
    line = one_error_line(proc)
    assert "classes differ from the data's at 1 place(s), e.g. 'class_2' vs 'class_9'" in line
    assert read_checkpoint(trained / "best.pth")["class_names"] == ["class_0", "class_1", "class_2"]
