import copy
import json
import math

import pytest
import torch
from PIL import Image

from convit import ConViT, UserError
from convit import locality as L
from convit.attention import GPSA
from convit.locality import __main__ as command
from convit.locality.measures import LocalityError, _ablate_head
from convit.training.checkpoint import FORMAT, save_checkpoint


def save_training_checkpoint(model, path, num_classes=10):
    """A checkpoint as train.py writes it (the model name and its arguments beside the weights)."""
    kwargs = dict(img_size=16, patch_size=4, embed_dim=36, num_heads=9, depth=3, local_up_to_layer=2)
    save_checkpoint(
        {
            "format": FORMAT,
            "model_name": "convit_tiny",
            "model_kwargs": kwargs,
            "num_classes": num_classes,
            "config": {},
            "model": model.state_dict(),
            "epoch": 3,
        },
        path,
    )


def tiny(img_size=(8, 10), patch_size=2, heads=9, locality_strength=10.0, **kwargs) -> ConViT:
    # a non-square 4 x 5 patch grid, so that rows and columns cannot be confused
    return ConViT(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=heads * 4,
        num_heads=heads,
        depth=3,
        local_up_to_layer=2,
        locality_strength=locality_strength,
        num_classes=5,
        **kwargs,
    )


def images(model: ConViT, count=3) -> torch.Tensor:
    return torch.randn(count, model.in_chans, *model.patch_embed.img_size)


def grid_positions(rows, cols) -> torch.Tensor:
    return torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), -1).reshape(-1, 2)


def set_gates(model: ConViT, value: float) -> None:
    with torch.no_grad():
        for block in model.blocks:
            if isinstance(block.attn, GPSA):
                block.attn.gating_param.fill_(value)


def test_local_init_heads_attend_to_their_kernel_offset():
    model = tiny(locality_strength=20.0)
    set_gates(model, 20.0)  # fully positional
    rows, cols = 4, 5
    maps = L.attention_maps(model, images(model))
    distance = L.nonlocality(model, images(model))
    pos = grid_positions(rows, cols)  # (row, col)
    for b in range(model.local_up_to_layer):
        offsets = model.blocks[b].attn.kernel_offsets()  # (dx, dy) = (col, row) offsets
        for h, (dx, dy) in enumerate(offsets.long().tolist()):
            # the key nearest to query + offset inside the grid: the offset itself away from the border
            target = torch.stack(((pos[:, 0] + dy).clamp(0, rows - 1), (pos[:, 1] + dx).clamp(0, cols - 1)), -1)
            target_index = target[:, 0] * cols + target[:, 1]
            assert torch.equal(maps[b][h].argmax(dim=-1), target_index)
            assert torch.allclose(maps[b][h].max(dim=-1).values, torch.ones(rows * cols), atol=1e-5)
            expected = (target - pos).float().norm(dim=-1).mean()
            assert distance[b, h].item() == pytest.approx(expected.item(), abs=1e-5)
            # queries whose offset lands inside the grid attend exactly that far
            per_query = (maps[b][h] * L.patch_distances((rows, cols))).sum(-1)
            inside = (pos[:, 0] + dy >= 0) & (pos[:, 0] + dy < rows) & (pos[:, 1] + dx >= 0) & (pos[:, 1] + dx < cols)
            assert inside.sum() >= 6
            assert torch.allclose(per_query[inside], torch.full((int(inside.sum()),), math.hypot(dx, dy)), atol=1e-5)


def test_uniform_attention_gives_mean_pairwise_distance():
    model = tiny()
    with torch.no_grad():
        for block in model.blocks:
            if isinstance(block.attn, GPSA):
                block.attn.pos_proj.weight.zero_()  # uniform positional attention, gate fully positional
                block.attn.gating_param.fill_(20.0)
            else:
                width = block.attn.qkv.in_features
                block.attn.qkv.weight[: 2 * width].zero_()  # q = k = 0: uniform over class token and patches
    rows, cols = 4, 5
    pos = grid_positions(rows, cols).float()
    mean_pairwise = torch.cdist(pos, pos).mean().item()
    distance = L.nonlocality(model, images(model))
    assert distance.shape == (3, 9)
    assert torch.allclose(distance, torch.full_like(distance, mean_pairwise), atol=1e-5)
    for attn in L.attention_maps(model, images(model)):
        assert attn.shape == (9, rows * cols, rows * cols)
        assert torch.allclose(attn, torch.full_like(attn, 1 / (rows * cols)), atol=1e-6)


def test_maps_are_those_of_the_forward_pass():
    """Hooked maps equal the attention recomputed from each block's real input, class token dropped."""
    model = tiny(locality_strength=1.0)
    x_images = images(model, 4)
    maps = L.attention_maps(model, x_images, batch_size=3)  # two chunks
    with torch.no_grad():
        x, grid_size = model.embed(x_images)
        for i, block in enumerate(model.blocks):
            x = model.join_class_token(i, x)
            probs = block.attn.attention_probs(block.norm1(x), grid_size)
            if i >= model.local_up_to_layer:
                probs = probs[..., 1:, 1:]
                probs = probs / probs.sum(-1, keepdim=True)
            assert torch.allclose(maps[i], probs.mean(0), atol=1e-6)
            assert torch.allclose(maps[i].sum(-1), torch.ones(()), atol=1e-5)
            x = block(x, grid_size)


