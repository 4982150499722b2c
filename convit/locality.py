"""Locality analysis of ConViT (d'Ascoli et al., 2021): attention maps, non-locality, gates, head ablation.

Non-locality of block l, head h, over a batch of images and patch tokens only::

    D(l, h) = mean over images and queries i of  sum_j A_ij * ||p_i - p_j||

with patch positions p = (row, col) in units of patches. A is the attention the block really applies,
captured by a forward pre-hook on its attention module (input after norm1, position embedding and
class token); in the self-attention blocks the class token's row and column are dropped and each row
renormalised. Gates are sigmoid(lambda) per GPSA head: 1 is fully positional, 0 fully content.

    python -m convit.locality --model convit_tiny --data digits --out out/locality
    python -m convit.locality --log out/train/log.jsonl --out out/locality
"""

import argparse
import contextlib
import csv
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .attention import GPSA, relative_offsets
from .checkpoint import CheckpointError, model_from_checkpoint
from .data import DataError, DigitsDataset, digits_split
from .engine import create_model
from .model import ConViT

# ---------------------------------------------------------------------------------------------- measures


@contextlib.contextmanager
def _analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad inside; every module's own training flag restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def _unwrap(model: nn.Module) -> ConViT:
    """The ConViT inside a DistributedDataParallel / DataParallel wrapper or a torch.compile module."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    if not isinstance(model, ConViT):
        raise TypeError(f"expected a ConViT, got {type(model).__name__}")
    return model


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def _chunks(images: torch.Tensor, batch_size: int, progress: bool, desc: str) -> Iterator[torch.Tensor]:
    starts = range(0, images.shape[0], batch_size)
    if progress and len(starts) > 1:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", file=sys.stderr)
    for start in starts:
        yield images[start : start + batch_size]


def _attention_maps(
    model: ConViT, images: torch.Tensor, batch_size: int = 32, progress: bool = False
) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """Image-averaged patch-only attention maps (H x N x N per block, float32 on CPU) and the patch grid."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty batch shaped (B, C, H, W), got shape {list(images.shape)}")
    model = _unwrap(model)
    device, dtype = _model_device_dtype(model)
    sums: dict[int, torch.Tensor] = {}
    grid: list[tuple[int, int]] = []

    def make_hook(index: int):
        def hook(attn: nn.Module, args: tuple) -> None:
            x, grid_size = args[0], tuple(args[1])
            probs = attn.attention_probs(x, grid_size).float()
            num_patches = grid_size[0] * grid_size[1]
            if probs.shape[-1] == num_patches + 1:  # class token first: drop it, renormalise the rows
                probs = probs[..., 1:, 1:]
                probs = probs / probs.sum(dim=-1, keepdim=True)
            total = probs.sum(dim=0)
            sums[index] = total if index not in sums else sums[index] + total
            if index == 0:
                grid.append(grid_size)

        return hook

    handles = []
    with _analysis_mode(model):
        try:
            for index, block in enumerate(model.blocks):
                handles.append(block.attn.register_forward_pre_hook(make_hook(index)))
            for chunk in _chunks(images, batch_size, progress, "attention maps"):
                model(chunk.to(device=device, dtype=dtype))
        finally:
            for handle in handles:
                handle.remove()
    maps = [sums[i].div_(images.shape[0]).cpu() for i in range(len(model.blocks))]
    return maps, grid[0]


def attention_maps(
    model: ConViT, images: torch.Tensor, batch_size: int = 32, progress: bool = False
) -> list[torch.Tensor]:
    """One tensor per block, heads x N x N: the attention over patch tokens, averaged over ``images``.

    Captured from the model's own forward pass; in the blocks after the class token joins, its row and
    column are dropped and each row renormalised to sum to 1. Returned as float32 on the CPU.
    """
    return _attention_maps(model, images, batch_size, progress)[0]


def patch_distances(grid_size: tuple[int, int]) -> torch.Tensor:
    """Euclidean distance between patches i and j in patch units, N x N, patches numbered row by row."""
    return relative_offsets(grid_size, torch.device("cpu"))[..., 2].sqrt()


def _nonlocality_from_maps(maps: Sequence[torch.Tensor], grid_size: tuple[int, int]) -> torch.Tensor:
    distance = patch_distances(grid_size)
    # D is linear in A, so the mean over images of per-image D is D of the image-averaged map.
    return torch.stack([(attn * distance).sum(dim=-1).mean(dim=-1) for attn in maps])


