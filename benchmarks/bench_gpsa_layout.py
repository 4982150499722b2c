"""One GPSA layer, three forms of the positional term side by side: the fast path (column factor per head
straight on V's strides, a custom autograd function), the einsum form on timm's B x N x H x d layout, and
the grid form (V copied to B x H x rows x d x cols, each factor one batched GEMM); the last two use plain
autograd.

Prints, per shape, each form's time / fast-path time (median of interleaved repeats), forward and training step,
and beside them a timm ViT attention layer of the same width on the same patches plus a class token: its time /
fast-path time is the speed ratio ours/ViT of the attention alone (the MLP, norms and embedding are shared).

    python benchmarks/bench_gpsa_layout.py --threads 1
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from timm.models.vision_transformer import Attention  # noqa: E402

from convit.attention import GPSA, mix_positional_einsum  # noqa: E402

SHAPES = (
    ("ConViT-Ti 224", 16, 14, 192, 4),
    ("ConViT-S 224", 16, 14, 384, 6),
    ("ConViT-Ti 384", 16, 24, 192, 4),
    ("ConViT-S 384", 8, 24, 384, 6),
)


def _terms(layer: GPSA, x: torch.Tensor, grid: tuple[int, int]):
    """What every form mixes: V (B x rows x cols x H x d), the SDPA content output, both factors (the gate
    folded into the column one) and 1 - gate."""
    B, N, C = x.shape
    H = layer.num_heads
    weight = torch.cat((layer.qk.weight, layer.v.weight))
    q, k, v = F.linear(x, weight).view(B, N, 3, H, C // H).unbind(2)
    content = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    gate = layer.gate()
    p_rows, p_cols = layer.separable_positional(grid)
    return v.view(B, *grid, H, C // H), content, p_rows, p_cols * gate.view(H, 1, 1), 1 - gate


def einsum_form(layer: GPSA, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return layer.proj(mix_positional_einsum(*_terms(layer, x, grid)).reshape(x.shape))


def grid_form(layer: GPSA, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    v, content, p_rows, p_cols, keep = _terms(layer, x, grid)
    B, rows, cols, H, d = v.shape
    v_grid = v.permute(0, 3, 1, 4, 2).contiguous()  # B x H x rows x d x cols
    t = torch.matmul(v_grid.view(B, H, rows * d, cols), p_cols.transpose(1, 2))
    pos = torch.matmul(p_rows, t.view(B, H, rows, d * cols)).view(B, H, rows, d, cols).permute(0, 2, 4, 1, 3)
    content = content.view(B, H, rows, cols, d).permute(0, 2, 3, 1, 4)
    return layer.proj(torch.addcmul(pos, content, keep.view(1, 1, 1, H, 1)).reshape(x.shape))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch CPU threads (default: %(default)s)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=15,
        metavar="N",
        help="timed repetitions per form; medians are printed (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name, batch, side, width, heads in SHAPES:
        layer = GPSA(width, heads)
        layer.local_init()
        x = torch.randn(batch, side * side, width, requires_grad=True)
        with_class_token = torch.randn(batch, side * side + 1, width, requires_grad=True)
        vit_attention = Attention(width, heads)
        grid = (side, side)
        forms = {
            "fast": lambda x, layer=layer, grid=grid: layer(x, grid),
            "einsum": lambda x, layer=layer, grid=grid: einsum_form(layer, x, grid),
            "grid": lambda x, layer=layer, grid=grid: grid_form(layer, x, grid),
            "vit": lambda x, attention=vit_attention, tokens=with_class_token: attention(tokens),
        }
        with torch.no_grad():
            for key in ("einsum", "grid"):
                torch.testing.assert_close(forms[key](x), forms["fast"](x), rtol=1e-4, atol=1e-5)
        for mode in ("forward", "training step"):
            times = {key: [] for key in forms}
            for _ in range(args.repeats):
                for key, form in forms.items():
                    start = time.perf_counter()
                    if mode == "forward":
                        with torch.inference_mode():
                            form(x)
                    else:
                        form(x).sum().backward()
                    times[key].append(time.perf_counter() - start)
            fast = statistics.median(times["fast"][2:])
            ratios = ", ".join(f"{key} {statistics.median(times[key][2:]) / fast:.2f}" for key in ("einsum", "grid"))
            vit = statistics.median(times["vit"][2:]) / fast
            print(
                f"{name}, batch {batch}, {mode}: time / fast-path time: {ratios}; ViT attention {vit:.2f}", flush=True
            )


if __name__ == "__main__":
    main()
