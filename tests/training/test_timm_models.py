"""Any timm model under the training engine: a ResNet and a DeiT train, evaluate, predict and fine-tune; ConViT's
options say when they do not apply; the locality measures run where an adapter reads the model."""

import json

import pytest
import timm
import torch
from conftest import NO_AUG, fails_in_one_line, read_log
from doc_commands import page_commands, run_command

from convit.training import train
from convit.training.config import CONFIG_DIR, resolve
from convit.weights import read_checkpoint

FAST = ["--num-workers", "0", "--progress", "false"]
# a DeiT of timm's, shrunk through the arguments its class takes: 16x16 images in 4x4 patches, width 32, 2 blocks
TINY_DEIT = ["--model", "deit_tiny_patch16_224", "--img-size", "16", "--patch-size", "4"]
TINY_DEIT += ["--embed-dim", "32", "--depth", "2", "--num-heads", "2", *FAST, *NO_AUG]
# the digits, shrunk: 1 epoch on a twentieth of the training images
DIGITS_SHRINK = ["--epochs", "1", "--sampling-ratio", "0.05", "--batch-size", "16", "--locality-images", "4", *FAST]


def baselines_command() -> str:
    (command,) = [c for c in page_commands("training.md") if "--model resnet18" in c]
    return command


def test_the_baselines_command_trains_and_evaluates_a_resnet(tmp_path, monkeypatch, capsys):
    """docs/training.md's command literally (shrunk), then eval.py on its checkpoint: no locality, said once."""
    from convit.training.evaluate import main, parse_args

    monkeypatch.chdir(tmp_path)
    run_command(baselines_command(), tmp_path, shrink=DIGITS_SHRINK)
    out = tmp_path / "out" / "resnet18_digits"
    printed = capsys.readouterr().out
    assert printed.count("note: no locality measures in the log: ResNet has no attention") == 1
    (row,) = read_log(out)
    assert "locality" not in row and row["val_images"] == 360
    best = read_checkpoint(out / "best.pth")
    assert best["model_name"] == "resnet18" and "img_size" not in best["model_kwargs"]
    results = main(parse_args(["--checkpoint", str(out / "best.pth"), "--num-workers", "0"]))
    assert results["model"] == "resnet18" and results["val_acc1"] == pytest.approx(row["val_acc1"])


@pytest.fixture(scope="module")
def deit_run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("deit")
    train.main(["--data-path", str(folder), *TINY_DEIT, "--epochs", "1", "--batch-size", "8", "--output-dir", str(out)])
    return out


def test_a_deit_logs_locality_and_rebuilds_for_eval_and_predict(deit_run, folder, tmp_path):
    from convit.predict import main as predict
    from convit.predict import parse_args as predict_args
    from convit.training.evaluate import main, parse_args

    (row,) = read_log(deit_run)
    assert [len(heads) for heads in row["locality"]["nonlocality"]] == [2, 2]  # blocks x heads
    best = read_checkpoint(deit_run / "best.pth")
    assert best["model_name"] == "deit_tiny_patch16_224"
    assert {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2}.items() <= best["model_kwargs"].items()
    results = main(parse_args(["--checkpoint", str(deit_run / "best.pth"), "--num-workers", "0"]))
    assert results["val_images"] == 21 and results["val_acc1"] == pytest.approx(row["val_acc1"])
    labels = tmp_path / "labels.json"
    predict(predict_args(["--checkpoint", str(deit_run / "best.pth"), str(folder / "val"), "--output", str(labels)]))
    rows = json.loads(labels.read_text())
    assert len(rows) == 21 and {r["top"][0]["class"] for r in rows} <= {"class_0", "class_1", "class_2"}


