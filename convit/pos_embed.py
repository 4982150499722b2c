"""Input size and position embedding: the one-line check of an image's size, and the position embedding
resampled to another patch grid (bicubic with antialiasing, also in the plain-op form exporters record)."""

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

from .attention import is_exporting


@register_notrace_function  # FX cannot trace the Python checks on the image size
def check_image(
    x: torch.Tensor,
    in_chans: int,
    patch_size: tuple[int, int],
    img_size: tuple[int, int],
    dynamic_img_size: bool,
) -> torch.Tensor:
    """Return ``x`` unchanged, or raise a one-line ValueError saying what is wrong with its shape."""
    if x.dim() != 4:
        raise ValueError(f"ConViT expects images shaped (batch, {in_chans}, height, width), got shape {list(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"ConViT expects {in_chans} image channels (in_chans={in_chans}), got {x.shape[1]}: "
            f"convert the images or build the model with in_chans={x.shape[1]}"
        )
    if x.shape[2] % patch_size[0] != 0 or x.shape[3] % patch_size[1] != 0:
        raise ValueError(
            f"image size {x.shape[2]}x{x.shape[3]} is not divisible by the patch size "
            f"{patch_size[0]}x{patch_size[1]}: resize or crop to a multiple of it, e.g. "
            f"{x.shape[2] // patch_size[0] * patch_size[0]}x{x.shape[3] // patch_size[1] * patch_size[1]}"
        )
    if not dynamic_img_size and (x.shape[2] != img_size[0] or x.shape[3] != img_size[1]):
        raise ValueError(
            f"image size {x.shape[2]}x{x.shape[3]} differs from the model's {img_size[0]}x{img_size[1]}: "
            f"build the model with img_size=({x.shape[2]}, {x.shape[3]}), or with dynamic_img_size=True "
            "to accept any size (the position embedding is then resampled)"
        )
    return x


@register_notrace_function  # the size comparison is Python control flow
def resample_pos_embed(
    pos_embed: torch.Tensor, grid_size: tuple[int, int], trained_grid: tuple[int, int]
) -> torch.Tensor:
    """Position embedding (1 x N x C) of a ``trained_grid`` patch grid, resampled bicubically to ``grid_size``.

    ``F.interpolate(mode="bicubic", antialias=True)`` when run; under ``is_exporting()`` the same resampling as
    two matmuls with its interpolation weights (every exporter supports them, none the antialiased op), always
    (sizes are symbolic there; at the same size the weights are the identity). Written here rather than taken
    from timm's ``resample_abs_pos_embed``, which is not TorchScript-compatible.
    """
    if is_exporting() and not torch.jit.is_scripting():
        return _resample_plain(pos_embed, grid_size, trained_grid)
    if grid_size[0] == trained_grid[0] and grid_size[1] == trained_grid[1]:
        return pos_embed
    if torch.jit.is_scripting():
        return _resample_plain(pos_embed, grid_size, trained_grid)
    width = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, trained_grid[0], trained_grid[1], width).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=grid_size, mode="bicubic", align_corners=False, antialias=True)
    return grid.permute(0, 2, 3, 1).reshape(1, grid_size[0] * grid_size[1], width).to(pos_embed.dtype)


def antialias_bicubic_weights(out_size: int, in_size: int, device: torch.device) -> torch.Tensor:
    """The (out_size x in_size) matrix that ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)``
    applies along one axis: Keys' cubic with a = -0.5, widened by the scale when shrinking, rows normalised."""
    i = torch.arange(out_size, dtype=torch.float32, device=device)
    j = torch.arange(in_size, dtype=torch.float32, device=device)
    scale = torch.full_like(i, float(in_size)) / out_size
    stretch = scale.clamp(min=1.0)
    center = scale * (i + 0.5)
    low = torch.floor(center - 2.0 * stretch + 0.5).clamp(min=0.0)
    high = torch.floor(center + 2.0 * stretch + 0.5)
    x = ((j[None, :] - center[:, None] + 0.5) / stretch[:, None]).abs()
    near = (1.5 * x - 2.5) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    w = torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))
    w = w * ((j[None, :] >= low[:, None]) & (j[None, :] < high[:, None])).to(w.dtype)
    return w / w.sum(dim=-1, keepdim=True)


def _resample_plain(pos_embed: torch.Tensor, grid_size: tuple[int, int], trained_grid: tuple[int, int]) -> torch.Tensor:
    rows, cols = trained_grid
    width = pos_embed.shape[-1]
    weight_rows = antialias_bicubic_weights(grid_size[0], rows, pos_embed.device)
    weight_cols = antialias_bicubic_weights(grid_size[1], cols, pos_embed.device)
    grid = pos_embed.float().reshape(rows, cols * width)
    grid = torch.matmul(weight_rows, grid).reshape(grid_size[0], cols, width).transpose(0, 1)
    grid = torch.matmul(weight_cols, grid.reshape(cols, grid_size[0] * width))
    grid = grid.reshape(grid_size[1], grid_size[0], width).transpose(0, 1)
    return grid.reshape(1, grid_size[0] * grid_size[1], width).to(pos_embed.dtype)


# The six variants, as timm's ConVit entry points build them: name: (num_heads, width per head)
