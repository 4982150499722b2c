"""The six registered models: timm's registry, pretrained configs and local-file loading, and the
contract timm's own tests/test_models.py holds every model to (forward, backward, cfg, TorchScript, FX)."""

import argparse
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg
from timm.models._features_fx import create_feature_extractor, get_graph_node_names
from timm.models.convit import ConVit as TimmConVit

import convit
from convit import ConViT
from convit.variants import PUBLISHED_WEIGHTS, VARIANTS

ALL = sorted(VARIANTS)


def test_importing_convit_replaces_timms_entries_silently():
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(convit.variants)
    assert sorted(timm.list_models("convit*")) == ALL
    assert isinstance(timm.create_model("convit_small"), ConViT)


@pytest.mark.parametrize("name", ALL)
def test_each_variant_has_the_papers_shape_and_a_complete_pretrained_cfg(name):
    heads, width = VARIANTS[name]
    model = timm.create_model(name)
    assert (model.num_heads, model.embed_dim, len(model.blocks), model.local_up_to_layer) == (
        heads,
        heads * width,
        12,
        10,
    )
    cfg = model.pretrained_cfg
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "num_classes", "first_conv", "classifier"):
        assert cfg.get(key) is not None, key
    state_dict = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state_dict and cfg["classifier"] + ".weight" in state_dict
    if name in PUBLISHED_WEIGHTS:
        assert get_pretrained_cfg(name).hf_hub_id == f"timm/{name}.fb_in1k"


def test_convit_small_equals_timms_own_model():
    ours = timm.create_model("convit_small", num_classes=10, img_size=64).train()
    theirs = TimmConVit(img_size=64, embed_dim=48, num_heads=9, local_up_to_layer=10, num_classes=10).train()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    out_a, out_b = ours(x), theirs(x)
    torch.testing.assert_close(out_a, out_b, rtol=1e-4, atol=1e-5)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        # pos_proj.bias cancels in the softmax: its true gradient is 0 and both hold rounding noise
        scale = b.grad.abs().max().item() if not name.endswith("pos_proj.bias") else 1.0
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.fixture(scope="module")
def tiny_weights():
    torch.manual_seed(1)
    return timm.create_model("convit_tiny").state_dict()


@pytest.mark.parametrize("fmt", ["timm.pth", "safetensors", "official.pth"])
def test_pretrained_from_a_local_file(tmp_path, tiny_weights, fmt):
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in tiny_weights.items()}, path)
    elif fmt == "official.pth":  # facebookresearch/convit's main.py saves {'model': ..., 'optimizer': ..., ...}
        torch.save(
            {
                "model": tiny_weights,
                "optimizer": {},
                "epoch": 299,
                "args": argparse.Namespace(model="convit_tiny", lr=5e-4),
            },
            path,
        )
    else:
        torch.save(tiny_weights, path)
    model = timm.create_model("convit_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for name, value in model.state_dict().items():
        assert torch.equal(value, tiny_weights[name]), name
    finetune = timm.create_model(
        "convit_tiny", pretrained=True, num_classes=5, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert torch.equal(finetune.pos_embed, tiny_weights["pos_embed"]) and finetune.head.out_features == 5


def test_pretrained_224_file_into_a_384_model(tmp_path, tiny_weights):
    path = tmp_path / "weights.pth"
    torch.save(tiny_weights, path)
    model = timm.create_model("convit_tiny", pretrained=True, img_size=384, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.pos_embed.shape == (1, 576, 192)
    assert torch.isfinite(model(torch.randn(1, 3, 384, 384))).all()


def test_checkpoint_with_wrong_keys_is_a_clear_error(tmp_path, tiny_weights):
    path = tmp_path / "weights.pth"
    broken = dict(tiny_weights)
    broken.pop("blocks.3.attn.gating_param")
    broken["blocks.3.attn.extra"] = torch.zeros(1)
    torch.save(broken, path)
    with pytest.raises(
        ValueError, match=r"missing keys \['blocks.3.attn.gating_param'\], unexpected keys \['blocks.3.attn.extra'\]"
    ):
        timm.create_model("convit_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


# --- the contract of timm's tests/test_models.py, at the sizes it picks (dynamic_img_size=True: no fixed size) ---


@pytest.mark.parametrize("name", ["convit_tiny", "convit_small_plus"])
def test_timm_contract_forward_and_backward(name):
    model = timm.create_model(name).eval()
    out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and not torch.isnan(out).any()
    model = timm.create_model(name, num_classes=42, dynamic_img_size=True).train()
    out = model(torch.randn(2, 3, 128, 128))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert out.shape[-1] == 42 and not missing, missing


def test_timm_contract_default_cfg_non_std():
    model = timm.create_model("convit_tiny").eval()
    x = torch.randn(1, 3, 224, 224)
    assert model.forward_features(x).shape[-1] == model.num_features
    model.reset_classifier(0)
    assert model(x).shape == (1, model.num_features)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_timm_contract_torchscript():
    with timm.set_scriptable(True):
        model = timm.create_model("convit_tiny", dynamic_img_size=True).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 128, 128)
    torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-5)


def test_timm_contract_fx_feature_extraction_forward_and_backward():
    model = timm.create_model("convit_tiny", num_classes=10, img_size=96)
    for train in (False, True):
        model.train(train)
        train_nodes, eval_nodes = get_graph_node_names(model)
        nodes = train_nodes if train else eval_nodes
        fx_model = create_feature_extractor(model, return_nodes=[nodes[-1]])
        x = torch.randn(2, 3, 96, 96)
        out = list(fx_model(x).values())[0]
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5) if not train else None
        if train:
            out.mean().backward()
            assert all(p.grad is not None for p in fx_model.parameters())


def test_features_only_gives_block_outputs():
    model = timm.create_model("convit_tiny", features_only=True, out_indices=(2, 11), img_size=96).eval()
    features = model(torch.randn(1, 3, 96, 96))
    assert [f.shape for f in features] == [(1, 192, 6, 6)] * 2


def test_torch_export_with_a_dynamic_batch_matches_eager():
    model = timm.create_model("convit_tiny", img_size=64, num_classes=10).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes={"x": {0: batch}})
    x = torch.randn(5, 3, 64, 64)
    torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_outputs_are_finite(dtype):
    model = timm.create_model("convit_tiny", img_size=64, num_classes=10)
    with torch.autocast("cpu", dtype=dtype):
        out = model(torch.randn(2, 3, 64, 64))
        out.float().sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = timm.create_model("convit_tiny", img_size=64, num_classes=10, depth=4, local_up_to_layer=2)
    compiled = torch.compile(model)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    compiled(x).sum().backward()
    assert model.blocks[0].attn.gating_param.grad is not None


