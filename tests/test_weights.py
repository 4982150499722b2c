import argparse
import os

import pytest
import torch
from safetensors.torch import save_file

from convit.training.checkpoint import save_checkpoint, training_state
from convit.variants import create_model
from convit.weights import CheckpointError, extract_state_dict, load_weights, read_checkpoint

TINY = dict(img_size=16, patch_size=8, embed_dim=32, num_heads=4, depth=2, local_up_to_layer=1)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return create_model("convit_tiny", num_classes=3, **TINY)


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_atomic_save_never_leaves_a_partial_file(tmp_path, model):
    path = tmp_path / "last.pth"
    save_checkpoint({"model": model.state_dict(), "epoch": 1}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"model": model.state_dict(), "epoch": 2, "bad": Unpicklable()}, path)
    assert read_checkpoint(path)["epoch"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp file left behind


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_is_one_clear_line(tmp_path, model, damage):
    path = tmp_path / "best.pth"
    save_checkpoint({"model": model.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00junk" * 100, "empty": b""}[damage])
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert "is corrupt or truncated" in str(err.value) and "\n" not in str(err.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")


def test_foreign_formats_load_strictly(tmp_path, model):
    sd = model.state_dict()
    official = {"model": sd, "optimizer": {}, "epoch": 299, "args": argparse.Namespace(lr=5e-4)}
    torch.save(official, tmp_path / "official.pth")  # pickles a Namespace: the one allowed class
    torch.save(sd, tmp_path / "timm.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "ddp.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "timm.safetensors"))
    for name in ("official.pth", "timm.pth", "ddp.pth", "timm.safetensors"):
        fresh = create_model("convit_tiny", num_classes=3, **TINY)
        load_weights(fresh, extract_state_dict(read_checkpoint(tmp_path / name)))
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items()), name


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="corrupt or not a safetensors file"):
        read_checkpoint(path)


def test_mismatched_weights_are_one_clear_line(model):
    other = create_model("convit_tiny", num_classes=5, **TINY)
    with pytest.raises(CheckpointError, match="does not fit the model") as err:
        load_weights(other, model.state_dict())
    assert "\n" not in str(err.value)
    sd = dict(model.state_dict())
    sd.pop("head.bias")
    with pytest.raises(CheckpointError, match=r"missing \['head.bias'\]"):
        load_weights(model, sd)


def test_ema_and_resume_checks(model):
    with pytest.raises(CheckpointError, match="no EMA weights"):
        extract_state_dict({"model": model.state_dict()}, use_ema=True)
    ema = {k: v + 1 for k, v in model.state_dict().items()}
    got = extract_state_dict({"model": model.state_dict(), "model_ema": ema}, use_ema=True)
    assert torch.equal(got["head.bias"], ema["head.bias"])
    with pytest.raises(CheckpointError, match="--resume needs a last.pth"):
        training_state({"model": model.state_dict()})


def test_pickled_code_is_refused_without_running(tmp_path, model):
    import os

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(), "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="holds code or objects other than weights") as err:
        read_checkpoint(path)
    assert "\n" not in str(err.value) and not marker.exists()


def test_a_crashed_saves_temp_file_is_removed_and_checkpoints_follow_the_umask(tmp_path, model):
    stale = tmp_path / ".last.pth.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    old = os.umask(0o022)
    try:
        save_checkpoint({"model": model.state_dict()}, tmp_path / "last.pth")
    finally:
        os.umask(old)
    assert not stale.exists()
    assert (tmp_path / "last.pth").stat().st_mode & 0o777 == 0o644
