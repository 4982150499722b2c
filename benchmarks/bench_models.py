"""Speed and memory of our ConViT beside timm's ConVit (same weights) and a same-width timm ViT.

All three run interleaved in one process, and each figure is the median over repeats:
inference images/s, training-step images/s (forward, backward, AdamW step) and the peak memory of a
training step, beside each model's GFLOPs per image (fvcore's count, multiply-adds, when fvcore is installed;
else torch's FlopCounterMode, halved to multiply-adds). CPU fp32 by default; on CUDA, bf16 autocast and ``torch.cuda.max_memory_allocated``.
``--runs 3`` repeats the timing three times in the process and reports each speed ratio as the median
and the spread (min-max) over the runs; ``--compile`` times ``torch.compile``d models; ``--no-timm``
leaves timm's ConVit out (slow at 384 on a CPU); ``--threads`` sets ``torch.set_num_threads``.

    python benchmarks/bench_models.py --model convit_tiny --batch 16 --img-size 224 --json out/bench.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import timm
import torch
import torch.nn.functional as F
from timm.models.convit import ConVit as TimmConVit
from timm.models.vision_transformer import VisionTransformer

# this checkout's convit, even when another checkout is pip-installed (editable installs point elsewhere)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import convit  # noqa: E402  (registers our models)


def build_models(
    name: str, img_size: int, device: torch.device, timm_convit: bool = True
) -> dict[str, torch.nn.Module]:
    """Ours, timm's ConVit with our weights (unless ``timm_convit`` is off), and a ViT of the same width and
    depth (qkv_bias off)."""
    ours = timm.create_model(name, img_size=img_size)
    heads = ours.num_heads
    reference = TimmConVit(
        img_size=img_size,
        embed_dim=ours.embed_dim // heads,
        num_heads=heads,
        depth=len(ours.blocks),
        local_up_to_layer=ours.local_up_to_layer,
    )
    reference.load_state_dict(ours.state_dict())
    vit = VisionTransformer(
        img_size=img_size,
        patch_size=16,
        embed_dim=ours.embed_dim,
        depth=len(ours.blocks),
        num_heads=heads,
        qkv_bias=False,
    )
    models = {"ours": ours.to(device), "timm_convit": reference.to(device), "vit": vit.to(device)}
    if not timm_convit:
        del models["timm_convit"]
    return models


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_steps(model: torch.nn.Module, batch: int, img_size: int, device: torch.device):
    """(inference step, training step) closures on fixed random data."""
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def infer():
        model.eval()
        with torch.inference_mode(), autocast:
            model(images)

    def train():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return infer, train


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _high_water_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_train_memory(
    name: str, model_key: str, batch: int, img_size: int, device: torch.device, compile: bool = False
) -> int:
    """Peak bytes of one training step: model, optimizer state, gradients, activations and temporaries.

    On CUDA, ``max_memory_allocated``. On CPU, in a fresh process (a fork would inherit, and can hang
    on, the parent's OpenMP threads): the resident-set high-water mark, reset through
    /proc/self/clear_refs after a warm-up step, minus the resident set before the model was built.
    """
    if device.type == "cuda":
        model = build_models(name, img_size, device)[model_key]
        if compile:
            model = torch.compile(model)
        _, train = make_steps(model, batch, img_size, device)
        train()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        train()
        return torch.cuda.max_memory_allocated(device)
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--model",
            name,
            "--batch",
            str(batch),
            "--img-size",
            str(img_size),
            "--memory-child",
            model_key,
            "--threads",
            str(torch.get_num_threads()),
        ]
        + (["--compile"] if compile else []),
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip().splitlines()[-1])


def _memory_child(name: str, model_key: str, batch: int, img_size: int, compile: bool = False) -> int:
    base = _rss_bytes()
    model = build_models(name, img_size, torch.device("cpu"))[model_key]
    if compile:
        model = torch.compile(model)
    _, train = make_steps(model, batch, img_size, torch.device("cpu"))
    train()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    train()
    return _high_water_bytes() - base


def saved_activation_bytes(model: torch.nn.Module, batch: int, img_size: int, device: torch.device) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of one training forward.

    Deterministic, unlike a resident-set peak: it counts each saved storage once.
    """
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        model(images)
    return sum(storages.values())


def gflops_per_image(model: torch.nn.Module, img_size: int, device: torch.device) -> tuple[float, str]:
    """(GFLOPs of one image's inference forward, the counter used), FLOPs counted as multiply-adds."""
    model.eval()
    image = torch.randn(1, 3, img_size, img_size, device=device)
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(image)
        return counter.get_total_flops() / 2e9, "torch FlopCounterMode / 2"
    flops = FlopCountAnalysis(model, image).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return flops.total() / 1e9, "fvcore"


def time_interleaved(steps: dict[str, Callable], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each step, the models taking turns inside every repeat."""
    times = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def run(
    name: str,
    batch: int,
    img_size: int,
    repeats: int,
    warmup: int,
    device: torch.device,
    memory: bool,
    runs: int = 1,
    compile: bool = False,
    timm_convit: bool = True,
) -> dict:
    """Measure the models; returns a JSON-ready dict of figures and ratios.

    The figures are those of the last of ``runs`` timing runs; ``spread`` holds each speed ratio of every run.
    """
    torch.manual_seed(0)
    models = build_models(name, img_size, device, timm_convit)
    # counted first: timm's ConVit caches a tensor in its first forward (inference-mode ones cannot be traced)
    counted = {k: gflops_per_image(m, img_size, device) for k, m in models.items()}
    timed = {key: torch.compile(model) for key, model in models.items()} if compile else models
    infer, train = {}, {}
    for key, model in timed.items():
        infer[key], train[key] = make_steps(model, batch, img_size, device)
    for _ in range(max(warmup, 2 if compile else 0)):  # compiling happens here (inference and training graphs)
        for key in models:
            infer[key]()
            train[key]()
    per_run = []
    for _ in range(runs):
        infer_s = time_interleaved(infer, repeats, device)
        train_s = time_interleaved(train, repeats, device)
        per_run.append((infer_s, train_s))
    pairs = [
        (a, b) for a, b in (("ours", "vit"), ("ours", "timm_convit"), ("timm_convit", "vit")) if {a, b} <= set(models)
    ]
    spread = {
        figure: {
            f"{a}/{b}": [s[b] / s[a] for s in (r[index] for r in per_run)]  # speed ratio = inverse time ratio
            for a, b in pairs
        }
        for index, figure in enumerate(("inference_images_per_s", "train_images_per_s"))
    }
    result = {
        "model": name,
        "batch": batch,
        "img_size": img_size,
        "repeats": repeats,
        "runs": runs,
        "compile": compile,
        "device": str(device),
        "dtype": "bf16 autocast" if device.type == "cuda" else "fp32",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "inference_images_per_s": {k: batch / v for k, v in infer_s.items()},
        "train_images_per_s": {k: batch / v for k, v in train_s.items()},
        "spread": spread,
    }
    result["gflops_per_image"] = {k: value for k, (value, _) in counted.items()}
    result["flops_counter"] = next(iter(counted.values()))[1]
    result["saved_activations_mib"] = {
        k: saved_activation_bytes(m, batch, img_size, device) / 2**20 for k, m in models.items()
    }  # eager modules: what autograd keeps without a compiler
    if memory:
        result["train_peak_memory_mib"] = {
            k: peak_train_memory(name, k, batch, img_size, device, compile) / 2**20 for k in models
        }
    ratios = {}
    for figure in (
        "inference_images_per_s",
        "train_images_per_s",
        "gflops_per_image",
        "train_peak_memory_mib",
        "saved_activations_mib",
    ):
        if figure in result:
            values = result[figure]
            ratios[figure] = {f"{a}/{b}": values[a] / values[b] for a, b in pairs}
    result["ratios"] = ratios
    return result


def format_table(result: dict) -> str:
    """Markdown table of the figures and their ratios (speed ratios: median [min-max] over the runs)."""
    keys = [k for k in ("ours", "timm_convit", "vit") if k in result["inference_images_per_s"]]
    names = {"ours": "ours", "timm_convit": "timm ConVit", "vit": "same-width ViT"}
    pairs = list(result["ratios"]["inference_images_per_s"])
    pair_names = {"ours/vit": "ours/ViT", "ours/timm_convit": "ours/timm", "timm_convit/vit": "timm/ViT"}
    lines = [
        f"{result['model']}, batch {result['batch']}, {result['img_size']}px, {result['device']} "
        f"{result['dtype']}, {result['threads']} threads, {'torch.compile, ' if result.get('compile') else ''}"
        f"median of {result['repeats']}, {result.get('runs', 1)} run(s)",
        "",
        "| figure | " + " | ".join(names[k] for k in keys) + " | " + " | ".join(pair_names[p] for p in pairs) + " |",
        "|---" * (1 + len(keys) + len(pairs)) + "|",
    ]
    for figure, label in (
        ("inference_images_per_s", "inference img/s"),
        ("train_images_per_s", "train-step img/s"),
        ("gflops_per_image", f"GFLOPs per image ({result.get('flops_counter', 'fvcore')})"),
        ("train_peak_memory_mib", "train-step peak MiB"),
        ("saved_activations_mib", "activations saved for backward, MiB"),
    ):
        if figure not in result:
            continue
        v, r = result[figure], result["ratios"][figure]
        cells = [f"{v[k]:.3f}" if figure == "gflops_per_image" else f"{v[k]:.1f}" for k in keys]
        for pair in pairs:
            runs = result.get("spread", {}).get(figure, {}).get(pair)
            if runs and len(runs) > 1:
                cells.append(f"{statistics.median(runs):.2f} [{min(runs):.2f}-{max(runs):.2f}]")
            else:
                cells.append(f"{r[pair]:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="convit_tiny", choices=sorted(convit.VARIANTS), help="variant to time (default: %(default)s)"
    )
    parser.add_argument("--batch", type=int, default=16, metavar="N", help="batch size (default: %(default)s)")
    parser.add_argument(
        "--img-size", type=int, default=224, metavar="PX", help="image side, a multiple of 16 (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=7, metavar="N", help="interleaved timed repeats per run (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, metavar="N", help="untimed calls before timing (default: %(default)s)"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        metavar="DEV",
        help="torch device (default: cuda where available, else cpu; here %(default)s)",
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="timing runs in this process; ratios get a spread (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="time torch.compile'd models")
    parser.add_argument("--no-timm", action="store_true", help="leave timm's ConVit out (it is slow at 384)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument(
        "--json", default=None, metavar="FILE", help="write the figures to this JSON file (default: none)"
    )
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(_memory_child(args.model, args.memory_child, args.batch, args.img_size, args.compile))
        return
    if args.img_size % 16:
        parser.error(f"--img-size {args.img_size} is not a multiple of the patch size 16")
    result = run(
        args.model,
        args.batch,
        args.img_size,
        args.repeats,
        args.warmup,
        torch.device(args.device),
        memory=not args.no_memory,
        runs=args.runs,
        compile=args.compile,
        timm_convit=not args.no_timm,
    )
    print(format_table(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
