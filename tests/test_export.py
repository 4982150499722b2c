"""Export at any image size and batch: torch.export and ONNX (run in onnxruntime), dynamic batch, height and width;
run at batch 1 and at the largest declared batch."""

import pytest
import torch

from convit import ConViT

SIZES = [(48, 80), (64, 64), (96, 32)]  # the export size, a wider and a taller one
MAX_BATCH = 8
BATCHES = [1, MAX_BATCH]  # the ends of the declared range (the example has batch 2)


@pytest.fixture(scope="module")
def model_and_program():
    torch.manual_seed(0)
    model = ConViT(
        img_size=64,
        patch_size=16,
        embed_dim=32,
        num_heads=4,
        depth=2,
        local_up_to_layer=1,
        num_classes=5,
        dynamic_img_size=True,
    ).eval()
    with torch.no_grad():  # a position embedding that is not flat, so that resampling shows
        model.pos_embed.normal_()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    # a grid of 2 patches or more: torch.export guards a reshape on grid sides above 1 (a timm ViT alike)
    height, width = torch.export.Dim("height", min=2, max=32), torch.export.Dim("width", min=2, max=32)
    program = torch.export.export(
        model, (torch.randn(2, 3, 64, 64),), dynamic_shapes={"x": {0: batch, 2: 16 * height, 3: 16 * width}}
    )
    return model, program


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("size", SIZES)
def test_torch_export_with_dynamic_height_and_width_matches_eager(model_and_program, size, batch):
    model, program = model_and_program
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-5)


def test_onnx_export_with_dynamic_height_and_width_runs_in_onnxruntime(model_and_program, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model, program = model_and_program
    path = tmp_path / "convit.onnx"
    torch.onnx.export(program, f=str(path), dynamo=True, optimize=False, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for size, batch in [(size, batch) for size in SIZES for batch in BATCHES]:
        x = torch.randn(batch, 3, *size)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {name: x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected), rtol=1e-4, atol=1e-5)


def test_fixed_size_model_exports_with_a_dynamic_batch():
    """A fixed-size model: batch the only dynamic dimension, valid over its whole declared range."""
    torch.manual_seed(0)
    model = ConViT(img_size=32, patch_size=16, embed_dim=32, num_heads=4, depth=2, local_up_to_layer=1).eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes={"x": {0: batch}})
    for b in BATCHES:
        x = torch.randn(b, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-5)
