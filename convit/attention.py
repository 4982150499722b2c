"""Gated positional self-attention (GPSA) and multi-head self-attention (MHSA).

Parameter names follow ``timm.models.convit`` (``qk``, ``v``, ``proj``, ``pos_proj``, ``gating_param``,
``qkv``) so that timm's and the original authors' checkpoints load with ``strict=True``.

GPSA, for head h on a grid of patch tokens::

    out_h = (1 - sigmoid(gate_h)) * softmax(q_h k_h^T / sqrt(d)) v_h + sigmoid(gate_h) * softmax(r . w_h) v_h

with r_ij = (dx, dy, dx^2 + dy^2) the offset from query patch i to key patch j. The positional score
``w0 dx + w1 dy + w2 (dx^2 + dy^2) + b`` is a sum of a column term and a row term, so its softmax over
the key grid factorises exactly into a row softmax times a column softmax: the positional attention is
the Kronecker product ``P_rows (x) P_cols`` of two small matrices per head. The fast path applies it as
two small matmuls over every image at once and never forms an N x N matrix; the content term goes
through ``F.scaled_dot_product_attention``. The reference path computes the formula literally.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import nn


def relative_offsets(grid_size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Offsets ``(dx, dy, dx^2 + dy^2)`` from each query patch to each key patch, shape N x N x 3.

    Patches are numbered row by row; dx is the column offset, dy the row offset (key minus query),
    the same convention as timm's ``GPSA.get_rel_indices``.
    """
    rows, cols = grid_size
    row = torch.arange(rows, device=device).repeat_interleave(cols)
    col = torch.arange(cols, device=device).repeat(rows)
    dx = (col[None, :] - col[:, None]).float()
    dy = (row[None, :] - row[:, None]).float()
    return torch.stack((dx, dy, dx**2 + dy**2), dim=-1)


def _axis_offsets(length: int, device: torch.device) -> torch.Tensor:
    """Key-minus-query offsets along one grid axis, shape length x length."""
    index = torch.arange(length, device=device, dtype=torch.float32)
    return index[None, :] - index[:, None]


def _flush_tiny(probs: torch.Tensor) -> torch.Tensor:
    """Zero probabilities below 1e-30: far below rounding, and as denormal floats they slow some CPUs' matmuls."""
    return probs.masked_fill(probs < 1e-30, 0.0)


