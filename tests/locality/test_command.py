"""``python -m convit.locality``: side-by-side runs, timm models, overlays, report.md, bad input, README commands."""

import csv
import json

import pytest
import torch
from conftest import TINY_MODEL, run_module, run_script
from PIL import Image

from convit import ConViT, UserError
from convit.locality import __main__ as command
from convit.training.checkpoint import build_checkpoint, save_checkpoint


def training_checkpoint(path, patch_size=4, local_up_to_layer=2, num_classes=10):
    """A tiny ConViT checkpoint as train.py writes it, on a (16 / patch_size)^2 grid."""
    kwargs = dict(img_size=16, patch_size=patch_size, embed_dim=16, num_heads=4, depth=3)
    kwargs["local_up_to_layer"] = local_up_to_layer
    model = ConViT(num_classes=num_classes, **kwargs)
    save_checkpoint(build_checkpoint(model, "convit_tiny", kwargs, None, num_classes=num_classes, epoch=1), path)
    return path


def test_side_by_side_with_different_grids(tmp_path):
    (tmp_path / "convit").mkdir()
    (tmp_path / "deit").mkdir()
    a = training_checkpoint(tmp_path / "convit" / "best.pth", patch_size=4)
    b = training_checkpoint(tmp_path / "deit" / "best.pth", patch_size=8, local_up_to_layer=0)
    out = tmp_path / "out"
    result = command.main(
        ["--checkpoint", str(a), "--checkpoint", str(b), "--num-images", "3", "--query", "1,1", "--out", str(out)]
    )
    assert [r["label"] for r in result["models"]] == ["convit", "deit"]
    assert [r["grid_size"] for r in result["models"]] == [[4, 4], [2, 2]]
    assert "grids differ" in result["notes"][0]
    rows = list(csv.DictReader(open(out / "locality.csv")))
    assert rows[0]["model"] == "convit" and rows[-1]["model"] == "deit" and len(rows) == 2 * 3 * 4
    assert rows[0]["centre_dx"] != "" and rows[-1]["centre_dx"] == "" and rows[-1]["gate"] == ""
    first = rows[0]
    assert float(first["sharpness"]) == pytest.approx(1.0)  # local init, locality_strength 1
    for name in ("nonlocality_compare.png", "convit/centres.png", "convit/overlay_image0.png", "deit/nonlocality.png"):
        Image.open(out / name).verify()
    assert not (out / "deit" / "gates.png").exists()  # no GPSA, no gates
    report = (out / "report.md").read_text()
    assert "grids differ" in report
    for name in ("nonlocality_compare.png", "locality.csv", "convit/overlay_image0.png", "deit/attention_maps.png"):
        assert f"({name})" in report
    # every file written is placed in the report
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"report.md"}
    assert all(f"({name})" in report for name in written)


