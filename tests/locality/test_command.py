"""``python -m convit.locality``: side-by-side runs, timm models, overlays, report.md, bad input, and the commands
of docs/locality.md run as written."""

import csv
import json
import re

import pytest
import torch
from conftest import NO_AUG, ROOT, read_log, run_module
from doc_commands import SHRINK, bash_commands, page_commands, run_command
from PIL import Image

from convit import ConViT, UserError
from convit.locality import __main__ as command
from convit.training.checkpoint import build_checkpoint, save_checkpoint
from convit.training.config import parse_args


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


def page_lines(prefix: str) -> list[str]:
    """docs/locality.md's commands that start with ``prefix``, in the page's order."""
    return [c for c in page_commands("locality.md") if c.startswith(prefix)]


def assert_reported(out, names):
    """Each file is written (figures are readable PNGs) and placed in ``out/report.md``."""
    report = (out / "report.md").read_text()
    for name in names:
        if name.endswith(".png"):
            Image.open(out / name).verify()
        assert (out / name).stat().st_size > 0 and f"({name})" in report, name


def test_the_commands_by_name(tmp_path, monkeypatch):
    """docs/locality.md's untrained models by name, as written, on one digit."""
    monkeypatch.chdir(tmp_path)
    one, two = page_lines("python -m convit.locality --model ")
    result = run_command(one, tmp_path, locality_shrink=["--num-images", "1"])
    out = tmp_path / "out" / "locality"
    assert result["grid_size"] == [14, 14] and result["images"] == [0] and result["queries"] == [[7, 7]]
    assert torch.tensor(result["nonlocality"]).shape == (12, 4) and torch.tensor(result["gates"]).shape == (10, 4)
    assert torch.tensor(result["sharpness"]) == pytest.approx(torch.ones(10, 4))  # local init, strength 1
    rows = list(csv.DictReader(open(out / "locality.csv")))
    assert len(rows) == 12 * 4 and rows[0]["gate"] != "" and rows[-1]["gate"] == ""
    assert json.loads((out / "locality.json").read_text())["nonlocality"] == result["nonlocality"]
    maps = ["nonlocality.png", "gates.png", "nonlocality_parts.png", "centres.png", "attention_maps.png"]
    assert_reported(out, [*maps, "overlay_image0.png", "locality.csv", "locality.json"])
    result = run_command(two, tmp_path, locality_shrink=["--num-images", "1", "--images", "0"])  # overlays: above
    out = tmp_path / "out" / "untrained"
    assert [r["label"] for r in result["models"]] == ["convit_tiny", "deit_tiny_patch16_224"]
    assert [r["grid_size"] for r in result["models"]] == [[14, 14]] * 2 and result["notes"] == []
    rows = list(csv.DictReader(open(out / "locality.csv")))
    assert [r["model"] for r in rows] == ["convit_tiny"] * 48 + ["deit_tiny_patch16_224"] * 36
    assert_reported(out, ["nonlocality_compare.png", "convit_tiny/gates.png", "deit_tiny_patch16_224/nonlocality.png"])
    assert not (out / "deit_tiny_patch16_224" / "gates.png").exists()  # no GPSA, no gates


def test_the_image_folder_commands(folder, tmp_path, monkeypatch):
    """docs/locality.md's training on an image folder then measuring its checkpoint, as written (a 14x14 grid of
    2-pixel patches, one epoch; 18 of the 21 validation images, enough for image 17)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "images").symlink_to(folder)
    monkeypatch.chdir(tmp_path)
    train, measure = [c for c in page_commands("locality.md") if "--data-path data/images" in c]
    assert train.startswith("python train.py ")
    recipe = parse_args(train.split()[2:])  # as the page says: ConViT-S on 224x224 images, a 14x14 grid
    assert (recipe.model, recipe.img_size, recipe.model_kwargs) == ("convit_small", 224, {})
    run_command(train, tmp_path, shrink=[*SHRINK, "--img-size", "28", "--patch-size", "2", "--locality-images", "0"])
    report = run_command(measure, tmp_path, locality_shrink=["--num-images", "18"])
    assert report["grid_size"] == [14, 14] and report["images"] == [0, 17]
    assert report["queries"] == [[7, 7], [2, 11]] and report["data"] == "data/images/val"
    assert torch.tensor(report["ablation"]["drop"]).shape == (2, 4) and 0 <= report["ablation"]["top1"] <= 1
    out = tmp_path / "out" / "images_locality"
    names = ["overlay_image0.png", "overlay_image17.png", "ablation.png", "attention_maps.png", "centres.png"]
    assert_reported(out, names)
    assert sorted(p.name for p in out.glob("overlay_image*.png")) == names[:2]
    rows = list(csv.DictReader(open(out / "locality.csv")))
    assert len(rows) == 2 * 4 and all(r["ablation_drop"] != "" for r in rows)


# train.py's digits recipe at one epoch of 10, on 5 % of the training digits, 2 blocks
DIGITS_SHRINK = [*NO_AUG, "--depth", "2", "--local-up-to-layer", "1", "--embed-dim", "32", "--num-workers", "0"]
DIGITS_SHRINK += ["--progress", "false", "--locality-images", "4", "--stop-after", "1", "--sampling-ratio", "0.05"]


def test_the_digits_twin_commands(tmp_path, monkeypatch):
    """docs/locality.md's digits ConViT and its DeiT twin, as written: train both, compare them side by side,
    plot the ConViT's log; every figure the page shows is written where the page links it."""
    monkeypatch.chdir(tmp_path)
    section = (ROOT / "docs" / "locality.md").read_text().split("## A digits ConViT beside its DeiT twin")[1]
    commands = bash_commands(section)
    assert len(commands) == 4
    for line in commands:
        run_command(line, tmp_path, shrink=DIGITS_SHRINK)
    for run in ("convit_digits", "deit_digits"):
        assert len(read_log(tmp_path / "out" / run)) == 1  # --stop-after 1 of the 10 epochs
    out = tmp_path / "docs" / "figures" / "locality_digits"
    data = json.loads((out / "locality.json").read_text())
    assert [m["label"] for m in data["models"]] == ["convit_digits", "deit_digits"]
    assert [m["local_up_to_layer"] for m in data["models"]] == [1, 0]
    assert [m["images"] for m in data["models"]] == [[0, 1]] * 2
    assert [m["queries"] for m in data["models"]] == [[[1, 1], [2, 2]]] * 2
    logged = json.loads((tmp_path / "out" / "convit_digits" / "log.jsonl").read_text().splitlines()[0])["locality"]
    assert torch.tensor(logged["centres"]).shape == (1, 4, 2) and len(logged["sharpness"]) == 1
    shown = re.findall(r"\(figures/locality_digits/([^)]+)\)", section)
    assert len(shown) == 7 and "report.md" in shown
    for name in shown:  # the page's figures and report, as the commands write them
        assert (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            Image.open(out / name).verify()
    assert_reported(out, [n for n in shown if n != "report.md" and not n.startswith("over_epochs/")])
