"""Fine-tuning from foreign weights files, the head, the position embedding, resume, freezing, layer decay, accumulation."""

import argparse
import math

import pytest
import torch
from conftest import NO_AUG, TINY_MODEL, fails_in_one_line, make_image_folder, read_log
from safetensors.torch import save_file

import train as train_script
from convit.pos_embed import resample_pos_embed
from convit.training.config import parse_args
from convit.training.engine import build_optimizer, build_scheduler
from convit.training.finetune import Source, apply_freeze, load_source
from convit.variants import create_model
from convit.weights import is_training_checkpoint, read_checkpoint

TINY_KWARGS = dict(patch_size=8, embed_dim=32, num_heads=4, depth=2, local_up_to_layer=1)
# the run: TINY_MODEL at 32 pixels (a 4x4 grid) where the source was trained at 16 (2x2)
AT_32 = [a if a != "16" else "32" for a in TINY_MODEL] + ["--locality-images", "0", "--batch-size", "8"]


def tiny_source(num_classes: int = 5, **kwargs) -> torch.nn.Module:
    torch.manual_seed(123)
    return create_model("convit_tiny", num_classes, img_size=16, **{**TINY_KWARGS, **kwargs})


def save_foreign(model, path, fmt: str):
    sd = model.state_dict()
    if fmt == "timm_pth":
        torch.save(sd, path)
    elif fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:  # the original authors' main.py: weights beside their argparse.Namespace
        torch.save({"model": sd, "epoch": 299, "args": argparse.Namespace(lr=5e-4, model="convit_tiny")}, path)
    return path


def run_train(argv, capsys=None):
    train_script.main([str(a) for a in argv])
    return capsys.readouterr().out if capsys else None


@pytest.mark.parametrize("fmt, suffix", [("timm_pth", ".pth"), ("safetensors", ".safetensors"), ("authors", ".pth")])
def test_finetune_a_foreign_file_at_another_resolution_then_resume(folder, tmp_path, capsys, fmt, suffix):
    source = tiny_source()
    path = save_foreign(source, tmp_path / f"source{suffix}", fmt)
    out = tmp_path / "run"
    # head_only: the body is frozen, so after training it must still equal the source exactly
    args = ["--data-path", folder, *AT_32, *NO_AUG, "--freeze", "head_only", "--model-ema", "--output-dir", out]
    printed = run_train([*args, "--epochs", "2", "--stop-after", "1", "--finetune", path], capsys)
    assert "carries no class names" in printed
    assert "head is re-initialised: the source predicts 5 classes, the data 3" in printed
    ckpt = read_checkpoint(out / "last.pth")
    sd, src = ckpt["model"], source.state_dict()
    for key, value in src.items():
        if not key.startswith("head.") and key != "pos_embed":
            assert torch.equal(sd[key], value), key
            assert torch.equal(ckpt["model_ema"][key], value), key  # the EMA started from the loaded weights
    assert sd["head.weight"].shape == (3, 32) and sd["pos_embed"].shape == (1, 16, 32)
    assert torch.equal(sd["pos_embed"], resample_pos_embed(src["pos_embed"], (4, 4), (2, 2)))
    assert str(path) in ckpt["finetuned_from"] and ckpt["epoch"] == 0
    assert len(read_log(out)) == 1
    # --resume wins over --finetune and does not reload the source (gone by now)
    path.unlink()
    printed = run_train([*args, "--epochs", "2", "--finetune", path, "--resume", "auto"], capsys)
    assert "(resumed; not reloaded)" in printed
    resumed = read_checkpoint(out / "last.pth")
    assert resumed["epoch"] == 1 and resumed["finetuned_from"] == ckpt["finetuned_from"]
    assert len(read_log(out)) == 2
    assert not torch.equal(resumed["model"]["head.weight"], sd["head.weight"])  # the head kept training