def test_timm_models_by_name_and_checkpoint(tmp_path):
    import timm

    deit = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3)
    torch.save(deit.state_dict(), tmp_path / "deit.pth")
    result = command.main(
        [
            "--model",
            "deit_tiny_patch16_224",
            "--checkpoint",
            str(tmp_path / "deit.pth"),
            "--num-images",
            "2",
            "--images",
            "1,",
            "--query",
            "0,13",
            "--ablate",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert result["architecture"] == "VisionTransformer" and result["grid_size"] == [14, 14]
    assert result["images"] == [1] and result["query"] == [0, 13]
    assert torch.tensor(result["nonlocality"]).shape == (12, 3) and result["gates"] == []
    assert torch.tensor(result["ablation"]["drop"]).shape == (12, 3)
    Image.open(tmp_path / "out" / "overlay_image1.png").verify()
    loaded = command.load_model("deit_tiny_patch16_224", str(tmp_path / "deit.pth"))
    assert torch.equal(loaded.state_dict()["head.weight"], deit.state_dict()["head.weight"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "resnet18"], "ResNet has no attention the locality measures support"),
        (["--checkpoint", "CKPT", "--query", "0,0", "--query", "4,1"], "--query 4,1 is outside the 4x4 patch grid"),
        (["--checkpoint", "CKPT", "--images", "0,5"], "--images index 5 is outside the 2 images"),
        (["--checkpoint", "CKPT", "--images", "two"], "--images must be a count N or indices"),
        (["--checkpoint", "CKPT", "--checkpoint", "CKPT", "--model", "a", "--model", "b", "--model", "c"], "3 --model"),
    ],
)
def test_bad_input_is_one_line(tmp_path, argv, message):
    checkpoint = training_checkpoint(tmp_path / "c.pth")
    argv = [str(checkpoint) if a == "CKPT" else a for a in argv]
    with pytest.raises(UserError) as error:
        command.main(argv + ["--num-images", "2", "--out", str(tmp_path / "out")])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unreadable_image_is_one_line(tmp_path):
    checkpoint = training_checkpoint(tmp_path / "c.pth", num_classes=2)
    (tmp_path / "data" / "a").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "data" / "a" / "0.png")
    (tmp_path / "data" / "a" / "1.png").write_bytes(b"not a png")
    proc = run_module(
        "convit.locality", ["--checkpoint", checkpoint, "--data-path", tmp_path / "data", "--out", tmp_path / "o"]
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot read image" in proc.stderr and "1.png" in proc.stderr


def test_readme_commands(tmp_path):
    """README's "Locality analysis" commands in their smallest form: train a ConViT and its DeiT twin for one
    epoch, compare them side by side with overlays, plot a training log."""
    tiny = TINY_MODEL + ["--epochs", "1", "--locality-images", "8"]
    run_script("train.py", tiny + ["--output-dir", tmp_path / "convit_digits"])
    run_script("train.py", tiny + ["--local-up-to-layer", "0", "--output-dir", tmp_path / "deit_digits"])
    out = tmp_path / "locality_digits"
    proc = run_module(
        "convit.locality",
        [
            "--checkpoint",
            tmp_path / "convit_digits" / "best.pth",
            "--checkpoint",
            tmp_path / "deit_digits" / "best.pth",
            "--num-images",
            "4",
            "--images",
            "1",
            "--query",
            "0,0",
            "--query",
            "1,1",
            "--ablate",
            "--out",
            out,
        ],
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("nonlocality_compare.png", "convit_digits/overlay_image0.png", "convit_digits/centres.png"):
        Image.open(out / name).verify()
    data = json.loads((out / "locality.json").read_text())
    assert [m["local_up_to_layer"] for m in data["models"]] == [1, 0]
    logged = json.loads((tmp_path / "convit_digits" / "log.jsonl").read_text().splitlines()[0])["locality"]
    assert torch.tensor(logged["centres"]).shape == (1, 4, 2) and len(logged["sharpness"]) == 1
    proc = run_module("convit.locality", ["--log", tmp_path / "convit_digits" / "log.jsonl", "--out", tmp_path / "log"])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "log" / "centres_over_epochs.png").is_file()


def write_log(path, local_up_to_layer, epochs=3):
    """A log.jsonl as train.py writes it: per epoch the losses, top-1 and a tiny ConViT's locality."""
    from convit.locality import epoch_locality

    model = ConViT(img_size=16, patch_size=4, embed_dim=16, num_heads=4, depth=3, local_up_to_layer=local_up_to_layer)
    images = torch.randn(4, 3, 16, 16)
    path.parent.mkdir(parents=True)
    with open(path, "w") as f:
        for epoch in range(epochs):
            row = {
                "epoch": epoch,
                "train_loss": 2.0 / (epoch + 1),
                "val_loss": 2.1 / (epoch + 1),
                "val_acc1": 10.0 * epoch,
            }
            f.write(json.dumps({**row, "locality": epoch_locality(model, images)}) + "\n")
    return path


def test_several_logs_overlay_their_training_curves(tmp_path):
    """Seeds of two settings: each run's plots in its own folder, all curves in one figure; labels must match."""
    logs = [
        write_log(tmp_path / f"{name}_seed{s}" / "log.jsonl", layers)
        for name, layers in (("convit", 2), ("deit", 0))
        for s in (0, 1)
    ]
    argv = [a for log in logs for a in ("--log", str(log))]
    labels = ["--label", "ConViT", "--label", "ConViT", "--label", "DeiT", "--label", "DeiT"]
    result = command.main(argv + labels + ["--out", str(tmp_path / "out")])
    Image.open(tmp_path / "out" / "training_curves.png").verify()
    for run in ("convit_seed0", "convit_seed1", "deit_seed0", "deit_seed1"):
        assert (tmp_path / "out" / run / "nonlocality_over_epochs.png").is_file()
        assert (tmp_path / "out" / run / "training_curves.png").is_file()
    assert (tmp_path / "out" / "convit_seed0" / "gates_over_epochs.png").is_file()
    assert not (tmp_path / "out" / "deit_seed0" / "gates_over_epochs.png").exists()
    assert len(result["plots"]) == 2 * 5 + 2 * 2 + 1  # ConViT: curves, non-locality, gates, sharpness, centres
    with pytest.raises(UserError, match="3 --label for 4 --log"):
        command.main(argv + labels[:6] + ["--out", str(tmp_path / "out2")])
    with pytest.raises(UserError, match="no such file"):
        command.main(["--log", str(tmp_path / "missing" / "log.jsonl"), "--out", str(tmp_path / "out3")])


@pytest.mark.parametrize(
    "models", [["--model", "convit_tiny"], ["--model", "convit_tiny", "--model", "deit_tiny_patch16_224"]]
)
def test_readme_command_forms_by_name(tmp_path, models):
    """README's first two command forms (untrained models by name), on two digits."""
    result = command.main(models + ["--num-images", "2", "--images", "0", "--out", str(tmp_path / "out")])
    reports = result.get("models", [result])
    assert [r["grid_size"] for r in reports] == [[14, 14]] * len(reports)
    assert (tmp_path / "out" / "report.md").is_file()


def test_readme_command_form_with_folder_images_and_queries(tmp_path):
    """README's third command form: a checkpoint on an image folder, chosen images, two queries, ablation."""
    checkpoint = training_checkpoint(tmp_path / "best.pth", num_classes=2)
    for label in ("cat", "dog"):
        (tmp_path / "val" / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20, 24), (60 * i, 100, 200)).save(tmp_path / "val" / label / f"{i}.png")
    argv = ["--checkpoint", str(checkpoint), "--data-path", str(tmp_path / "val"), "--num-images", "4"]
    argv += ["--images", "0,3", "--query", "1,1", "--query", "2,3", "--ablate", "--out", str(tmp_path / "out")]
    report = command.main(argv)
    assert report["images"] == [0, 3] and report["queries"] == [[1, 1], [2, 3]]
    for name in ("overlay_image0.png", "overlay_image3.png", "ablation.png", "attention_maps.png"):
        Image.open(tmp_path / "out" / name).verify()
