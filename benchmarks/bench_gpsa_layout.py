"""One GPSA layer, two forms of the positional term side by side: the fast path (V in the grid layout, a
custom autograd function) and the einsum form on timm's B x N x H x d layout (plain autograd).

Prints, per shape, einsum time / fast-path time (median of interleaved repeats), forward and training step.

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
from convit.attention import GPSA, _mix_einsum  # noqa: E402

SHAPES = (("ConViT-Ti 224", 16, 14, 192, 4), ("ConViT-S 224", 16, 14, 384, 6), ("ConViT-Ti 384", 16, 24, 192, 4))


def einsum_form(layer: GPSA, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    B, N, C = x.shape
    H = layer.num_heads
    weight = torch.cat((layer.qk.weight, layer.v.weight))
    q, k, v = F.linear(x, weight).view(B, N, 3, H, C // H).unbind(2)
    content = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    gate = layer.gate()
    p_rows, p_cols = layer._separable_positional(grid)
    out = _mix_einsum(v.view(B, *grid, H, C // H), content, p_rows, p_cols * gate.view(H, 1, 1), 1 - gate)
    return layer.proj(out.reshape(B, N, C))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name, batch, side, width, heads in SHAPES:
        layer = GPSA(width, heads)
        layer.local_init()
        x = torch.randn(batch, side * side, width, requires_grad=True)
        grid = (side, side)
        forms = {
            "fast": lambda x, layer=layer, grid=grid: layer(x, grid),
            "einsum": lambda x, layer=layer, grid=grid: einsum_form(layer, x, grid),
        }
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
            ratio = statistics.median(times["einsum"][2:]) / statistics.median(times["fast"][2:])
            print(f"{name}, batch {batch}, {mode}: einsum time / fast time = {ratio:.2f}", flush=True)


if __name__ == "__main__":
    main()