def test_load_source_keeps_the_head_when_classes_match_and_resamples_pos_embed():
    source = tiny_source(num_classes=3)
    model = create_model("convit_tiny", 3, img_size=24, **TINY_KWARGS)
    sd = source.state_dict()
    notes = load_source(model, Source(sd, "src", ["a", "b", "c"]), ["a", "b", "c"])
    assert any("head (3 classes) is kept" in n for n in notes)
    for key, value in model.state_dict().items():
        expected = resample_pos_embed(sd[key], (3, 3), (2, 2)) if key == "pos_embed" else sd[key]
        assert torch.equal(value, expected), key
    # other class names of the same count: the head is re-initialised, and said so
    fresh = create_model("convit_tiny", 3, img_size=24, **TINY_KWARGS)
    head = fresh.head.weight.clone()
    notes = load_source(fresh, Source(sd, "src", ["a", "b", "c"]), ["x", "y", "z"])
    assert any("class names differ" in n for n in notes) and torch.equal(fresh.head.weight, head)


def train_fails(capsys, argv) -> str:
    return fails_in_one_line(capsys, "train.py", train_script.main, [str(a) for a in argv])


def test_sources_that_do_not_fit_stop_before_anything_is_written(folder, tmp_path, capsys):
    wide = save_foreign(tiny_source(embed_dim=48), tmp_path / "wide.pth", "timm_pth")
    deep = save_foreign(tiny_source(depth=3), tmp_path / "deep.pth", "timm_pth")
    torch.save(torch.nn.Linear(4, 4).state_dict(), tmp_path / "linear.pth")
    out = tmp_path / "out"
    base = ["--data-path", folder, *AT_32, "--output-dir", out]
    line = train_fails(capsys, [*base, "--finetune", wide])
    assert "does not fit the recipe's model" in line and "is [" in line
    line = train_fails(capsys, [*base, "--finetune", deep])
    assert "does not fit the recipe's model" in line and "blocks.2." in line
    assert "is not a ConViT" in train_fails(capsys, [*base, "--finetune", tmp_path / "linear.pth"])
    assert "--finetune 'nope.pth' not found" in train_fails(capsys, [*base, "--finetune", "nope.pth"])
    assert "accum_steps must lie in [1, inf)" in train_fails(capsys, [*base, "--accum-steps", "0"])
    line = train_fails(capsys, [*base, "--finetune", "pretrained", "--pretrained-file", "nope.pth"])
    assert "--pretrained-file 'nope.pth' not found" in line
    assert "--pretrained-file is read only with --finetune pretrained" in train_fails(
        capsys, [*base, "--pretrained-file", wide]
    )
    assert not out.exists()


def test_finetune_pretrained_reads_an_offline_file(folder, tmp_path, capsys):
    path = save_foreign(tiny_source(num_classes=1000), tmp_path / "convit_tiny.fb_in1k.safetensors", "safetensors")
    out = tmp_path / "run"
    argv = ["--data-path", folder, *AT_32, "--epochs", "1", "--output-dir", out]
    printed = run_train([*argv, "--finetune", "pretrained", "--pretrained-file", path], capsys)
    assert "timm's convit_tiny weights from" in printed and "predicts 1000 classes" in printed
    assert read_checkpoint(out / "best.pth")["finetuned_from"].startswith("timm's convit_tiny weights")


def test_freeze_modes():
    def trainable(mode):
        model = create_model("convit_tiny", 3, img_size=16, **TINY_KWARGS)
        apply_freeze(model, mode)
        return {n for n, p in model.named_parameters() if p.requires_grad}, {n for n, _ in model.named_parameters()}

    names, every = trainable("head_only")
    assert names == {"head.weight", "head.bias"}
    names, _ = trainable("gates")
    assert names == every - {"blocks.0.attn.gating_param"}
    names, _ = trainable("pos_proj")
    assert names == every - {"blocks.0.attn.pos_proj.weight", "blocks.0.attn.pos_proj.bias"}
    names, _ = trainable("attn_only")
    assert names and all(n.startswith("head.") or ".attn." in n for n in names)
    assert "blocks.1.attn.qkv.weight" in names and "blocks.0.attn.qk.weight" in names
    assert trainable("none")[0] == every


