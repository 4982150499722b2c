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
from convit.locality.ablation import ablate_head
from convit.locality.errors import LocalityError
from convit.training.checkpoint import build_checkpoint, save_checkpoint


def save_training_checkpoint(model, path, num_classes=10):
    """A checkpoint as train.py writes it (the model name and its arguments beside the weights)."""
    kwargs = dict(img_size=16, patch_size=4, embed_dim=36, num_heads=9, depth=3, local_up_to_layer=2)
    save_checkpoint(build_checkpoint(model, "convit_tiny", kwargs, None, num_classes=num_classes, epoch=3), path)


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


def test_capture_computes_each_attention_once():
    """The maps and GPSA's parts come from the forward pass itself: each block's projections run once per batch."""
    model = tiny(locality_strength=1.0)
    calls = []
    for block in model.blocks:
        projection = block.attn.qk if isinstance(block.attn, GPSA) else block.attn.qkv
        projection.register_forward_hook(lambda *_: calls.append(1))
    captured = L.capture(model, images(model, 4), batch_size=3)  # two batches
    assert len(calls) == 2 * len(model.blocks)
    assert sorted(captured.content) == [0, 1] and all(b.attn.attention_observer is None for b in model.blocks)


def assert_same_entry(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        a, b = torch.tensor(got[key], dtype=torch.float64), torch.tensor(value, dtype=torch.float64)
        assert torch.allclose(a, b, atol=1e-5, equal_nan=True), key


def test_epoch_locality_from_a_pass_equals_the_measures_on_its_images():
    """EpochLocality records the images of a pass (here three batches, the last one cut) as its forward runs:
    the model's own outputs, and the same entry as epoch_locality on those images; each entry starts afresh."""
    torch.manual_seed(0)
    model = tiny(locality_strength=1.0)
    x = images(model, 7)
    model.eval()
    with torch.no_grad():
        expected_logits = model(x)
    locality = L.EpochLocality(model, 5)
    for _ in range(2):  # two epochs
        outputs = []
        for batch in x.split(3):
            head = min(locality.wanted, len(batch))
            if head:
                outputs.append(locality.forward(batch[:head]))
        assert locality.wanted == 0
        assert torch.allclose(torch.cat(outputs), expected_logits[:5], atol=1e-5)
        assert_same_entry(locality.entry(), L.epoch_locality(model, x[:5]))
        assert locality.wanted == 5
    assert all(b.attn.fused_attn and b.attn.attention_observer is None for b in model.blocks)
    with pytest.raises(LocalityError, match="recorded no images"):
        locality.entry()


def test_capture_restores_the_layers_when_the_forward_fails():
    model = tiny()
    with pytest.raises(ValueError, match="differs from the model"):
        L.capture(model, torch.randn(2, 3, 6, 6))  # a size the model was not built for
    assert all(b.attn.fused_attn and b.attn.attention_observer is None for b in model.blocks)


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
    assert all(b.attn.fused_attn and b.attn.attention_observer is None for b in model.blocks)
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
        with ablate_head(model, 2, 2):
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
                with ablate_head(model, b, h):
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
        "training_curves.png",
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


# ---------------------------------------------------------------------------------------------- other families


def tiny_vit(fused=True, reg_tokens=0, **kwargs):
    """A timm VisionTransformer (DeiT layout) on a 4 x 5 patch grid."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=(8, 10),
        patch_size=2,
        embed_dim=24,
        depth=2,
        num_heads=4,
        num_classes=5,
        reg_tokens=reg_tokens,
        **kwargs,
    )
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model.eval()


def tiny_timm_convit(locality_strength=3.0):
    """timm's own ConVit (its constructor takes the width per head) on a 4 x 4 grid."""
    from timm.models.convit import ConVit

    return ConVit(
        img_size=8,
        patch_size=2,
        embed_dim=4,
        num_heads=9,
        depth=3,
        local_up_to_layer=2,
        locality_strength=locality_strength,
        num_classes=5,
    ).eval()


def vit_block_inputs(model, x_images):
    """Each block's input of a timm ViT, computed as its forward_features does, one step at a time."""
    inputs = []
    with torch.no_grad():
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x_images))))
        for block in model.blocks:
            inputs.append(x)
            x = block(x)
    return inputs


