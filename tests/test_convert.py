"""convit.from_vit: weight by weight, the split qkv, outputs beside the ViT's, bad input, --finetune with ViT weights."""

import re
import shlex

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import ROOT
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

import convit
from convit.attention import GPSA
from convit.convert import ConversionError, from_vit
from convit.training.finetune import Source, load_source
from convit.variants import create_model

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=10)
# docs/convert.md: on a random-init ViT the class token's path dominates the logits, and skipping the first block
# moves them by about their own size (0.89 on this seeded ViT, 4 random images); the bound stated there is 1
DISTANCE_ONE_GPSA = 1.0


def tiny_vit(**kwargs) -> VisionTransformer:
    torch.manual_seed(1)
    return VisionTransformer(**{**TINY, **kwargs}).eval()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_weights_copied_one_by_one():
    vit = tiny_vit()
    model = from_vit(vit, local_up_to_layer=2, locality_strength=1.5, gate=0.2)
    sd, vsd = model.state_dict(), vit.state_dict()
    assert torch.equal(sd["pos_embed"], vsd["pos_embed"][:, 1:])
    assert torch.equal(sd["cls_token"], vsd["cls_token"] + vsd["pos_embed"][:, :1])
    for key in ("patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias", "head.weight"):
        assert torch.equal(sd[key], vsd[key]), key
    for i in range(3):
        for part in ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2"):
            for kind in ("weight", "bias"):
                key = f"blocks.{i}.{part}.{kind}"
                assert torch.equal(sd[key], vsd[key]), key
    for kind in ("weight", "bias"):
        assert torch.equal(sd[f"blocks.2.attn.qkv.{kind}"], vsd[f"blocks.2.attn.qkv.{kind}"])
        for i in range(2):
            joined = torch.cat((sd[f"blocks.{i}.attn.qk.{kind}"], sd[f"blocks.{i}.attn.v.{kind}"]))
            assert torch.equal(joined, vsd[f"blocks.{i}.attn.qkv.{kind}"])
    reference = GPSA(32, 4, qkv_bias=True, locality_strength=1.5)
    reference.local_init()
    for i in range(2):
        assert torch.equal(model.blocks[i].attn.pos_proj.weight, reference.pos_proj.weight)
        assert torch.allclose(model.blocks[i].attn.gate(), torch.full((4,), 0.2))
    assert not model.training


def test_split_qkv_reproduces_q_k_v():
    vit = tiny_vit()
    model = from_vit(vit, local_up_to_layer=1)
    x = torch.randn(2, 16, 32)
    B, N, H, d = 2, 16, 4, 8
    q, k, v = vit.blocks[0].attn.qkv(x).reshape(B, N, 3, H, d).unbind(2)
    attn = model.blocks[0].attn
    q2, k2 = attn.qk(x).reshape(B, N, 2, H, d).unbind(2)
    v2 = attn.v(x).reshape(B, N, H, d)
    for a, b in ((q, q2), (k, k2), (v, v2)):
        assert torch.allclose(a, b, atol=1e-6)


def test_no_gpsa_is_the_vit_exactly_also_with_layer_scale():
    x = torch.randn(4, 3, 32, 32)
    for vit in (tiny_vit(), tiny_vit(init_values=0.3, qkv_bias=False, global_pool="avg", fc_norm=False)):
        with torch.no_grad():
            assert torch.allclose(from_vit(vit, local_up_to_layer=0)(x), vit(x), atol=1e-5)


def test_gpsa_block_is_the_vit_attention_on_patches_when_the_gate_is_near_zero():
    vit = tiny_vit()
    model = from_vit(vit, local_up_to_layer=1, gate=1e-6)
    x = torch.randn(2, 16, 32)
    attn = vit.blocks[0].attn
    q, k, v = attn.qkv(x).reshape(2, 16, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
    expected = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 16, 32))
    with torch.no_grad():
        assert torch.allclose(model.blocks[0].attn(x, (4, 4)), expected, atol=1e-5)


def test_outputs_within_the_stated_distance():
    vit = tiny_vit()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert relative(from_vit(vit, local_up_to_layer=1)(x), vit(x)) < DISTANCE_ONE_GPSA


