"""The field's own clients against our models: the legacy ONNX exporter, torch.jit, timm's input config and
save_for_hf, transformers' TimmWrapper, FLOP counters (fvcore, thop), timm's train.py checkpoints in eval.py.

Everything runs from local folders and tiny models; a test skips only when its client is not installed.
"""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import ROOT, child_env

import convit
from convit import ConViT
from convit.pos_embed import resample_pos_embed

TINY = dict(patch_size=16, embed_dim=32, num_heads=4, depth=2, local_up_to_layer=1, num_classes=5)


def tiny(**kwargs) -> ConViT:
    torch.manual_seed(0)
    model = ConViT(**{"img_size": 32, **TINY, **kwargs}).eval()
    with torch.no_grad():  # a position embedding that is not flat, so that resampling shows
        model.pos_embed.normal_()
    return model


_SEEN: list[bool] = []


class _Probe(torch.nn.Module):
    """Records what ``is_exporting()`` said during its forward."""

    def forward(self, x):
        from convit.attention import is_exporting

        _SEEN.append(is_exporting())
        return x + 1


def test_is_exporting_is_true_under_every_tracer_and_false_when_run():
    x = torch.randn(2)
    tracers = {
        "eager": lambda m: m(x),
        "jit.trace": lambda m: torch.jit.trace(m, (x,), check_trace=False),
        "fx": torch.fx.symbolic_trace,
        "export": lambda m: torch.export.export(m, (x,)),
    }
    seen = {}
    for name, trace in tracers.items():
        _SEEN.clear()
        trace(_Probe())
        seen[name] = set(_SEEN)
    assert seen == {"eager": {False}, "jit.trace": {True}, "fx": {True}, "export": {True}}
    assert torch.jit.script(_ScriptedProbe())(x).item() == 1.0


class _ScriptedProbe(torch.nn.Module):
    def forward(self, x):
        return torch.ones(1) if convit.attention.is_exporting() else torch.zeros(1)


def test_legacy_onnx_exporter_exports_a_fixed_size_model_like_a_vit(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = tiny()
    path = tmp_path / "m.onnx"
    x = torch.randn(2, 3, 32, 32)
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}}, opset_version=17
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        x = torch.randn(batch, 3, 32, 32)
        (got,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-5)


def test_export_form_of_the_resampling_matches_interpolate():
    """Under every exporter the position embedding is resampled with two matmuls, not the antialiased op."""
    torch.manual_seed(0)
    for trained, grid in [((4, 4), (2, 3)), ((4, 4), (7, 5)), ((3, 5), (3, 5)), ((6, 6), (1, 9))]:
        pos = torch.randn(1, trained[0] * trained[1], 8)
        image = pos.reshape(1, *trained, 8).permute(0, 3, 1, 2)
        expected = F.interpolate(image, size=grid, mode="bicubic", align_corners=False, antialias=True)
        expected = expected.permute(0, 2, 3, 1).reshape(1, -1, 8)
        traced = torch.jit.trace(lambda p, g=grid, t=trained: resample_pos_embed(p, g, t), (pos,), check_trace=False)
        assert "upsample" not in str(traced.graph)
        torch.testing.assert_close(traced(pos), expected, rtol=1e-5, atol=1e-5)


def test_jit_trace_passes_its_own_check_and_matches_eager():
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    traced = torch.jit.trace(model, (x,), check_inputs=[(torch.randn(3, 3, 32, 32),)])  # raises when graphs differ
    assert "PythonOp" not in str(traced.inlined_graph)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-6)


def test_jit_script_matches_eager_at_another_size():
    model = tiny(dynamic_img_size=True)
    scripted = torch.jit.script(model)
    for size in ((32, 32), (48, 16)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-6)