def nonlocality(model: ConViT, images: torch.Tensor, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
    """Non-locality D(l, h) in patch units, shape blocks x heads (see the module docstring)."""
    maps, grid_size = _attention_maps(model, images, batch_size, progress)
    return _nonlocality_from_maps(maps, grid_size)


def gates(model: ConViT) -> torch.Tensor:
    """sigmoid(lambda) of every GPSA head, shape GPSA-blocks x heads (float32, CPU)."""
    model = _unwrap(model)
    values = [block.attn.gate().detach().float().cpu() for block in model.blocks if isinstance(block.attn, GPSA)]
    return torch.stack(values) if values else torch.zeros(0, model.num_heads)


def _report(model: ConViT, maps: Sequence[torch.Tensor], grid_size: tuple[int, int], num_images: int) -> dict:
    distance = _nonlocality_from_maps(maps, grid_size)
    gate = gates(model)
    blocks = []
    for index, block in enumerate(model.blocks):
        is_gpsa = isinstance(block.attn, GPSA)
        blocks.append(
            {
                "block": index,
                "type": "GPSA" if is_gpsa else "MHSA",
                "nonlocality": distance[index].tolist(),
                "gate": gate[index].tolist() if is_gpsa else None,
            }
        )
    return {
        "grid_size": list(grid_size),
        "num_images": num_images,
        "num_heads": model.num_heads,
        "local_up_to_layer": model.local_up_to_layer,
        "nonlocality": distance.tolist(),
        "gates": gate.tolist(),
        "blocks": blocks,
    }


def locality_report(model: ConViT, images: torch.Tensor, batch_size: int = 32, progress: bool = False) -> dict:
    """A JSON-serialisable dict: non-locality (blocks x heads), gates (GPSA-blocks x heads), and both per block."""
    maps, grid_size = _attention_maps(model, images, batch_size, progress)
    return _report(_unwrap(model), maps, grid_size, images.shape[0])


def epoch_locality(model: ConViT, images: torch.Tensor, batch_size: int = 32) -> dict[str, list[list[float]]]:
    """What a training loop logs each epoch under ``locality``: ``{"nonlocality": [[...]], "gates": [[...]]}``."""
    return {"nonlocality": nonlocality(model, images, batch_size).tolist(), "gates": gates(model).tolist()}


@contextlib.contextmanager
def _ablate_head(model: ConViT, block: int, head: int) -> Iterator[None]:
    """Zero one head's output (its channels of the attention output, before ``proj``) while inside."""
    attn = model.blocks[block].attn
    channels = slice(head * attn.head_dim, (head + 1) * attn.head_dim)

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0].clone()
        x[..., channels] = 0
        return (x,) + tuple(args[1:])

    handle = attn.proj.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def head_ablation(
    model: ConViT, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64, progress: bool = False
) -> tuple[float, torch.Tensor]:
    """Top-1 accuracy on (images, labels) and its drop, blocks x heads, when each head alone is zeroed.

    Drops are in accuracy units (0.05 = five points); negative when removing a head helps.
    The blocks before the ablated one run once per batch of images: their outputs are reused for every
    head of the later blocks (an exact shortcut, about twice as fast as a full forward per head).
    """
    model = _unwrap(model)
    device, dtype = _model_device_dtype(model)
    blocks, heads = len(model.blocks), model.num_heads
    correct_base, correct = 0, torch.zeros(blocks, heads)
    progress_bar = None
    if progress:
        from tqdm import tqdm

        progress_bar = tqdm(
            total=math.ceil(images.shape[0] / batch_size) * blocks * heads,
            desc="head ablation",
            unit="head",
            file=sys.stderr,
        )
    with _analysis_mode(model):
        for start in range(0, images.shape[0], batch_size):
            x, grid_size = model._embed(images[start : start + batch_size].to(device=device, dtype=dtype))
            target = labels[start : start + batch_size].to(device)
            inputs = []  # the input of each block, class token joined, as the model's forward computes it
            for index, block in enumerate(model.blocks):
                x = model._join_class_token(index, x)
                inputs.append(x)
                x = block(x, grid_size)

            def hits(y: torch.Tensor, target: torch.Tensor = target) -> int:
                return (model.forward_head(model.norm(y)).argmax(dim=-1) == target).sum().item()

            correct_base += hits(x)
            for b in range(blocks):
                for h in range(heads):
                    with _ablate_head(model, b, h):
                        y = model.blocks[b](inputs[b], grid_size)
                    for index in range(b + 1, blocks):
                        y = model.blocks[index](model._join_class_token(index, y), grid_size)
                    correct[b, h] += hits(y)
                    if progress_bar is not None:
                        progress_bar.update()
    if progress_bar is not None:
        progress_bar.close()
    base = correct_base / images.shape[0]
    return base, base - correct / images.shape[0]