def test_finetune_from_a_deit_checkpoint(deit_run, folder, tmp_path, capsys):
    args = ["--data-path", str(folder), *TINY_DEIT, "--epochs", "1", "--batch-size", "8", "--lr", "1e-5"]
    train.main([*args, "--finetune", str(deit_run / "best.pth"), "--output-dir", str(tmp_path / "ft")])
    printed = capsys.readouterr().out
    assert "weights from '" in printed and "(deit_tiny_patch16_224, train.py)" in printed
    assert "the source's head (3 classes) is kept" in printed
    start = read_checkpoint(deit_run / "best.pth")["model"]["blocks.0.attn.qkv.weight"]
    tuned = read_checkpoint(tmp_path / "ft" / "best.pth")["model"]["blocks.0.attn.qkv.weight"]
    assert torch.allclose(start, tuned, atol=1e-3) and not torch.equal(start, tuned)  # started there, then trained


def test_finetune_pretrained_reads_timm_weights_offline(tmp_path, capsys):
    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=1000).state_dict(), weights)
    source = torch.load(weights)["layer1.0.conv1.weight"]
    out = tmp_path / "ft"
    train.main(
        ["--model", "resnet18", *DIGITS_SHRINK, "--locality-images", "0", "--output-dir", str(out)]
        + ["--finetune", "pretrained", "--pretrained-file", str(weights), "--in-chans", "3", "--lr", "1e-6"]
    )
    assert "the head is re-initialised: the source predicts 1000 classes, the data 10" in capsys.readouterr().out
    tuned = read_checkpoint(out / "best.pth")["model"]
    assert tuned["fc.weight"].shape == (10, 512)
    assert torch.allclose(tuned["layer1.0.conv1.weight"], source, atol=1e-3)


def test_recipe_options_a_model_does_not_take_are_left_out_with_a_note(tmp_path):
    recipe = tmp_path / "baseline.yaml"
    recipe.write_text(
        f"base: {CONFIG_DIR / 'digits.yaml'}\nmodel: resnet18\n"
        "model_kwargs: {in_chans: 1, patch_size: 4, local_up_to_layer: 4, zero_init_last: false}\n"
    )
    resolved = resolve(["--config", str(recipe)])
    assert resolved.config.model_kwargs == {"in_chans": 1, "zero_init_last": False}
    assert "resnet18 does not take the recipe's model_kwargs patch_size=4, local_up_to_layer=4: left out" in (
        resolved.notes
    )
    # a DeiT takes the patch size but not the GPSA blocks; a ConViT keeps (and checks) them all
    recipe.write_text(
        recipe.read_text().replace("resnet18", "deit_tiny_patch16_224").replace(", zero_init_last: false", "")
    )
    resolved = resolve(["--config", str(recipe)])
    assert resolved.config.model_kwargs == {"in_chans": 1, "patch_size": 4}
    assert any("local_up_to_layer=4: left out" in note for note in resolved.notes)
    assert resolve([]).config.model_kwargs["local_up_to_layer"] == 4 and not resolve([]).notes


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model", "resnet18", "--local-up-to-layer", "2"],
            "--local-up-to-layer is a ConViT option and resnet18 does not take local_up_to_layer",
        ),
        (
            ["--model", "deit_tiny_patch16_224", "--locality-strength", "2"],
            "--locality-strength is a ConViT option and deit_tiny_patch16_224 does not take locality_strength",
        ),
        (
            ["--model", "resnet18", "--model-kwargs", "local_init=false"],
            "--model-kwargs local_init is a ConViT option and resnet18 does not take local_init",
        ),
        (["--model", "resnet18", "--model-kwargs", "zero_init=false"], "did you mean 'zero_init_last'"),
        (["--model", "resnet18", "--model-kwargs", "zero_init_last=3"], "zero_init_last must be true or false"),
        (["--model", "resnet1"], "unknown model 'resnet1'; did you mean 'resnet18'?"),
    ],
)
def test_options_a_model_does_not_take_are_one_line(args, message, capsys, tmp_path):
    line = fails_in_one_line(capsys, "train.py", train.main, [*args, "--output-dir", str(tmp_path / "out")])
    assert message in line
    assert not (tmp_path / "out").exists()
