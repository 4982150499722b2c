import torch
from conftest import NO_AUG, TINY_MODEL, run_script

from convit.training.distributed import all_reduce_sum, init_distributed
from convit.variants import create_model
from convit.weights import read_checkpoint


def test_single_process_world(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed()
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    assert all_reduce_sum([1.5, 3.0], info.device) == [1.5, 3.0]


def test_ddp_step_equals_single_process_step_on_the_concatenated_batch(folder, tmp_path):
    # one SGD step: 2 processes x 12 images vs 1 process x 24 images (the same images, unaugmented)
    common = [
        "--data-path",
        folder,
        *TINY_MODEL,
        *NO_AUG,
        "--epochs",
        "1",
        "--opt",
        "sgd",
        "--lr",
        "0.5",
        "--lr-base-batch",
        "0",
        "--warmup-epochs",
        "0",
        "--weight-decay",
        "0",
    ]
    run_script("train.py", common + ["--batch-size", "12", "--output-dir", tmp_path / "ddp"], nproc=2)
    run_script("train.py", common + ["--batch-size", "24", "--output-dir", tmp_path / "single"])
    ddp = read_checkpoint(tmp_path / "ddp" / "last.pth")["model"]
    single = read_checkpoint(tmp_path / "single" / "last.pth")["model"]
    torch.manual_seed(0)  # train.py's seed: the shared initial weights
    initial = create_model(
        "convit_tiny", 3, img_size=16, patch_size=8, embed_dim=32, num_heads=4, depth=2, local_up_to_layer=1
    ).state_dict()
    moved = max((single[k] - initial[k]).abs().max().item() for k in single)
    assert moved > 1e-3  # the step did change the weights
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-6, msg=k)


def test_resume_under_a_different_world_size(folder, tmp_path):
    args = [
        "--data-path",
        folder,
        *TINY_MODEL,
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--repeated-aug",
        "--model-ema",
        "--output-dir",
        tmp_path,
    ]
    run_script("train.py", args + ["--stop-after", "1"], nproc=2)
    first = read_checkpoint(tmp_path / "last.pth")
    run_script("train.py", args + ["--resume", "auto", "--batch-size", "8"])  # same global batch
    last = read_checkpoint(tmp_path / "last.pth")
    assert (first["epoch"], last["epoch"]) == (0, 1)
    steps = first["num_updates"]  # 24 images / (2 x 4) per step
    assert steps == 3 and last["num_updates"] == 2 * steps
    assert len(last["optimizer"]["state"]) == len(first["optimizer"]["state"]) > 0
    assert last["optimizer"]["state"][0]["step"] == 2 * steps  # AdamW kept counting from the checkpoint
    assert not torch.equal(first["model_ema"]["head.weight"], last["model_ema"]["head.weight"])


def test_two_nodes_equal_one_node_with_two_processes(folder, tmp_path):
    """Two torchrun launchers as two "nodes" (c10d rendezvous on 127.0.0.1) train exactly as one with 2 processes."""
    import socket
    import subprocess
    import sys

    from conftest import ROOT, child_env

    args = [
        "--data-path",
        folder,
        *TINY_MODEL,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--repeated-aug",
        "--model-ema",
    ]
    args = [str(a) for a in args]
    run_script("train.py", args + ["--output-dir", str(tmp_path / "one")], nproc=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launchers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node-rank={rank}",
                "--nproc-per-node=1",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=convit_test",
                str(ROOT / "train.py"),
                *args,
                "--output-dir",
                str(tmp_path / "two"),
            ],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in launchers]
    assert all(p.returncode == 0 for p in launchers), outputs
    one, two = (read_checkpoint(tmp_path / d / "last.pth") for d in ("one", "two"))
    assert one["num_updates"] == two["num_updates"] > 0
    for key in ("model", "model_ema"):
        for name, tensor in one[key].items():
            assert torch.equal(tensor, two[key][name]), (key, name)
