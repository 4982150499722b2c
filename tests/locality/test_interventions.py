"""Gate interventions: forced gates against hand computations, the table, the command, and the from_vit experiment."""

import csv

import torch

from convit.locality.__main__ import main as locality_main
from convit.locality.interventions import forced_gates, gate_interventions, markdown_table
from convit.model import ConViT
from convit.training.checkpoint import FORMAT, save_checkpoint
from convit.variants import create_model


def tiny_convit(**kwargs):
    torch.manual_seed(3)
    kwargs = {
        **dict(img_size=16, patch_size=4, in_chans=1, embed_dim=16, num_heads=4, depth=3, local_up_to_layer=2),
        **kwargs,
    }
    return create_model("convit_tiny", 10, **kwargs).eval()


def test_forcing_the_gate_to_one_is_the_positional_path_by_hand():
    model = tiny_convit()
    attn = model.blocks[0].attn
    x = torch.randn(2, 16, 16)
    H, d = 4, 4
    v = attn.v(x).reshape(2, 16, H, d).transpose(1, 2)
    # positional attention by hand: softmax over keys of w . (dx, dy, dx^2 + dy^2) + b
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    r, c = rows.flatten().float(), cols.flatten().float()
    dx, dy = c[None, :] - c[:, None], r[None, :] - r[:, None]
    w, b = attn.pos_proj.weight, attn.pos_proj.bias
    score = w[:, 0, None, None] * dx + w[:, 1, None, None] * dy + w[:, 2, None, None] * (dx**2 + dy**2)
    positional = (score + b[:, None, None]).softmax(dim=-1)
    expected_pos = attn.proj((positional @ v).transpose(1, 2).reshape(2, 16, 16))
    q, k = attn.qk(x).reshape(2, 16, 2, H, d).permute(2, 0, 3, 1, 4)
    content = ((q @ k.transpose(-2, -1)) * d**-0.5).softmax(dim=-1)
    expected_content = attn.proj((content @ v).transpose(1, 2).reshape(2, 16, 16))
    before = attn.gating_param.clone()
    with torch.no_grad():
        for fused in (True, False):
            attn.fused_attn = fused
            with forced_gates(model, [0], 1.0):
                assert torch.allclose(attn(x, (4, 4)), expected_pos, atol=1e-5)
            with forced_gates(model, [0], 0.0):
                assert torch.allclose(attn(x, (4, 4)), expected_content, atol=1e-5)
    assert torch.equal(attn.gating_param, before)


def test_interventions_on_gates_set_by_hand():
    model = tiny_convit()
    images, labels = torch.randn(12, 1, 16, 16), torch.randint(0, 10, (12,))
    with torch.no_grad():
        model.blocks[0].attn.gating_param.fill_(-1e4)  # block 0 already content only
        model.blocks[1].attn.gating_param.fill_(1e4)  # block 1 already positional only
    rows = {r["intervention"]: r for r in gate_interventions(model, images, labels, batch_size=10)}
    base = rows["unchanged"]
    for same in ("block 0 content only", "block 1 positional only"):
        assert rows[same]["top1"] == base["top1"] and abs(rows[same]["loss"] - base["loss"]) < 1e-4
    with torch.no_grad():
        model.blocks[1].attn.gating_param.fill_(-1e4)  # by hand: what forcing block 1 to content computes
    by_hand = gate_interventions(model, images, labels, batch_size=10)[0]
    assert rows["block 1 content only"]["loss"] == by_hand["loss"] != base["loss"]
    assert rows["all GPSA content only"]["blocks"] == "0 1"
    assert len(rows) == 1 + 2 * 3
    assert "| block 0 positional only |" in markdown_table(list(rows.values()))


def test_command_writes_csv_table_and_plot_with_distances(tmp_path):
    kwargs = dict(img_size=16, patch_size=4, embed_dim=16, num_heads=4, depth=3)
    argv = []
    for gpsa in (2, 0):
        torch.manual_seed(3)
        model = ConViT(num_classes=10, local_up_to_layer=gpsa, **kwargs)
        path = tmp_path / f"w{gpsa}.pth"
        save_checkpoint(
            {
                "format": FORMAT,
                "model_name": "convit_tiny",
                "model_kwargs": {**kwargs, "local_up_to_layer": gpsa},
                "num_classes": 10,
                "config": {},
                "model": model.state_dict(),
                "epoch": 1,
            },
            path,
        )
        argv += ["--checkpoint", str(path), "--label", f"gpsa{gpsa}"]
    out = tmp_path / "loc"
    locality_main(argv + ["--num-images", "8", "--images", "0", "--intervene", "--authors-measure", "--out", str(out)])
    with open(out / "gpsa2" / "interventions.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["intervention"] == "unchanged" and len(rows) == 7
    assert not (out / "gpsa0" / "interventions.csv").exists()  # no GPSA: nothing to force
    report = (out / "report.md").read_text()
    assert "Gate interventions, **gpsa2**" in report and "authors' measure (px)" in report
    with open(out / "distances.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == {"gpsa2", "gpsa0"} and len(rows) == 2 * 3 * 4
    for r in rows:  # square patches of 4 pixels: pixels = 4 x patches
        assert abs(float(r["distance_px"]) - 4 * float(r["nonlocality_patches"])) < 1e-3
    assert (out / "gpsa2" / "interventions.png").stat().st_size > 0 and (out / "attention_distance.png").is_file()
