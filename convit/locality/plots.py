"""Plots of the locality measures (PNG): non-locality per block (one model or several side by side), gates,
the GPSA heads' centres and parts, attention maps, overlays on images with rollout, ablation, over epochs."""

import math
from collections.abc import Sequence

import torch

# ---------------------------------------------------------------------------------------------- plots


def pyplot():
    """matplotlib.pyplot on the file-writing Agg backend (no display needed), imported when first drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_nonlocality(report: dict, path: str) -> None:
    """Non-locality per block, one dot per head; the GPSA blocks shaded."""
    plt = pyplot()
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
    plt = pyplot()
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
    query: tuple[int, int] | Sequence[tuple[int, int]],
    path: str,
    gate_per_block: Sequence[Sequence[float] | None] | None = None,
) -> None:
    """Every head's attention for query patches (rows: query and block, columns: heads), the paper's figure."""
    plt = pyplot()
    queries = [tuple(query)] if isinstance(query[0], int) else [tuple(q) for q in query]
    rows, cols = grid_size
    blocks, heads = len(maps), maps[0].shape[0]
    lines = blocks * len(queries)
    fig, axes = plt.subplots(lines, heads, figsize=(1.1 * heads + 0.6, 1.1 * lines + 0.4), squeeze=False)
    for q, (row, col) in enumerate(queries):
        index = row * cols + col
        for b in range(blocks):
            for h in range(heads):
                ax = axes[q * blocks + b, h]
                ax.imshow(maps[b][h, index].reshape(rows, cols).numpy(), cmap="viridis")
                ax.scatter([col], [row], marker="x", s=10, color="red", linewidths=0.8)
                ax.set_xticks([])
                ax.set_yticks([])
                gate = gate_per_block[b] if gate_per_block is not None else None
                if gate is not None:
                    ax.set_title(f"g={gate[h]:.2f}", fontsize=6, pad=1)
                if h == 0:
                    ax.set_ylabel(f"block {b}" + (f"\nq {row},{col}" if len(queries) > 1 else ""), fontsize=7)
    where = ", ".join(f"(row {r}, col {c})" for r, c in queries)
    fig.suptitle(f"attention of query patch {where}", fontsize=8)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.35 / (1.1 * lines + 0.4)))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_nonlocality_parts(report: dict, path: str) -> None:
    """Per GPSA block and head: non-locality of the content part, the positional part and the gated mix."""
    plt = pyplot()
    gpsa = [block for block in report["blocks"] if block["type"] == "GPSA"]
    heads = report["num_heads"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(gpsa) + 2), 3.2))
    styles = (
        ("nonlocality_content", "content", "o", "tab:orange"),
        ("nonlocality_positional", "positional", "^", "tab:blue"),
    )
    for offset, (key, label, marker, color) in zip((-0.2, 0.0), styles, strict=True):
        for i, block in enumerate(gpsa):
            ax.scatter(
                [i + offset] * heads, block[key], marker=marker, s=16, color=color, label=label if i == 0 else None
            )
    for i, block in enumerate(gpsa):
        ax.scatter(
            [i + 0.2] * heads, block["nonlocality"], marker="x", s=16, color="k", label="gated mix" if i == 0 else None
        )
    ax.set_xticks(range(len(gpsa)))
    ax.set_xticklabels([str(block["block"]) for block in gpsa])
    ax.set_xlabel("GPSA block")
    ax.set_ylabel("non-locality (patches)")
    ax.set_ylim(bottom=0)
    ax.set_title("GPSA heads: content vs positional attention (one mark per head)", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_centres(report: dict, path: str) -> None:
    """Centres (dx, dy) of each GPSA head's positional attention, one panel per block; marker area ~ sharpness."""
    plt = pyplot()
    gpsa = [block for block in report["blocks"] if block["type"] == "GPSA"]
    ncols = min(len(gpsa), 4)
    nrows = math.ceil(len(gpsa) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols, 2.4 * nrows + 0.3), squeeze=False)
    sharp_max = max([abs(s) for block in gpsa for s in block["sharpness"]] + [1e-6])
    limit = max(
        [1.5] + [abs(v) + 0.5 for block in gpsa for c in block["centre"] if c is not None for v in c if v is not None]
    )
    limit = min(limit, max(report["grid_size"]))
    for i in range(nrows * ncols):
        ax = axes[i // ncols, i % ncols]
        if i >= len(gpsa):
            ax.axis("off")
            continue
        block = gpsa[i]
        for h, (centre, sharp) in enumerate(zip(block["centre"], block["sharpness"], strict=True)):
            if centre is None or centre[0] is None:
                continue
            color = plt.cm.viridis(h / max(report["num_heads"] - 1, 1))
            ax.scatter([centre[0]], [centre[1]], s=10 + 120 * max(sharp, 0) / sharp_max, color=color, alpha=0.8)
            ax.annotate(str(h), (centre[0], centre[1]), fontsize=6, ha="center", va="center")
        ax.axhline(0, color="0.8", lw=0.5)
        ax.axvline(0, color="0.8", lw=0.5)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(limit, -limit)  # rows grow downwards, as on the image
        ax.set_aspect("equal")
        ax.set_title(f"block {block['block']}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("dx (columns)", fontsize=7)
        ax.set_ylabel("dy (rows)", fontsize=7)
    fig.suptitle("positional attention centres -(w0, w1)/(2 w2); area ~ sharpness -w2", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_compare(reports: Sequence[dict], labels: Sequence[str], path: str, note: str | None = None) -> None:
    """Non-locality per layer of several models side by side (one colour each: a dot per head, a line for
    the mean), as the paper's figure of DeiT against ConViT; ``note`` goes under the title."""
    plt = pyplot()
    depth = max(len(report["nonlocality"]) for report in reports)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.5 * depth + 2.5), 3.4))
    count = len(reports)
    for m, (report, label) in enumerate(zip(reports, labels, strict=True)):
        distance = torch.tensor(report["nonlocality"])
        blocks, heads = distance.shape
        offset = (m - (count - 1) / 2) * min(0.25, 0.8 / count)
        color = plt.cm.tab10(m % 10)
        x = torch.arange(blocks) + offset
        for h in range(heads):
            ax.scatter(x, distance[:, h], s=10, color=color, alpha=0.6)
        ax.plot(
            x,
            distance.mean(dim=1),
            color=color,
            lw=1.2,
            label=f"{label} ({report['grid_size'][0]}x{report['grid_size'][1]})",
        )
        if report["local_up_to_layer"]:
            ax.axvline(report["local_up_to_layer"] - 0.5, color=color, ls=":", lw=0.8)
    ax.set_xlabel("layer (block)")
    ax.set_ylabel("non-locality (patches)")
    ax.set_xticks(range(depth))
    ax.set_xlim(-0.5, depth - 0.5)
    ax.set_ylim(bottom=0)
    title = "non-locality per layer (dots: heads, line: mean; dotted: last GPSA block)"
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=8)
    ax.legend(fontsize=7, frameon=False, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _displayable(image: torch.Tensor):
    """An image tensor C x H x W (normalised any way) as an H x W or H x W x 3 array in [0, 1]."""
    image = image.detach().float().cpu()
    image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-8)
    return image[0].numpy() if image.shape[0] == 1 else image[:3].permute(1, 2, 0).numpy()