def check_tokens(x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Return ``x`` (B x N x C) unchanged, or raise when N is not the number of patches of ``grid_size``."""
    if grid_size[0] * grid_size[1] != x.shape[1]:
        raise ValueError(f"GPSA got {x.shape[1]} tokens for a {grid_size[0]}x{grid_size[1]} patch grid")
    return x


torch.fx.wrap("check_tokens")  # a leaf call for every torch.fx tracer: the check is Python control flow


@register_notrace_module  # shape checks and the fast/reference switch are Python control flow
class GPSA(nn.Module):
    """Gated positional self-attention over patch tokens laid out on a ``grid_size`` grid."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        locality_strength: float = 1.0,
        fused_attn: bool = True,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"GPSA width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dim = dim
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.locality_strength = locality_strength
        self.fused_attn = fused_attn

        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(3, num_heads)
        self.proj_drop = nn.Dropout(proj_drop)
        self.gating_param = nn.Parameter(torch.ones(num_heads))
        # called as observer(probs, content, positional) by the reference path: the analysis reads the
        # attention the layer applies without computing it twice
        self.attention_observer: Callable | None = None

    @torch.no_grad()
    def local_init(self) -> None:
        """Initialise as a convolution: V = identity, head h attends around its kernel offset.

        The heads form a sqrt(H) x sqrt(H) kernel; head ``h1 + k * h2`` peaks at offset
        (dx, dy) = (h2 - c, h1 - c) with sharpness ``locality_strength``. Heads beyond k*k keep their
        random init (only when ``num_heads`` is not a perfect square).
        """
        self.v.weight.copy_(torch.eye(self.dim))
        kernel = int(self.num_heads**0.5)
        center = (kernel - 1) / 2
        for h1 in range(kernel):
            for h2 in range(kernel):
                head = h1 + kernel * h2
                self.pos_proj.weight[head] = torch.tensor([2.0 * (h2 - center), 2.0 * (h1 - center), -1.0])
        self.pos_proj.weight.mul_(self.locality_strength)

    def kernel_offsets(self) -> torch.Tensor:
        """Offset (dx, dy) each head attends to most right after ``local_init``, shape H x 2."""
        kernel = int(self.num_heads**0.5)
        center = (kernel - 1) / 2
        heads = torch.arange(kernel * kernel)
        return torch.stack(((heads // kernel) - center, (heads % kernel) - center), dim=-1)

    def gate(self) -> torch.Tensor:
        """sigmoid(lambda) per head: the weight of the positional attention."""
        return torch.sigmoid(self.gating_param)

    def positional_attention(self, grid_size: tuple[int, int]) -> torch.Tensor:
        """The image-independent positional attention softmax(r . w_h), shape H x N x N."""
        rel = relative_offsets(grid_size, self.pos_proj.weight.device)
        score = F.linear(rel, self.pos_proj.weight.float(), self.pos_proj.bias.float())
        return score.permute(2, 0, 1).softmax(dim=-1)

    def separable_positional(self, grid_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column factors of the positional attention: H x rows x rows and H x cols x cols.

        score(dx, dy) = (w0 dx + w2 dx^2 + b) + (w1 dy + w2 dy^2). The bias cancels in the softmax; it is
        kept in the graph so that it gets its (zero) gradient, as DDP expects of every parameter.
        """
        rows, cols = grid_size
        weight, bias = self.pos_proj.weight.float(), self.pos_proj.bias.float()
        dx = _axis_offsets(cols, weight.device)
        dy = _axis_offsets(rows, weight.device)
        col_score = weight[:, 0, None, None] * dx + weight[:, 2, None, None] * dx**2 + bias[:, None, None]
        row_score = weight[:, 1, None, None] * dy + weight[:, 2, None, None] * dy**2
        return _flush_tiny(row_score.softmax(dim=-1)), _flush_tiny(col_score.softmax(dim=-1))

    def attention_parts(self, x: torch.Tensor, grid_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The two attentions before gating: content softmax(q k^T * scale), B x H x N x N, and the
        positional softmax(r . w_h), H x N x N (in the content's dtype)."""
        B, N, C = x.shape
        q, k = self.qk(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        content = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return content, self.positional_attention(grid_size).to(content.dtype)

    def gated(self, content: torch.Tensor, positional: torch.Tensor) -> torch.Tensor:
        """(1 - sigmoid(lambda)) content + sigmoid(lambda) positional per head, rows renormalised."""
        gate = self.gate().view(1, -1, 1, 1).to(content.dtype)
        attn = (1.0 - gate) * content
        if torch.is_grad_enabled():
            attn = attn + gate * positional
            return attn / attn.sum(dim=-1, keepdim=True)
        attn += gate * positional  # the same operations in place: no new B x H x N x N tensor
        return attn.div_(attn.sum(dim=-1, keepdim=True))

    def attention_probs(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """The full gated attention matrix for input ``x`` (B x N x C), shape B x H x N x N.

        This is what the layer applies to V (both paths); used by the reference path and by analysis.
        """
        return self.gated(*self.attention_parts(x, grid_size))

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        x = check_tokens(x, grid_size)
        if self.fused_attn and not (self.training and self.attn_drop.p > 0.0):
            x = self._forward_fast(x, grid_size)
        else:
            x = self._forward_reference(x, grid_size)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x

    def _forward_reference(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        content, positional = self.attention_parts(x, grid_size)
        attn = self.gated(content, positional)
        if self.attention_observer is not None:
            self.attention_observer(attn, content, positional)
        attn = self.attn_drop(attn)
        v = self.v(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        return (attn @ v).transpose(1, 2).reshape(B, N, C)

    def _forward_fast(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        rows, cols = grid_size
        H, d = self.num_heads, self.head_dim
        if torch.jit.is_scripting():  # a branch TorchScript resolves while compiling: it skips what follows
            return self._forward_plain(x, grid_size)
        if is_exporting():
            return self._forward_plain(x, grid_size)
        if _hooked(self.qk) or _hooked(self.v):
            # hooks (thop, activation capture) see their modules run
            qk = self.qk(x).view(B, N, 2, H, d)
            q, k, v = qk[:, :, 0], qk[:, :, 1], self.v(x).view(B, N, H, d)
        else:
            # one GEMM for q, k and v (timm's parameter layout keeps qk and v apart)
            weight = torch.cat((self.qk.weight, self.v.weight))
            bias = None
            if self.qk.bias is not None and self.v.bias is not None:
                bias = torch.cat((self.qk.bias, self.v.bias))
            q, k, v = F.linear(x, weight, bias).view(B, N, 3, H, d).unbind(2)  # each B x N x H x d
        content = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

        gate = self.gate()
        p_rows, p_cols = self.separable_positional(grid_size)
        p_cols = p_cols * gate.view(H, 1, 1)  # folds the gate into the positional term
        p_rows, p_cols, keep = p_rows.to(v.dtype), p_cols.to(v.dtype), (1.0 - gate).to(v.dtype)
        v = v.view(B, rows, cols, H, d)
        if torch.is_grad_enabled():
            return _PositionalMix.apply(v, content, p_rows, p_cols, keep).reshape(B, N, C)
        return mix_positional(v, content, p_rows, p_cols, keep).reshape(B, N, C)

    def _forward_plain(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """The fast path in plain functional ops, batch first (what ``is_exporting()`` callers record).

        Every module runs as a module, every product is a matmul with its full operands, so exporters need no
        custom op and FLOP counters see the arithmetic; no reshape depends on a size being 1 (a dynamic batch
        exports valid down to 1).
        """
        B, N, C = x.shape
        rows, cols = grid_size
        H, d = self.num_heads, self.head_dim
        q, k = self.qk(x).reshape(B, N, 2, H, d).permute(2, 0, 3, 1, 4).unbind(0)
        v = self.v(x).reshape(B, N, H, d).permute(0, 2, 1, 3)  # B x H x N x d
        content = attention_plain(q, k, v, self.scale)
        gate = self.gate()
        p_rows, p_cols = self.separable_positional(grid_size)
        p_cols = p_cols * gate.view(H, 1, 1)
        keep = (1.0 - gate).to(v.dtype).view(1, H, 1, 1)
        # (B, H, d, rows, cols): the column factor contracts the last axis, then the row factor
        grid = v.transpose(2, 3).reshape(B, H, d, rows, cols)
        pos = torch.matmul(grid, p_cols.to(v.dtype).transpose(1, 2).reshape(1, H, 1, cols, cols))
        pos = torch.matmul(pos.transpose(3, 4), p_rows.to(v.dtype).transpose(1, 2).reshape(1, H, 1, rows, rows))
        pos = pos.permute(0, 1, 4, 3, 2).reshape(B, H, N, d)  # B x H x (rows, cols) x d
        return (content * keep + pos).transpose(1, 2).reshape(B, N, C)


def attention_plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v on B x H x N x d, as SDPA computes it; under ``torch.jit.trace`` (the graph FLOP
    counters such as fvcore read, which have no rule for SDPA) as two matmuls and a softmax."""
    if torch.jit.is_tracing():
        return ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v)


def _hooked(module: nn.Module) -> bool:
    """True when forward hooks (the module's or global ones) wait for ``module`` to run."""
    hooks = torch.nn.modules.module
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or hooks._global_forward_hooks
        or hooks._global_forward_pre_hooks
    )


@torch.jit.unused
def _recording() -> bool:
    # is_fx_tracing() warns on every first call in torch >= 2.9; is_fx_symbolic_tracing() is its quiet twin
    fx = torch.fx._symbolic_trace
    fx_tracing = getattr(fx, "is_fx_symbolic_tracing", fx.is_fx_tracing)()
    return (
        torch.compiler.is_compiling()  # torch.compile, torch.export and the dynamo ONNX exporter
        or torch.onnx.is_in_onnx_export()
        or torch.jit.is_tracing()  # torch.jit.trace, the legacy ONNX exporter, fvcore
        or fx_tracing
    )


def is_exporting() -> bool:
    """True while a tool records the model instead of running it: torch.compile, torch.export, the ONNX exporters
    (legacy and dynamo), torch.fx symbolic tracing, ``torch.jit.trace`` and ``torch.jit.script``.

    They all get the plain-op form: no autograd.Function, no loop over heads, no ``out=`` argument, no Python
    test on a size (inductor fuses the functional form itself). Eager calls take the fast path.
    """
    if torch.jit.is_scripting():
        return True
    return _recording()


def mix_positional_einsum(
    v: torch.Tensor, content: torch.Tensor, p_rows: torch.Tensor, p_cols: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """The positional mix as two einsums on timm's layout: same result as ``mix_positional`` (the benchmarks compare them)."""
    B, rows, cols, H, d = v.shape
    pos = torch.einsum("hcj,brjhd->brchd", p_cols, v)
    pos = torch.einsum("hri,bichd->brchd", p_rows, pos)
    return torch.addcmul(pos, content.transpose(1, 2).reshape(B, rows, cols, H, d), keep.view(1, 1, 1, H, 1))


def _apply_cols(v: torch.Tensor, p_cols: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Column factor into ``out`` (H x B x rows x cols x d), straight from V's own strides (B x rows x cols x H x d,
    rows of the grid contiguous in memory as in the qkv output): per head, one batched GEMM
    ``p_cols[h] @ V[b, r, :, h, :]`` over every grid row of every image, so V is never copied."""
    B, rows, cols, H, d = v.shape
    per_row, flat_out = v.reshape(B * rows, cols, H, d), out.view(H, B * rows, cols, d)
    for h in range(H):
        torch.matmul(p_cols[h], per_row[:, :, h], out=flat_out[h])
    return out


def _apply_rows(t: torch.Tensor, p_rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Row factor on H x B x rows x cols x d: every (head, image) is one (rows x rows) @ (rows x cols*d) GEMM."""
    H, B, rows, cols, d = t.shape
    out = torch.empty_like(t) if out is None else out
    torch.matmul(p_rows[:, None], t.view(H, B, rows, cols * d), out=out.view(H, B, rows, cols * d))
    return out


def mix_positional(
    v: torch.Tensor, content: torch.Tensor, p_rows: torch.Tensor, p_cols: torch.Tensor, keep: torch.Tensor
):
    """``keep_h * content_h + (p_rows_h (x) p_cols_h) v_h``, returned as B x rows x cols x H x d (contiguous).

    Why this form: the column factor reads V where the qkv GEMM left it (one batched GEMM per head, no copy of
    V), its head-major output is exactly the (rows x cols*d) matrix the row factor multiplies, and the one
    pass that mixes in the content term writes token-major order into the column factor's buffer, free by
    then: two new B x N x C tensors per layer, where copying V into a grid layout first took four (each one
    memory traffic a ViT attention does not have). ``benchmarks/bench_gpsa_layout.py`` times this form beside
    the grid form and ``mix_positional_einsum`` (timm's layout); docs/performance.md holds the figures.
    """
    B, rows, cols, H, d = v.shape
    buffer = torch.empty((H, B, rows, cols, d), dtype=v.dtype, device=v.device)
    pos = _apply_rows(_apply_cols(v, p_cols, out=buffer), p_rows).permute(1, 2, 3, 0, 4)
    content = content.view(B, H, rows, cols, d).permute(0, 2, 3, 1, 4)
    return torch.addcmul(pos, content, keep.view(1, 1, 1, H, 1), out=buffer.view(B, rows, cols, H, d))


class _PositionalMix(torch.autograd.Function):
    """``mix_positional`` with a backward that saves only V and the content output (both already kept by SDPA's own
    backward, so no new activation) and the small factors; the column factor's output is recomputed (from a
    head-major copy of V made in the backward)."""

    @staticmethod
    def forward(ctx, v, content, p_rows, p_cols, keep):
        ctx.save_for_backward(v, content, p_rows, p_cols, keep)
        return mix_positional(v, content, p_rows, p_cols, keep)

    @staticmethod
    def backward(ctx, grad_out):
        v, content, p_rows, p_cols, keep = ctx.saved_tensors
        B, rows, cols, H, d = v.shape
        grad_v = grad_content = grad_rows = grad_cols = grad_keep = None
        # SDPA returns its B x H x N x d output in token-major memory, the order of grad_out: no permuted copies here
        if ctx.needs_input_grad[1]:
            grad_content = (grad_out * keep.view(1, 1, 1, H, 1)).permute(0, 3, 1, 2, 4).reshape(B, H, rows * cols, d)
        if ctx.needs_input_grad[4]:
            token_major = content.view(B, H, rows, cols, d).permute(0, 2, 3, 1, 4)
            grad_keep = (grad_out * token_major).sum(dim=(0, 1, 2, 4), dtype=torch.float32).to(keep.dtype)
        if any(ctx.needs_input_grad[i] for i in (0, 2, 3)):
            # three token-sized buffers, each reused once its contents are spent
            grad_pos = grad_out.permute(3, 0, 1, 2, 4).contiguous()  # H x B x rows x cols x d
            # a head-major copy of V (a buffer of its own: the permuted view can be V itself): the column factor
            # and its gradient then run as one batched GEMM over contiguous (cols x d) blocks instead of one
            # strided GEMM per head (benchmarks/bench_gpsa_layout.py times the layer)
            v_heads = torch.empty((H, B * rows, cols, d), dtype=v.dtype, device=v.device)
            if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
                v_heads.copy_(v.permute(3, 0, 1, 2, 4).reshape(H, B * rows, cols, d))
            if ctx.needs_input_grad[2]:  # through pos = p_rows @ t, t recomputed
                buffer = torch.matmul(p_cols[:, None], v_heads)
                flat = (H, B, rows, cols * d)
                grad_rows = torch.matmul(grad_pos.view(flat), buffer.view(flat).transpose(-1, -2)).sum(
                    1, dtype=torch.float32
                )
                grad_rows = grad_rows.to(p_rows.dtype)
            else:
                buffer = torch.empty_like(grad_pos)
            grad_t = _apply_rows(grad_pos, p_rows.transpose(1, 2), out=buffer.view(grad_pos.shape))
            flat_grad_t = grad_t.view(H, B * rows, cols, d)
            if ctx.needs_input_grad[3]:  # through t[h, b, r] = p_cols[h] @ v[b, r, :, h]
                blocks = (H * B * rows, cols, d)
                grad_cols = torch.bmm(flat_grad_t.view(blocks), v_heads.view(blocks).transpose(1, 2))
                grad_cols = grad_cols.view(H, B * rows, cols, cols).sum(1, dtype=torch.float32).to(p_cols.dtype)
            if ctx.needs_input_grad[0]:  # into the spent copy of V; a view in V's shape
                grad_v = torch.matmul(p_cols.transpose(1, 2)[:, None], flat_grad_t, out=v_heads)
                grad_v = grad_v.view(H, B, rows, cols, d).permute(1, 2, 3, 0, 4)
        return grad_v, grad_content, grad_rows, grad_cols, grad_keep


@register_notrace_module
class MHSA(nn.Module):
    """Multi-head self-attention (the blocks after the class token joins)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused_attn: bool = True,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"MHSA width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.attention_observer: Callable | None = None  # called as observer(probs, None, None), as GPSA's

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def attention_probs(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) for input ``x`` (B x N x C), shape B x H x N x N."""
        q, k, _ = self._qkv(x)
        return ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x)
        if self.fused_attn and not (self.training and self.attn_drop.p > 0.0) and is_exporting():
            x = attention_plain(q, k, v, self.scale)
        elif self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            if self.attention_observer is not None:
                self.attention_observer(attn, None, None)
            x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x