@pytest.mark.parametrize("fused, reg_tokens", [(True, 0), (False, 0), (True, 2)])
def test_timm_vit_maps_equal_a_recomputation_from_block_inputs(fused, reg_tokens):
    model = tiny_vit(fused, reg_tokens)
    width, heads, d = 24, 4, 6
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in model.blocks:  # hand-set q/k weights, large enough for peaked attention
            block.attn.qkv.weight[: 2 * width] = 0.6 * torch.randn(2 * width, width, generator=generator)
    x_images = torch.randn(3, 3, 8, 10)
    maps = L.attention_maps(model, x_images, batch_size=2)
    prefix = 1 + reg_tokens
    assert model.num_prefix_tokens == prefix
    for block, x, attn in zip(model.blocks, vit_block_inputs(model, x_images), maps, strict=True):
        with torch.no_grad():
            h = block.norm1(x)
            w, b = block.attn.qkv.weight, block.attn.qkv.bias
            q = (h @ w[:width].T + b[:width]).reshape(3, -1, heads, d).transpose(1, 2)
            k = (h @ w[width : 2 * width].T + b[width : 2 * width]).reshape(3, -1, heads, d).transpose(1, 2)
            probs = (q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(-1)[..., prefix:, prefix:]
            probs = probs / probs.sum(-1, keepdim=True)
        assert attn.shape == (heads, 20, 20)
        assert torch.allclose(attn, probs.mean(0), atol=1e-5)
        assert attn.max() > 0.5  # peaked: the hand-set weights are really used


def test_timm_vit_with_uniform_attention_gives_mean_pairwise_distance():
    model = tiny_vit(reg_tokens=1, qkv_bias=True)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:48].zero_()
            block.attn.qkv.bias[:48].zero_()
    pos = grid_positions(4, 5).float()
    distance = L.nonlocality(model, torch.randn(2, 3, 8, 10))
    assert distance.shape == (2, 4)
    assert torch.allclose(distance, torch.full_like(distance, torch.cdist(pos, pos).mean().item()), atol=1e-5)
    report = L.locality_report(model, torch.randn(2, 3, 8, 10))
    assert report["gates"] == [] and report["centres"] == [] and report["local_up_to_layer"] == 0
    assert [b["type"] for b in report["blocks"]] == ["MHSA", "MHSA"]


def test_timm_vit_qk_norm_is_applied():
    model = tiny_vit(fused=True, qk_norm=True)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q_norm.weight.fill_(3.0)  # changes the attention only if the norm is applied
    x_images = torch.randn(2, 3, 8, 10)
    maps = L.attention_maps(model, x_images)
    for block, x, attn in zip(model.blocks, vit_block_inputs(model, x_images), maps, strict=True):
        with torch.no_grad():
            q, k, _ = block.attn.qkv(block.norm1(x)).reshape(2, -1, 3, 4, 6).permute(2, 0, 3, 1, 4)
            q, k = block.attn.q_norm(q), block.attn.k_norm(k)
            probs = (q @ k.transpose(-2, -1) / math.sqrt(6)).softmax(-1)[..., 1:, 1:]
        assert torch.allclose(attn, (probs / probs.sum(-1, keepdim=True)).mean(0), atol=1e-5)