def plot_overlays(
    image: torch.Tensor,
    maps: Sequence[torch.Tensor],
    rollout: Sequence[torch.Tensor],
    grid_size: tuple[int, int],
    queries: Sequence[tuple[int, int]],
    path: str,
    title: str = "",
) -> None:
    """One image's attention overlaid on it: rows are (query, block), columns every head then the rollout
    through the blocks up to that one; ``maps`` are this image's heads x N x N per block."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    rows, cols = grid_size
    picture = _displayable(image)
    height, width = picture.shape[:2]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    patch_h, patch_w = height / rows, width / cols
    blocks, heads = len(maps), maps[0].shape[0]
    lines = blocks * len(queries)
    fig, axes = plt.subplots(lines, heads + 1, figsize=(1.2 * (heads + 1) + 0.6, 1.2 * lines + 0.5), squeeze=False)
    for q, (row, col) in enumerate(queries):
        index = row * cols + col
        for b in range(blocks):
            panels = [maps[b][h, index] for h in range(heads)] + [rollout[b][index]]
            for c, values in enumerate(panels):
                ax = axes[q * blocks + b, c]
                ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, extent=extent)
                ax.imshow(
                    values.reshape(rows, cols).numpy(),
                    cmap="inferno",
                    alpha=0.6,
                    extent=extent,
                    interpolation="nearest",
                )
                ax.add_patch(
                    Rectangle(
                        (col * patch_w - 0.5, row * patch_h - 0.5), patch_w, patch_h, fill=False, ec="cyan", lw=0.8
                    )
                )
                ax.set_xticks([])
                ax.set_yticks([])
                if q == 0 and b == 0:
                    ax.set_title("rollout" if c == heads else f"head {c}", fontsize=7)
                if c == 0:
                    ax.set_ylabel(f"block {b}" + (f"\nq {row},{col}" if len(queries) > 1 else ""), fontsize=7)
    fig.suptitle(title or "attention of the boxed query patch", fontsize=8)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.4 / (1.2 * lines + 0.5)))
    fig.savefig(path, dpi=90)
    plt.close(fig)