def test_fixed_input_size_is_true_exactly_when_the_model_refuses_other_sizes():
    fixed = timm.create_model("convit_tiny", img_size=64, depth=1, local_up_to_layer=1)
    dynamic = timm.create_model("convit_tiny", img_size=64, depth=1, local_up_to_layer=1, dynamic_img_size=True)
    assert timm.models.get_model_input_config(fixed)["fixed_input_size"] is True
    assert timm.models.get_model_input_config(dynamic)["fixed_input_size"] is False
    with pytest.raises(ValueError, match="differs from the model's 64x64"):
        fixed(torch.randn(1, 3, 32, 32))
    assert dynamic(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    """save_for_hf of a 64-px model of custom width (the digits model's shape, two blocks), with a probe batch."""
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model(
        "convit_tiny", img_size=64, embed_dim=96, num_heads=4, depth=2, local_up_to_layer=1, num_classes=5
    ).eval()
    folder = tmp_path_factory.mktemp("hf")
    save_for_hf(model, str(folder))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.save({"x": x, "y": model(x)}, folder / "probe.pt")
    return folder, model


def test_save_for_hf_then_reload_keeps_the_models_input_size(saved_folder):
    folder, model = saved_folder
    config = json.loads((folder / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, 64, 64] and config["pretrained_cfg"]["fixed_input_size"]
    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert timm.data.resolve_data_config({}, model=reloaded)["input_size"] == (3, 64, 64)
    probe = torch.load(folder / "probe.pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(probe["x"]), probe["y"], rtol=0, atol=0)


def test_saved_folder_loads_in_plain_timm_without_convit(saved_folder):
    folder, _ = saved_folder
    code = (
        "import sys, timm, torch\n"
        f"m = timm.create_model('local-dir:{folder}', pretrained=True).eval()\n"
        "assert 'convit' not in sys.modules, 'convit was imported'\n"
        f"p = torch.load('{folder / 'probe.pt'}')\n"
        "with torch.no_grad(): print(type(m).__module__, (m(p['x']) - p['y']).abs().max().item())\n"
    )
    env = child_env()
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    module, diff = out.stdout.split()
    assert module == "timm.models.convit" and float(diff) < 2e-6


def test_transformers_timm_wrapper_and_image_processor_run_on_a_saved_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    from PIL import Image
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("convit_tiny", img_size=64, depth=2, local_up_to_layer=1, num_classes=5).eval()
    folder = tmp_path / "hf"
    save_for_hf(model, str(folder))
    config = transformers.TimmWrapperConfig.from_pretrained(str(folder), local_files_only=True)
    # timm >= 1.0.31 records num_classes in model_args too, which TimmWrapper passes a second time
    config.model_args.pop("num_classes", None)
    wrapper = transformers.TimmWrapperForImageClassification.from_pretrained(
        str(folder), config=config, local_files_only=True
    ).eval()
    processor = transformers.TimmWrapperImageProcessor.from_pretrained(str(folder), local_files_only=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(wrapper(pixel_values=pixels).logits, model(pixels), rtol=1e-5, atol=1e-6)


def _timm_and_ours(name: str):
    """timm's ConVit and ours holding the same weights: a variant's heads and width, 3 blocks (2 GPSA), 64 px."""
    from timm.models.convit import ConVit

    heads, width = convit.VARIANTS[name]
    args = dict(img_size=64, depth=3, local_up_to_layer=2, num_heads=heads, num_classes=10)
    torch.manual_seed(0)
    reference = ConVit(embed_dim=width, **args).eval()
    ours = ConViT(embed_dim=heads * width, **args).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.mark.parametrize("name", sorted(convit.VARIANTS))
def test_flop_counters_count_within_1_percent_of_timms_convit(name):
    fvcore = pytest.importorskip("fvcore.nn")
    thop = pytest.importorskip("thop")
    reference, ours = _timm_and_ours(name)
    x = torch.randn(1, 3, 64, 64)
    counts = {}
    for tag, model in (("timm", reference), ("ours", ours)):
        flops = fvcore.FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        counts[tag] = (flops.total(), set(flops.unsupported_ops()))
    assert abs(counts["ours"][0] / counts["timm"][0] - 1) < 0.01, counts
    assert not {op for op in counts["ours"][1] if "PythonOp" in op or "attention" in op}, counts["ours"][1]
    macs = {}
    for tag, model in (("timm", reference), ("ours", ours)):
        macs[tag] = thop.profile(model, (x,), verbose=False)
    assert abs(macs["ours"][0] / macs["timm"][0] - 1) < 0.01, macs
    assert abs(macs["ours"][1] / macs["timm"][1] - 1) < 0.01, macs
    with torch.no_grad():  # thop's hooks take the module path: same numbers as without them
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=2e-6)


def test_eval_reads_a_timm_train_checkpoint(folder, tmp_path, capsys):
    """timm's train.py saves {"arch", "state_dict", "args" (its Namespace), "metric", ...}: no --model, no
    --img-size needed, and the 32-px model is not resampled to 224."""
    sys.path.insert(0, str(ROOT))
    import eval as eval_script
    from convit.variants import create_model
    from convit.weights import model_from_checkpoint

    torch.manual_seed(0)
    model = create_model("convit_tiny", 3, img_size=32)
    path = tmp_path / "model_best.pth.tar"
    args = argparse.Namespace(model="convit_tiny", img_size=None, input_size=[3, 32, 32], lr=5e-4)
    state = {"epoch": 3, "arch": "convit_tiny", "state_dict": model.state_dict(), "version": 2}
    torch.save({**state, "args": args, "metric": 51.0, "saver": {"epoch": 3, "metric": 51.0}}, path)
    loaded, _ = model_from_checkpoint(path)
    assert loaded.img_size == (32, 32) and torch.equal(loaded.pos_embed, model.pos_embed)
    result = eval_script.main(
        eval_script.parse_args(["--checkpoint", str(path), "--data-path", str(folder), "--num-workers", "0"])
    )
    assert result["val_images"] == 21 and result["model"] == "convit_tiny"
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: read")]
    assert notes == ["note: read --model convit_tiny --img-size 32 from the checkpoint; pass them to override"]