def test_timm_convit_maps_gates_and_centres():
    model = tiny_timm_convit()
    x_images = torch.randn(2, 3, 8, 8)
    maps = L.attention_maps(model, x_images)
    with torch.no_grad():  # timm's own forward sets rel_indices; recompute with its get_attention
        model(x_images)
        x = model.pos_drop(model.patch_embed(x_images) + model.pos_embed)
        for i, block in enumerate(model.blocks):
            if i == model.local_up_to_layer:
                x = torch.cat((model.cls_token.expand(2, -1, -1), x), dim=1)
            if i < model.local_up_to_layer:
                probs = block.attn.get_attention(block.norm1(x))
            else:
                q, k, _ = block.attn.qkv(block.norm1(x)).reshape(2, 17, 3, 9, 4).permute(2, 0, 3, 1, 4)
                probs = (q @ k.transpose(-2, -1) * block.attn.scale).softmax(-1)[..., 1:, 1:]
                probs = probs / probs.sum(-1, keepdim=True)
            assert torch.allclose(maps[i], probs.mean(0), atol=1e-5)
            x = block(x)
    assert torch.allclose(L.gates(model), torch.sigmoid(torch.ones(2, 9)))
    assert torch.allclose(L.positional_sharpness(model), torch.full((2, 9), 3.0))
    # timm's local_init: head h1 + 3 * h2 peaks at (dx, dy) = (h2 - 1, h1 - 1)
    expected = torch.tensor([[h // 3 - 1, h % 3 - 1] for h in range(9)], dtype=torch.float32)
    assert torch.allclose(L.positional_centres(model), expected.expand(2, 9, 2), atol=1e-6)


def test_local_init_centres_are_the_kernel_offsets_and_sharpness_the_locality_strength():
    for strength in (0.5, 2.0):
        model = tiny(locality_strength=strength)
        centres, sharpness = L.positional_centres(model), L.positional_sharpness(model)
        assert centres.shape == (2, 9, 2) and sharpness.shape == (2, 9)
        for b in range(2):
            assert torch.allclose(centres[b], model.blocks[b].attn.kernel_offsets().float(), atol=1e-6)
        assert torch.allclose(sharpness, torch.full((2, 9), strength))


def test_centres_agree_with_the_authors_formula():
    """The original code's centre of head h is -w[:2] / (2 * w[2]) with w = pos_proj.weight[h]."""
    model = tiny(locality_strength=1.0)
    with torch.no_grad():
        for block in model.blocks[:2]:
            weight = torch.randn(9, 3)
            weight[:, 2] = -torch.rand(9) - 0.2  # negative: a peaked positional attention
            block.attn.pos_proj.weight.copy_(weight)
    centres, sharpness = L.positional_centres(model), L.positional_sharpness(model)
    for b in range(2):
        for h in range(9):
            w = model.blocks[b].attn.pos_proj.weight[h].tolist()
            assert centres[b, h, 0].item() == pytest.approx(-w[0] / (2 * w[2]), rel=1e-5)
            assert centres[b, h, 1].item() == pytest.approx(-w[1] / (2 * w[2]), rel=1e-5)
            assert sharpness[b, h].item() == pytest.approx(-w[2], rel=1e-6)
    # the centre is where the positional attention peaks: (dx, dy) = (column, row) offsets
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.pos_proj.weight.copy_(torch.tensor([[-2 * 20.0 * 1, -2 * 20.0 * 2, 20.0]] * 9).neg())
    centre = L.positional_centres(model)[0, 0]
    assert torch.allclose(centre, torch.tensor([1.0, 2.0]))
    query = 0  # row 0, col 0: peak at row 2, col 1
    assert attn.positional_attention((4, 5))[0, query].argmax().item() == 2 * 5 + 1
    # no peak (w2 >= 0): NaN centre, reported as None
    with torch.no_grad():
        attn.pos_proj.weight[:, 2] = 0.5
    assert torch.isnan(L.positional_centres(model)[0]).all()
    assert L.locality_report(model, images(model))["blocks"][0]["centre"][0] == [None, None]


def test_content_and_positional_parts():
    model = tiny(locality_strength=2.0)
    x = images(model)
    set_gates(model, 30.0)  # fully positional: the mix is the positional part
    content, positional = L.nonlocality_parts(model, x)
    assert content.shape == positional.shape == (2, 9)
    assert torch.allclose(L.nonlocality(model, x)[:2], positional, atol=1e-5)
    set_gates(model, -30.0)  # fully content
    content2, positional2 = L.nonlocality_parts(model, x)
    assert torch.allclose(L.nonlocality(model, x)[:2], content2, atol=1e-5)
    # the positional part does not depend on the gates; block 0's content part neither (its input does not)
    assert torch.allclose(positional, positional2) and torch.allclose(content[0], content2[0], atol=1e-6)
    # the positional part is the module's own positional attention
    maps = L.capture(model, x).positional
    assert torch.allclose(maps[0], model.blocks[0].attn.positional_attention((4, 5)), atol=1e-6)
    logged = L.epoch_locality(model, x)
    assert {"nonlocality", "gates", "nonlocality_content", "nonlocality_positional", "centres", "sharpness"} <= set(
        logged
    )
    assert torch.tensor(logged["centres"]).shape == (2, 9, 2)


def test_rollout_of_identity_attention_is_the_identity():
    eye = torch.eye(20).expand(4, 20, 20)
    for rollout in L.attention_rollout([eye, eye, eye]):
        assert torch.allclose(rollout, torch.eye(20))
    # per image, and one hand-computed step: two blocks of uniform attention
    uniform = torch.full((2, 4, 20, 20), 1 / 20)
    rollouts = L.attention_rollout([uniform, uniform])
    step = (torch.full((20, 20), 1 / 20) + torch.eye(20)) / 2
    assert rollouts[0].shape == (2, 20, 20)
    assert torch.allclose(rollouts[1][1], step @ step, atol=1e-6)
    assert torch.allclose(rollouts[1].sum(-1), torch.ones(2, 20), atol=1e-5)


def test_wrapped_compiled_and_unsupported_models():
    model = tiny_vit()
    x = torch.randn(2, 3, 8, 10)
    compiled = torch.compile(model)  # lazily compiled: the measures reach the module inside, never compile it
    assert torch.equal(L.nonlocality(torch.nn.DataParallel(compiled), x), L.nonlocality(model, x))
    with pytest.raises(LocalityError, match="Sequential has no attention"):
        L.nonlocality(torch.nn.Sequential(torch.nn.Linear(2, 2)), x)

    class OtherAttention(torch.nn.Module):
        def forward(self, x, **kwargs):
            return x

    model.blocks[1].attn = OtherAttention()
    with pytest.raises(LocalityError) as error:
        L.nonlocality(model, x)
    assert "block 1 has attention OtherAttention" in str(error.value) and "\n" not in str(error.value)


def test_head_ablation_on_a_timm_vit():
    model = tiny_vit()
    x = torch.randn(6, 3, 8, 10)
    with torch.no_grad():
        model.blocks[0].attn.proj.weight[:, :6] = 0  # head 0 of block 0 writes nothing
        labels = model(x).argmax(-1)
    base, drop = L.head_ablation(model, x, labels)
    assert base == 1.0 and drop.shape == (2, 4) and drop[0, 0] == 0