def test_gates_are_sigmoid_of_the_parameters():
    model = tiny()
    with torch.no_grad():
        for i, block in enumerate(model.blocks[:2]):
            block.attn.gating_param.copy_(torch.linspace(-3, 3, 9) * (i + 1))
    expected = torch.stack([torch.sigmoid(torch.linspace(-3, 3, 9) * (i + 1)) for i in range(2)])
    assert torch.allclose(L.gates(model), expected)


def test_functions_leave_the_model_unchanged():
    model = tiny(heads=4, locality_strength=1.0)
    model.train()
    model.blocks[1].mlp.eval()  # a mixed mode must survive too
    modes = {name: m.training for name, m in model.named_modules()}
    x = images(model)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    requires = {name: p.requires_grad for name, p in model.named_parameters()}
    model.pos_embed.requires_grad_(False)
    requires["pos_embed"] = False
    state = copy.deepcopy(model.state_dict())
    model.eval()
    with torch.no_grad():
        before = model(x)
    model.train()
    model.blocks[1].mlp.eval()

    report = L.locality_report(model, x)
    json.dumps(report)
    json.dumps(L.epoch_locality(model, x))
    L.attention_maps(model, x)
    L.nonlocality(model, x)
    L.gates(model)
    L.head_ablation(model, x, torch.zeros(3, dtype=torch.long))

    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == requires
    assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "head.weight")
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_report_layout():
    model = tiny()
    report = L.locality_report(model, images(model))
    assert report["grid_size"] == [4, 5]
    assert [b["type"] for b in report["blocks"]] == ["GPSA", "GPSA", "MHSA"]
    assert report["blocks"][2]["gate"] is None
    assert torch.tensor(report["nonlocality"]).shape == (3, 9)
    assert torch.tensor(report["gates"]).shape == (2, 9)
    assert report["blocks"][1]["nonlocality"] == report["nonlocality"][1]


def test_head_ablation_zeroes_exactly_one_head():
    model = tiny(heads=4, locality_strength=1.0)
    x = images(model, 6)
    attn = model.blocks[2].attn
    d = attn.head_dim
    twin = copy.deepcopy(model).eval()
    with torch.no_grad():
        twin.blocks[2].attn.proj.weight[:, 2 * d : 3 * d] = 0
        expected = twin(x)
        model.eval()
        with _ablate_head(model, 2, 2):
            assert torch.allclose(model(x), expected, atol=1e-6)
        # a head that writes nothing cannot change the accuracy when zeroed
        model.blocks[0].attn.proj.weight[:, 3 * d : 4 * d] = 0
        labels = model(x).argmax(-1)
    base, drop = L.head_ablation(model, x, labels, batch_size=4)  # two batches
    assert base == 1.0 and drop.shape == (3, 4)
    assert drop[0, 3] == 0
    assert (drop >= 0).all()
    # the shortcut (earlier blocks run once) gives what a full forward per ablated head gives; heads are made
    # loud so that zeroing them changes predictions
    with torch.no_grad():
        for block in model.blocks:
            block.attn.proj.weight.mul_(50)
        x = images(model, 12)
        labels = model(x).argmax(-1)
        base, shortcut = L.head_ablation(model, x, labels, batch_size=5)
        for b in range(3):
            for h in range(4):
                with _ablate_head(model, b, h):
                    accuracy = (model(x).argmax(-1) == labels).float().mean().item()
                assert shortcut[b, h].item() == pytest.approx(1.0 - accuracy)
    assert base == 1.0 and (shortcut > 0).sum() >= 2