def test_create_model_checks_name_and_arguments():
    from convit import UserError, create_model

    with pytest.raises(UserError, match="unknown model 'convit_huge'"):
        create_model("convit_huge", 10)
    with pytest.raises(UserError, match="convit_tiny takes no argument 'embed_dims'"):
        create_model("convit_tiny", 10, embed_dims=96)
    with pytest.raises(UserError, match="not divisible by num_heads=5"):
        create_model("convit_tiny", 10, embed_dim=96, num_heads=5)


def test_each_variant_is_one_registered_function():
    import convit.variants

    assert timm.list_models("convit_*") == sorted(VARIANTS)
    assert timm.list_models(module="variants") == sorted(VARIANTS)
    for name in VARIANTS:
        assert timm.models.model_entrypoint(name) is getattr(convit.variants, name)
        assert timm.models.get_pretrained_cfg(name) is not None


def test_another_input_size_is_an_error_unless_dynamic():
    model = timm.create_model("convit_tiny", img_size=32, patch_size=8, depth=2, local_up_to_layer=1)
    assert model.pretrained_cfg["fixed_input_size"] is True
    with pytest.raises(ValueError, match="image size 48x48 differs from the model's 32x32") as err:
        model(torch.randn(1, 3, 48, 48))
    assert "img_size=(48, 48)" in str(err.value) and "dynamic_img_size=True" in str(err.value)
    dynamic = timm.create_model(
        "convit_tiny", img_size=32, patch_size=8, depth=2, local_up_to_layer=1, dynamic_img_size=True
    )
    assert dynamic.pretrained_cfg["fixed_input_size"] is False
    assert dynamic(torch.randn(1, 3, 48, 40)).shape == (1, 1000)


def test_import_convit_loads_no_training_or_plotting_module():
    import subprocess
    import sys

    code = (
        "import sys; import timm; before = set(sys.modules); import convit; "
        "added = sorted(m for m in set(sys.modules) - before if not m.startswith('convit')); "
        "print(added); print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('matplotlib', 'sklearn', 'convit') and m not in ('convit', 'convit.attention', 'convit.convert', 'convit.errors', "
        "'convit.model', 'convit.pos_embed', 'convit.variants')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "[]"], out


@pytest.mark.parametrize("train", [False, True])
def test_torchvision_feature_extractor_traces_the_model(train):
    from torchvision.models.feature_extraction import create_feature_extractor as tv_feature_extractor

    model = timm.create_model("convit_tiny", num_classes=10, img_size=64, depth=4, local_up_to_layer=2).train(train)
    extractor = tv_feature_extractor(model, return_nodes={"blocks.1": "gpsa", "blocks.3": "mhsa", "head": "logits"})
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    out = extractor(x)
    assert out["gpsa"].shape == (2, 16, 192) and out["mhsa"].shape == (2, 17, 192)
    if not train:
        torch.testing.assert_close(out["logits"], model(x), rtol=1e-4, atol=1e-5)
    else:
        out["logits"].sum().backward()
        assert model.blocks[0].attn.gating_param.grad is not None
