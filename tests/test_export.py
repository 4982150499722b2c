"""Export at any image size: torch.export and ONNX (run in onnxruntime) with dynamic height and width."""

import pytest
import torch

from convit import ConViT

SIZES = [(48, 80), (64, 64), (96, 32)]  # the export size, a wider and a taller one


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
    batch = torch.export.Dim("batch", min=1, max=64)
    height, width = torch.export.Dim("height", min=1, max=32), torch.export.Dim("width", min=1, max=32)
    program = torch.export.export(
        model, (torch.randn(2, 3, 64, 64),), dynamic_shapes={"x": {0: batch, 2: 16 * height, 3: 16 * width}}
    )
    return model, program


@pytest.mark.parametrize("size", SIZES)
def test_torch_export_with_dynamic_height_and_width_matches_eager(model_and_program, size):
    model, program = model_and_program
    x = torch.randn(3, 3, *size)
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
    for size in SIZES:
        x = torch.randn(3, 3, *size)  # another batch size too
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {name: x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected), rtol=1e-4, atol=1e-5)