def test_layer_decay_lr_per_group_after_a_scheduler_step():
    cfg = parse_args(["--layer-decay", "0.5", "--lr", "0.008", "--warmup-epochs", "0", "--min-lr", "0"])
    model = create_model(cfg.model, 10, img_size=16, **cfg.model_kwargs)  # digits: depth 6
    optimizer = build_optimizer(cfg, model, world_size=1)
    scheduler = build_scheduler(optimizer, cfg, updates_per_epoch=4, epochs=2, warmup_epochs=0)
    scheduler.step_update(4)  # half-way through a cosine over 8 updates
    base = 0.008 * 64 / 512 * 0.5 * (1 + math.cos(math.pi * 4 / 8))
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    depth = len(model.blocks)
    # timm's layer ids (group_matcher): stem 0, block i -> i + 1, norm with the last block, head depth + 1
    assert group_of[id(params["head.weight"])]["lr"] == pytest.approx(base)
    assert group_of[id(params["blocks.5.mlp.fc1.weight"])]["lr"] == pytest.approx(base * 0.5)
    assert group_of[id(params["blocks.0.attn.qk.weight"])]["lr"] == pytest.approx(base * 0.5**depth)
    assert group_of[id(params["patch_embed.proj.weight"])]["lr"] == pytest.approx(base * 0.5 ** (depth + 1))
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}


def test_accumulating_2x8_equals_one_step_of_16_through_train(tmp_path, capsys):
    data = make_image_folder(tmp_path / "imgs", n_train=[11, 11, 10], n_val=1)  # 32 training images
    common = ["--data-path", data, *TINY_MODEL, *NO_AUG, "--epochs", "1", "--locality-images", "0"]
    common += ["--warmup-epochs", "0", "--drop", "0"]
    for batch, accum in ((16, 1), (8, 2)):
        run_train([*common, "--batch-size", batch, "--accum-steps", accum, "--output-dir", tmp_path / f"b{batch}"])
    one, two = (read_checkpoint(tmp_path / d / "last.pth") for d in ("b16", "b8"))
    assert one["num_updates"] == two["num_updates"] == 2  # ceil(4 batches / 2)
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    assert read_log(tmp_path / "b16")[0]["lr"] == pytest.approx(read_log(tmp_path / "b8")[0]["lr"])
    assert is_training_checkpoint(one)
    # resuming with another accumulation would change the schedule last.pth was made for
    argv = [*common, "--epochs", "2", "--batch-size", "8", "--output-dir", tmp_path / "b8", "--resume", "auto"]
    line = train_fails(capsys, argv)
    assert "the run was trained with accum_steps=2, the command line now says accum_steps=1" in line


def test_layer_decay_without_a_scheduler_scales_each_group_once():
    cfg = parse_args(["--layer-decay", "0.5", "--lr", "0.008", "--sched", "none"])
    model = create_model(cfg.model, 10, img_size=16, **cfg.model_kwargs)
    optimizer = build_optimizer(cfg, model, world_size=1)
    assert build_scheduler(optimizer, cfg, updates_per_epoch=4, epochs=2, warmup_epochs=0) is None
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert group_of[id(params["head.weight"])]["lr"] == pytest.approx(0.001)
    assert group_of[id(params["patch_embed.proj.weight"])]["lr"] == pytest.approx(0.001 * 0.5**7)


def test_grad_checkpointing_trains_the_same_weights(folder, tmp_path, monkeypatch):
    import convit.model

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    real = convit.model.checkpoint
    monkeypatch.setattr(convit.model, "checkpoint", counted)
    common = ["--data-path", folder, *TINY_MODEL, *NO_AUG, "--epochs", "1", "--batch-size", "8"]
    common += ["--locality-images", "0"]
    run_train([*common, "--output-dir", tmp_path / "plain"])
    assert not calls
    run_train([*common, "--grad-checkpointing", "--output-dir", tmp_path / "ckpt"])
    assert len(calls) >= 3 * 2  # at least 3 training steps x 2 blocks (the model also checkpoints in eval)
    plain, ckpt = (read_checkpoint(tmp_path / d / "last.pth")["model"] for d in ("plain", "ckpt"))
    for key, value in plain.items():
        torch.testing.assert_close(ckpt[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert read_checkpoint(tmp_path / "ckpt" / "last.pth")["config"]["grad_checkpointing"] is True