def test_deit_twin_and_registers():
    torch.manual_seed(0)
    twin = create_model(
        "convit_tiny", 10, img_size=32, patch_size=8, embed_dim=32, num_heads=4, depth=3, local_up_to_layer=0
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(from_vit(twin, local_up_to_layer=0)(x), twin(x), atol=1e-5)
    assert from_vit(twin, local_up_to_layer=2).local_up_to_layer == 2
    registers = tiny_vit(reg_tokens=2, no_embed_class=True)
    with pytest.raises(ConversionError, match="drop_register_tokens=True"):
        from_vit(registers, local_up_to_layer=1)
    model = from_vit(registers, local_up_to_layer=1, drop_register_tokens=True)
    assert torch.equal(model.cls_token, registers.cls_token)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: tiny_vit(), "fewer than local_up_to_layer"),
        (lambda: tiny_vit(dynamic_img_size=True), "dynamic_img_size"),
        (lambda: tiny_vit(img_size=(32, 16)), "not square"),
        (lambda: torch.nn.Linear(2, 2), "other architectures"),
        (
            lambda: create_model(
                "convit_tiny", 10, img_size=32, patch_size=8, embed_dim=32, num_heads=4, depth=2, local_up_to_layer=1
            ),
            "already has 1 GPSA",
        ),
        (lambda: tiny_vit(qk_norm=True), "q/k normalisation"),
    ],
)
def test_bad_input_one_line(make, match):
    with pytest.raises(ConversionError, match=match) as info:
        from_vit(make(), local_up_to_layer=4 if "fewer" in match else 1)
    assert "\n" not in str(info.value) and isinstance(info.value, convit.UserError)


def test_name_with_local_weights_and_a_checkpoint_file(tmp_path):
    torch.manual_seed(2)
    deit = timm.create_model("deit_tiny_patch16_224", depth=2, num_classes=3)
    path = tmp_path / "deit.safetensors"
    save_file({k: v.contiguous() for k, v in deit.state_dict().items()}, str(path))
    by_name = from_vit(
        "deit_tiny_patch16_224",
        local_up_to_layer=1,
        pretrained=True,
        depth=2,
        num_classes=3,
        pretrained_cfg_overlay=dict(file=str(path)),
    )
    by_file = from_vit(path, local_up_to_layer=1, name="deit_tiny_patch16_224", depth=2)
    for model in (by_name, by_file):
        assert torch.equal(model.blocks[1].attn.qkv.weight, deit.blocks[1].attn.qkv.weight)
        assert torch.equal(model.blocks[0].attn.v.bias, deit.blocks[0].attn.qkv.bias[2 * 192 :])
    with pytest.raises(ConversionError, match="architecture"):
        from_vit(path, local_up_to_layer=1)
    with pytest.raises(ConversionError, match="neither"):
        from_vit("no_such_model", local_up_to_layer=1)


def test_finetune_converts_a_vit_state_dict_and_says_so():
    vit = tiny_vit()
    model = create_model(  # at 64 pixels: the ViT's 4x4 position grid is resampled to 8x8 as it loads
        "convit_tiny",
        10,
        img_size=64,
        patch_size=8,
        embed_dim=32,
        num_heads=4,
        depth=3,
        local_up_to_layer=2,
        qkv_bias=True,
    )
    notes = load_source(model, Source(vit.state_dict(), "'vit.pth' (a state dict)", None), [str(i) for i in range(10)])
    assert any("converted to ConViT" in note for note in notes)
    assert torch.equal(model.blocks[0].attn.qk.weight, vit.blocks[0].attn.qkv.weight[:64])
    assert torch.equal(model.head.weight, vit.head.weight) and model.pos_embed.shape == (1, 64, 32)
    assert torch.equal(model.cls_token, vit.cls_token + vit.pos_embed[:, :1])


DOC = (ROOT / "docs" / "convert.md").read_text()


def doc_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC, re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_docs_commands(tmp_path, capsys, monkeypatch):
    """Every command of docs/convert.md, run literally with only flags that shrink it (and paths under tmp)."""
    import train as train_script
    from convit.locality.__main__ import main as locality_main

    commands = doc_commands()
    assert [c.split(" --")[0] for c in commands] == [
        "python -m experiments.from_vit.distance",
        "python train.py",
        "python train.py",
        "python -m convit.locality",
        "python -m experiments.from_vit.run",  # its smallest form: tests/experiments/test_from_vit.py
    ]
    monkeypatch.chdir(tmp_path)
    from experiments.from_vit import distance

    distance.main(shlex.split(commands[0])[3:] + ["--images", "2", "--layers", "0,1", "--gates", "0.1"])
    assert "| 0 | 0.1 | 0.0000 |" in capsys.readouterr().out
    shrink = ["--epochs", "1", "--sampling-ratio", "0.1", "--locality-images", "0", "--progress", "false"]
    train_script.main(shlex.split(commands[1])[2:] + shrink)
    train_script.main(shlex.split(commands[2])[2:] + shrink)
    assert "holds ViT/DeiT weights: converted to ConViT" in capsys.readouterr().out
    locality_main(shlex.split(commands[3])[3:] + ["--num-images", "8", "--images", "0"])
    report = (tmp_path / "out" / "locality_from_deit" / "report.md").read_text()
    assert "Gate interventions" in report and "authors' measure" in report
    assert commands[4] == "python -m experiments.from_vit.run --out experiments/from_vit/results --resume"