# ---------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_nonlocality(report: dict, path: str) -> None:
    """Non-locality per block, one dot per head; the GPSA blocks shaded."""
    plt = _pyplot()
    distance = torch.tensor(report["nonlocality"])
    blocks, heads = distance.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * blocks + 2), 3.2))
    ax.axvspan(-0.5, report["local_up_to_layer"] - 0.5, color="0.92", label="GPSA blocks")
    for h in range(heads):
        jitter = (h - (heads - 1) / 2) * min(0.05, 0.5 / heads)
        ax.scatter(
            torch.arange(blocks) + jitter,
            distance[:, h],
            s=14,
            color=plt.cm.viridis(h / max(heads - 1, 1)),
            label=f"head {h}" if heads <= 9 else None,
        )
    ax.set_xlabel("block")
    ax.set_ylabel("non-locality (patches)")
    ax.set_xticks(range(blocks))
    ax.set_xlim(-0.5, blocks - 0.5)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=6, ncol=2, loc="upper left", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _heatmap(
    values: torch.Tensor,
    path: str,
    title: str,
    label: str,
    cmap: str,
    vmin: float | None = None,
    vmax: float | None = None,
    fmt: str = "{:.2f}",
) -> None:
    plt = _pyplot()
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=(max(3.0, 0.45 * cols + 1.8), max(2.2, 0.35 * rows + 1.2)))
    image = ax.imshow(values.numpy(), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    if rows * cols <= 200:
        for r in range(rows):
            for c in range(cols):
                ax.text(c, r, fmt.format(values[r, c].item()), ha="center", va="center", fontsize=6)
    ax.set_xlabel("head")
    ax.set_ylabel("block")
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gates(report: dict, path: str) -> None:
    """Heatmap of sigmoid(lambda), GPSA blocks x heads."""
    gate = torch.tensor(report["gates"]).reshape(-1, report["num_heads"])
    _heatmap(gate, path, "gate $\\sigma(\\lambda)$: 1 = positional, 0 = content", "gate", "RdBu_r", 0.0, 1.0)


def plot_ablation(drop: torch.Tensor, base: float, path: str) -> None:
    """Heatmap of the top-1 drop (points) when each head is zeroed, blocks x heads."""
    points = drop * 100
    bound = max(points.abs().max().item(), 1e-6)
    _heatmap(
        points,
        path,
        f"top-1 drop when a head is zeroed\n(points; top-1 {100 * base:.1f}%)",
        "points",
        "RdBu_r",
        -bound,
        bound,
        fmt="{:.1f}",
    )


def plot_attention_maps(
    maps: Sequence[torch.Tensor],
    grid_size: tuple[int, int],
    query: tuple[int, int],
    path: str,
    gate_per_block: Sequence[Sequence[float] | None] | None = None,
) -> None:
    """Every head's attention for one query patch (rows: blocks, columns: heads), the paper's figure."""
    plt = _pyplot()
    rows, cols = grid_size
    index = query[0] * cols + query[1]
    blocks, heads = len(maps), maps[0].shape[0]
    fig, axes = plt.subplots(blocks, heads, figsize=(1.1 * heads + 0.6, 1.1 * blocks + 0.4), squeeze=False)
    for b in range(blocks):
        for h in range(heads):
            ax = axes[b, h]
            ax.imshow(maps[b][h, index].reshape(rows, cols).numpy(), cmap="viridis")
            ax.scatter([query[1]], [query[0]], marker="x", s=10, color="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            gate = gate_per_block[b] if gate_per_block is not None else None
            if gate is not None:
                ax.set_title(f"g={gate[h]:.2f}", fontsize=6, pad=1)
            if h == 0:
                ax.set_ylabel(f"block {b}", fontsize=7)
    fig.suptitle(f"attention of query patch (row {query[0]}, col {query[1]})", fontsize=8)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.35 / (1.1 * blocks + 0.4)))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _read_log(log_path: str) -> tuple[list[float], list[dict]]:
    epochs, records = [], []
    with open(log_path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{log_path}:{number} is not a JSON line ({error.msg})") from None
            if isinstance(record, dict) and isinstance(record.get("locality"), dict):
                epochs.append(record.get("epoch", len(epochs)))
                records.append(record["locality"])
    if not records:
        raise ValueError(
            f"{log_path} has no records with a 'locality' entry (log it with convit.locality.epoch_locality)"
        )
    return epochs, records


def _plot_over_epochs(
    epochs: list[float], values: torch.Tensor, path: str, ylabel: str, ylim: tuple[float, float] | None = None
) -> None:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    _, blocks, heads = values.shape
    ncols = min(blocks, 4)
    nrows = math.ceil(blocks / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.0 * nrows), squeeze=False, sharex=True)
    for b in range(nrows * ncols):
        ax = axes[b // ncols, b % ncols]
        if b >= blocks:
            ax.axis("off")
            continue
        for h in range(heads):
            ax.plot(
                epochs, values[:, b, h].numpy(), lw=1, color=plt.cm.viridis(h / max(heads - 1, 1)), label=f"head {h}"
            )
        ax.set_title(f"block {b}", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.tick_params(labelsize=7)
        if b % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
        if b // ncols == nrows - 1:
            ax.set_xlabel("epoch", fontsize=8)
    if heads <= 9:
        axes[0, 0].legend(fontsize=5, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_log(log_path: str, out_dir: str) -> list[str]:
    """Plot the per-epoch ``locality`` entries of a training ``log.jsonl``: one subplot per block, one line per head.

    Writes ``nonlocality_over_epochs.png`` and ``gates_over_epochs.png`` in ``out_dir``; returns their paths.
    """
    epochs, records = _read_log(log_path)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    distance = torch.tensor([record["nonlocality"] for record in records], dtype=torch.float32)
    paths.append(os.path.join(out_dir, "nonlocality_over_epochs.png"))
    _plot_over_epochs(epochs, distance, paths[-1], "non-locality")
    gate = torch.tensor([record["gates"] for record in records], dtype=torch.float32)
    if gate.dim() == 3 and gate.shape[1] > 0:
        paths.append(os.path.join(out_dir, "gates_over_epochs.png"))
        _plot_over_epochs(epochs, gate, paths[-1], "gate", (0.0, 1.0))
    return paths


# ---------------------------------------------------------------------------------------------- inputs


def load_model(name: str | None = None, checkpoint: str | None = None) -> ConViT:
    """A ConViT by timm name, with weights from ``checkpoint`` if given.

    Checkpoints are read by ``convit.checkpoint.model_from_checkpoint``: ours (which name the model, so
    ``name`` may be None), timm's state dicts and safetensors, and the original authors' files.
    """
    if checkpoint is not None:
        model = model_from_checkpoint(checkpoint, name)[0]
    elif not name:
        raise ValueError("no model name: pass --model (or a --checkpoint written by train.py)")
    else:
        model = create_model(name, num_classes=1000)
    if not isinstance(model, ConViT):
        raise ValueError(f"{name} is a {type(model).__name__}, not a ConViT")
    return model


def _input_size(model: ConViT) -> tuple[int, int]:
    # The patch embedding's size is the one the model was built (and trained) at; pretrained_cfg can be
    # stale when img_size was overridden at creation.
    return tuple(int(s) for s in model.patch_embed.img_size)


def _digits_batch(model: ConViT, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_images`` digits of the fixed validation split, as train.py feeds them, and labels."""
    _, (images, labels) = digits_split()
    if not 0 < num_images <= len(labels):
        raise ValueError(f"--num-images must be between 1 and {len(labels)} for the digits validation split")
    if _input_size(model)[0] != _input_size(model)[1]:
        raise ValueError(f"the digits are square; this model takes {_input_size(model)} images")
    dataset = DigitsDataset(
        images[:num_images], labels[:num_images], _input_size(model)[0], model.in_chans, train=False
    )
    return dataset.images, torch.tensor(dataset.targets)


def _folder_batch(model: ConViT, path: str, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_images`` evenly spaced images of an ImageFolder, with timm's eval transform for the model."""
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    if not os.path.isdir(path):
        raise ValueError(f"data folder {path} does not exist")
    config = resolve_data_config({"input_size": (model.in_chans, *_input_size(model))}, model=model)
    try:
        dataset = ImageFolder(path, transform=create_transform(**config))
    except (FileNotFoundError, OSError) as error:
        raise ValueError(f"{path} is not an image folder (class sub-folders of images): {error}") from None
    count = min(num_images, len(dataset))
    indices = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
    samples = [dataset[i] for i in indices]
    return torch.stack([image for image, _ in samples]), torch.tensor([label for _, label in samples])


def _parse_query(text: str | None, grid_size: tuple[int, int]) -> tuple[int, int]:
    if text is None:
        return grid_size[0] // 2, grid_size[1] // 2
    try:
        row, col = (int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--query must be ROW,COL (two integers), got {text!r}") from None
    if not (0 <= row < grid_size[0] and 0 <= col < grid_size[1]):
        raise ValueError(f"--query {row},{col} is outside the {grid_size[0]}x{grid_size[1]} patch grid")
    return row, col


# ---------------------------------------------------------------------------------------------- command


def _write_csv(report: dict, path: str, drop: torch.Tensor | None = None) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["block", "type", "head", "nonlocality", "gate"] + (["ablation_drop"] if drop is not None else [])
        )
        for block in report["blocks"]:
            for h, distance in enumerate(block["nonlocality"]):
                gate = "" if block["gate"] is None else f"{block['gate'][h]:.6f}"
                row = [block["block"], block["type"], h, f"{distance:.6f}", gate]
                writer.writerow(row + ([f"{drop[block['block'], h].item():.6f}"] if drop is not None else []))


def run(args: argparse.Namespace) -> dict:
    """Everything the command does; returns the report it writes to ``locality.json``."""
    os.makedirs(args.out, exist_ok=True)
    if args.log:
        return {"plots": plot_log(args.log, args.out)}
    model = load_model(args.model, args.checkpoint)
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    if args.data_path:
        images, labels = _folder_batch(model, args.data_path, args.num_images)
    else:
        images, labels = _digits_batch(model, args.num_images)
    # checked before the long part; the grid is the one the model's patch embedding will make
    query = _parse_query(args.query, (images.shape[-2] // model.patch_size[0], images.shape[-1] // model.patch_size[1]))
    maps, grid_size = _attention_maps(model, images, args.batch_size, progress=True)
    report = _report(model, maps, grid_size, images.shape[0])
    name = getattr(model, "pretrained_cfg", {}).get("architecture", args.model)
    report.update(model=name, checkpoint=args.checkpoint, data=args.data_path or "digits", query=list(query))
    drop = None
    if args.ablate:
        base, drop = head_ablation(model, images, labels, args.batch_size, progress=True)
        report["ablation"] = {"top1": base, "drop": drop.tolist()}
        plot_ablation(drop, base, os.path.join(args.out, "ablation.png"))
    with open(os.path.join(args.out, "locality.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    _write_csv(report, os.path.join(args.out, "locality.csv"), drop)
    plot_nonlocality(report, os.path.join(args.out, "nonlocality.png"))
    plot_gates(report, os.path.join(args.out, "gates.png"))
    plot_attention_maps(
        maps,
        grid_size,
        query,
        os.path.join(args.out, "attention_maps.png"),
        [block["gate"] for block in report["blocks"]],
    )
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m convit.locality", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="timm model name, e.g. convit_tiny (optional if the checkpoint names it)")
    parser.add_argument("--checkpoint", help="state dict, official checkpoint or training checkpoint")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data-path", help="ImageFolder directory (class sub-folders of images)")
    data.add_argument("--data", choices=["digits"], default="digits", help="built-in data set (default: digits)")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--query", help="ROW,COL of the query patch for attention_maps.png (default: centre)")
    parser.add_argument("--ablate", action="store_true", help="also measure the top-1 drop when each head is zeroed")
    parser.add_argument("--log", help="training log.jsonl: plot non-locality and gates over epochs instead")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--out", required=True, help="output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if not args.log and not args.model and not args.checkpoint:
        raise SystemExit("python -m convit.locality: error: pass --model NAME (or --checkpoint, or --log)")
    if args.num_images < 1:
        raise SystemExit("python -m convit.locality: error: --num-images must be at least 1")
    start = time.perf_counter()
    try:
        result = run(args)
    except (ValueError, FileNotFoundError, CheckpointError, DataError) as error:
        raise SystemExit(f"python -m convit.locality: error: {error}") from None
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f}s")
    return result


if __name__ == "__main__":
    main()