def test_plot_log_over_epochs(tmp_path):
    model = tiny(locality_strength=1.0)
    x = images(model)
    log = tmp_path / "log.jsonl"
    with open(log, "w") as handle:
        for epoch in range(3):
            handle.write(
                json.dumps({"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "locality": L.epoch_locality(model, x)})
                + "\n"
            )
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.1 * torch.randn_like(p))
    records = [json.loads(line) for line in open(log)]
    assert records[0]["locality"]["gates"] != records[2]["locality"]["gates"]
    paths = L.plot_log(str(log), str(tmp_path / "plots"))
    assert [p.split("/")[-1] for p in paths] == [
        "nonlocality_over_epochs.png",
        "gates_over_epochs.png",
        "sharpness_over_epochs.png",
        "centres_over_epochs.png",
    ]
    for path in paths:
        Image.open(path).verify()
    command.main(["--log", str(log), "--out", str(tmp_path / "cli")])
    assert (tmp_path / "cli" / "gates_over_epochs.png").is_file()


def test_command_writes_its_files(tmp_path):
    model = ConViT(
        img_size=16,
        patch_size=4,
        embed_dim=36,
        num_heads=9,
        depth=3,
        local_up_to_layer=2,
        locality_strength=1.0,
        num_classes=10,
    )
    checkpoint = tmp_path / "ckpt.pth"
    save_training_checkpoint(model, checkpoint)
    out = tmp_path / "out"
    report = command.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--data",
            "digits",
            "--num-images",
            "8",
            "--query",
            "0,3",
            "--ablate",
            "--out",
            str(out),
        ]
    )
    assert report["query"] == [0, 3] and report["grid_size"] == [4, 4] and report["model"] == "convit_tiny"
    for name in ("nonlocality.png", "gates.png", "attention_maps.png", "ablation.png"):
        with Image.open(out / name) as image:
            image.verify()
    data = json.loads((out / "locality.json").read_text())
    assert torch.tensor(data["nonlocality"]).shape == (3, 9)
    assert torch.tensor(data["ablation"]["drop"]).shape == (3, 9)
    lines = (out / "locality.csv").read_text().splitlines()
    assert lines[0].startswith("block,type,head,nonlocality,gate") and len(lines) == 1 + 3 * 9
    # the loaded weights are the checkpoint's
    loaded = command.load_model(checkpoint=str(checkpoint))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "no_such_model"], "unknown model"),
        (["--model", "convit_tiny", "--data-path", "/no/such/folder"], "does not exist"),
        (["--checkpoint", "CKPT", "--query", "2"], "--query must be ROW,COL"),
        (["--checkpoint", "CKPT", "--query", "9,0"], "outside the 4x4 patch grid"),
    ],
)
def test_command_errors_are_one_line(tmp_path, argv, message):
    model = ConViT(img_size=16, patch_size=4, embed_dim=36, num_heads=9, depth=3, local_up_to_layer=2, num_classes=10)
    save_training_checkpoint(model, tmp_path / "c.pth")
    argv = [str(tmp_path / "c.pth") if a == "CKPT" else a for a in argv]
    with pytest.raises(UserError) as error:
        command.main(argv + ["--num-images", "2", "--out", str(tmp_path / "out")])
    text = str(error.value)
    assert message in text and "\n" not in text


def test_module_runs_as_a_command(tmp_path):
    import subprocess
    import sys

    model = ConViT(img_size=16, patch_size=4, embed_dim=36, num_heads=9, depth=3, local_up_to_layer=2, num_classes=10)
    save_training_checkpoint(model, tmp_path / "c.pth")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "convit.locality",
            "--checkpoint",
            str(tmp_path / "c.pth"),
            "--num-images",
            "4",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in (tmp_path / "o").iterdir()} == {
        "locality.json",
        "locality.csv",
        "nonlocality.png",
        "gates.png",
        "attention_maps.png",
        "nonlocality_parts.png",
        "centres.png",
        "overlay_image0.png",
        "report.md",
    }


def test_plain_state_dict_of_another_shape_is_a_one_line_error(tmp_path):
    model = ConViT(img_size=16, patch_size=4, embed_dim=36, num_heads=9, depth=3, local_up_to_layer=2, num_classes=10)
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(UserError) as error:
        command.main(
            ["--model", "convit_tiny", "--checkpoint", str(tmp_path / "plain.pth"), "--out", str(tmp_path / "o")]
        )
    assert "checkpoint pos_embed has shape [1, 16, 36]" in str(error.value) and "\n" not in str(error.value)


def test_wrapped_models_are_unwrapped_and_others_refused():
    model = tiny(locality_strength=1.0)
    x = images(model)
    wrapped = torch.nn.DataParallel(model)  # stands for DistributedDataParallel: the model is in .module
    assert torch.equal(L.nonlocality(wrapped, x), L.nonlocality(model, x))
    assert torch.equal(L.gates(wrapped), L.gates(model))
    with pytest.raises(LocalityError, match="expected a ConViT"):
        L.gates(torch.nn.Linear(2, 2))


def test_command_reads_an_image_folder(tmp_path):
    model = ConViT(img_size=16, patch_size=4, embed_dim=36, num_heads=9, depth=3, local_up_to_layer=2, num_classes=2)
    save_training_checkpoint(model, tmp_path / "c.pth", num_classes=2)
    for label in ("cat", "dog"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20, 24), (40 * i, 100, 200)).save(tmp_path / "data" / label / f"{i}.png")
    report = command.main(
        [
            "--checkpoint",
            str(tmp_path / "c.pth"),
            "--data-path",
            str(tmp_path / "data"),
            "--ablate",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert report["num_images"] == 4 and report["grid_size"] == [4, 4]
    assert report["ablation"]["top1"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    with pytest.raises(UserError, match="not an image folder"):
        (tmp_path / "empty").mkdir()
        command.main(
            [
                "--checkpoint",
                str(tmp_path / "c.pth"),
                "--data-path",
                str(tmp_path / "empty"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
