import pytest
import torch
from timm.models.convit import GPSA as TimmGPSA

from convit.attention import GPSA, MHSA, relative_offsets


def perturbed_gpsa(dim=48, heads=4, locality_strength=1.0, **kwargs) -> GPSA:
    layer = GPSA(dim, heads, locality_strength=locality_strength, **kwargs)
    layer.local_init()
    with torch.no_grad():
        layer.gating_param.copy_(torch.randn(heads) * 2)
        layer.pos_proj.weight.add_(torch.randn_like(layer.pos_proj.weight) * 0.3)
        layer.pos_proj.bias.copy_(torch.randn(heads))
        layer.v.weight.add_(torch.randn_like(layer.v.weight) * 0.1)
    return layer


def forward_and_grads(layer, x, grid):
    x = x.clone().requires_grad_(True)
    out = layer(x, grid)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.requires_grad}
    layer.zero_grad()
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (7, 2)])
@pytest.mark.parametrize("heads,strength", [(4, 1.0), (9, 2.5), (6, 0.3)])
def test_fast_path_equals_reference_path(grid, heads, strength):
    fast = perturbed_gpsa(heads * 8, heads, strength)
    ref = GPSA(heads * 8, heads, locality_strength=strength, fused_attn=False)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(3, grid[0] * grid[1], heads * 8)
    out_f, gx_f, g_f = forward_and_grads(fast, x, grid)
    out_r, gx_r, g_r = forward_and_grads(ref, x, grid)
    torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_f, gx_r, rtol=1e-5, atol=1e-5)
    for name in g_r:
        torch.testing.assert_close(g_f[name], g_r[name], rtol=1e-4, atol=1e-5, msg=name)


def test_fast_path_equals_reference_path_bf16():
    fast = perturbed_gpsa(64, 4).to(torch.bfloat16)
    ref = GPSA(64, 4, fused_attn=False).to(torch.bfloat16)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 36, 64, dtype=torch.bfloat16)
    out_f, gx_f, g_f = forward_and_grads(fast, x, (6, 6))
    out_r, gx_r, g_r = forward_and_grads(ref, x, (6, 6))
    torch.testing.assert_close(out_f, out_r, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(gx_f, gx_r, rtol=5e-2, atol=5e-2)
    for name in g_r:
        scale = g_r[name].float().abs().max().clamp_min(1e-3)
        assert (g_f[name].float() - g_r[name].float()).abs().max() / scale < 5e-2, name


@pytest.mark.parametrize("side", [3, 5])
def test_reference_path_equals_timm_gpsa(side):
    ours = perturbed_gpsa(36, 9, 1.5, fused_attn=False)
    theirs = TimmGPSA(36, 9, locality_strength=1.5)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, side * side, 36)
    torch.testing.assert_close(ours(x, (side, side)), theirs(x), rtol=1e-5, atol=1e-6)


def test_local_init_matches_timm():
    ours, theirs = GPSA(64, 16, locality_strength=2.0), TimmGPSA(64, 16, locality_strength=2.0)
    ours.local_init()
    theirs.local_init()
    torch.testing.assert_close(ours.pos_proj.weight, theirs.pos_proj.weight)
    torch.testing.assert_close(ours.v.weight, theirs.v.weight)


@pytest.mark.parametrize("heads", [4, 9, 16])
def test_local_init_peaks_at_each_heads_kernel_offset(heads):
    layer = GPSA(heads * 4, heads, locality_strength=1.0)
    layer.local_init()
    grid = (9, 9)
    attn = layer.positional_attention(grid)  # H x N x N
    query = 4 * 9 + 4  # centre patch, far from the borders
    for head, (dx, dy) in enumerate(layer.kernel_offsets().tolist()):
        peak = attn[head, query].argmax().item()
        row, col = divmod(peak, 9)
        if float(dx).is_integer() and float(dy).is_integer():
            assert (col - 4, row - 4) == (dx, dy)
        else:  # even kernels sit between patches: the peak is one of the nearest ones
            assert abs(col - 4 - dx) == 0.5 and abs(row - 4 - dy) == 0.5


def test_relative_offsets_match_timm_convention():
    theirs = TimmGPSA(8, 4).get_rel_indices(16)[0]
    torch.testing.assert_close(relative_offsets((4, 4), torch.device("cpu")), theirs)


def test_positional_factors_have_no_denormals():
    layer = GPSA(64, 16, locality_strength=8.0)
    layer.local_init()
    p_rows, p_cols = layer.separable_positional((24, 24))
    tiny = torch.finfo(torch.float32).tiny
    for p in (p_rows, p_cols):
        assert not ((p != 0) & (p.abs() < tiny)).any()
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))


def test_separable_factors_rebuild_the_positional_attention():
    layer = perturbed_gpsa(36, 9)
    p_rows, p_cols = layer.separable_positional((3, 5))
    kron = torch.stack([torch.kron(r, c) for r, c in zip(p_rows, p_cols)])
    torch.testing.assert_close(kron, layer.positional_attention((3, 5)), rtol=1e-5, atol=1e-7)


def test_attention_dropout_uses_reference_path_in_training_only():
    layer = perturbed_gpsa(32, 4, attn_drop=0.5)
    x = torch.randn(2, 16, 32)
    layer.train()
    assert not torch.equal(layer(x, (4, 4)), layer(x, (4, 4)))
    layer.eval()
    torch.testing.assert_close(
        layer(x, (4, 4)), layer._forward_reference(x, (4, 4)) @ layer.proj.weight.T + layer.proj.bias
    )


def test_inference_mode_then_training_step_then_dtype_move():
    layer = perturbed_gpsa(32, 4)
    x = torch.randn(2, 16, 32)
    with torch.inference_mode():
        layer(x, (4, 4))
    layer(x, (4, 4)).sum().backward()
    assert layer.pos_proj.weight.grad is not None and layer.gating_param.grad is not None
    out64 = layer.double()(x.double(), (4, 4))
    assert out64.dtype == torch.float64
    assert set(layer.state_dict()) == {n for n, _ in layer.named_parameters()}


def test_grid_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="16 tokens for a 3x4 patch grid"):
        perturbed_gpsa(32, 4)(torch.randn(1, 16, 32), (3, 4))


def test_mhsa_fused_equals_math():
    fused, math = MHSA(48, 6), MHSA(48, 6, fused_attn=False)
    math.load_state_dict(fused.state_dict())
    x = torch.randn(2, 17, 48)
    torch.testing.assert_close(fused(x, (4, 4)), math(x, (4, 4)), rtol=1e-5, atol=1e-6)
    probs = fused.attention_probs(x, (4, 4))
    assert probs.shape == (2, 6, 17, 17)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 6, 17))


def test_positional_mix_gradcheck_float64():
    """The custom autograd function of the fast path: analytical gradients equal numerical ones."""
    from convit.attention import _PositionalMix

    B, rows, cols, H, d = 2, 3, 4, 2, 3
    v = torch.randn(B, rows, cols, H, 3 * d, dtype=torch.float64)[..., d : 2 * d]  # strided, as a view of qkv
    content = torch.randn(B, H, rows * cols, d, dtype=torch.float64)
    p_rows = torch.rand(H, rows, rows, dtype=torch.float64).softmax(-1)
    p_cols = torch.rand(H, cols, cols, dtype=torch.float64).softmax(-1)
    keep = torch.rand(H, dtype=torch.float64)
    inputs = [t.requires_grad_(True) for t in (v, content, p_rows, p_cols, keep)]
    assert torch.autograd.gradcheck(_PositionalMix.apply, inputs)


def test_positional_mix_equals_the_einsum_form():
    from convit.attention import mix_positional, mix_positional_einsum

    B, rows, cols, H, d = 2, 3, 5, 3, 4
    v = torch.randn(B, rows, cols, H, d)
    content = torch.randn(B, H, rows * cols, d)
    p_rows, p_cols = torch.rand(H, rows, rows), torch.rand(H, cols, cols)
    keep = torch.rand(H)
    torch.testing.assert_close(
        mix_positional(v, content, p_rows, p_cols, keep), mix_positional_einsum(v, content, p_rows, p_cols, keep)
    )


def test_fast_path_saves_no_more_than_sdpa_and_the_projections():
    """Training forward of the fast path: the positional term adds no tensor of the size of V to what autograd keeps."""
    layer = perturbed_gpsa(32, 4)
    x = torch.randn(8, 36, 32, requires_grad=True)  # larger than the weights
    sizes = {}

    def pack(tensor):
        sizes[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        layer(x, (6, 6))
    token_tensor = x.numel() * x.element_size()
    # x, the qkv output (3x), SDPA's output (1x) and its logsumexp, the projection's input (1x), weights
    big = sorted(n for n in sizes.values() if n >= token_tensor)
    assert big == sorted([token_tensor, 3 * token_tensor, token_tensor, token_tensor]), big


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_fast_path_equals_reference_path_under_autocast(grid):
    fast = perturbed_gpsa(32, 4)
    ref = GPSA(32, 4, fused_attn=False)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, grid[0] * grid[1], 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_f, gx_f, g_f = forward_and_grads(fast, x, grid)
        out_r, gx_r, g_r = forward_and_grads(ref, x, grid)
    torch.testing.assert_close(out_f.float(), out_r.float(), rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(gx_f.float(), gx_r.float(), rtol=5e-2, atol=5e-2)
    for name in g_r:
        if name == "pos_proj.bias":  # exactly zero (the bias cancels in the softmax): both give rounding noise
            assert g_f[name].abs().max() < 1e-2 and g_r[name].abs().max() < 1e-2
            continue
        scale = g_r[name].float().abs().max().clamp_min(1e-3)
        assert (g_f[name].float() - g_r[name].float()).abs().max() / scale < 5e-2, name


def test_compiled_fast_path_equals_eager_in_inference_and_training():
    layer = perturbed_gpsa(32, 4)
    compiled = torch.compile(layer)
    x = torch.randn(2, 15, 32)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x, (3, 5)), layer(x, (3, 5)), rtol=1e-5, atol=1e-5)
    out_c, gx_c, g_c = forward_and_grads(compiled, x, (3, 5))
    out_e, gx_e, g_e = forward_and_grads(layer, x, (3, 5))
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_c, gx_e, rtol=1e-5, atol=1e-5)
    for name in g_e:
        torch.testing.assert_close(g_c[f"_orig_mod.{name}"], g_e[name], rtol=1e-4, atol=1e-5, msg=name)


def test_gate_gradient_per_head_under_bf16_autocast_with_saturated_gates():
    """Each head's gate gradient stays near the float64 one, also for gates near 0 and 1, where a form that got it
    as the difference of two large terms (1 - gate folded into V's weights) lost it to bf16 rounding."""
    torch.manual_seed(0)
    fast = perturbed_gpsa(64, 4)
    with torch.no_grad():
        fast.gating_param.copy_(torch.tensor([9.0, 5.0, -9.0, 2.0]))
    exact = GPSA(64, 4, fused_attn=False).double()
    exact.load_state_dict(fast.state_dict())
    x, weights = torch.randn(4, 36, 64), torch.randn(4, 36, 64)
    (exact(x.double(), (6, 6)) * weights.double()).sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (fast(x, (6, 6)).float() * weights).sum().backward()
    expected = exact.gating_param.grad
    error = (fast.gating_param.grad.double() - expected).abs()
    assert (error <= 0.2 * expected.abs() + 1e-4).all(), (fast.gating_param.grad, expected)


@pytest.mark.parametrize("frozen", ["pos_proj", "gating_param", "both"])
def test_fast_path_gradients_with_frozen_positional_parameters(frozen):
    """The backward skips what a frozen pos_proj or gate does not need (fine-tuning's ``freeze`` options)."""
    fast = perturbed_gpsa(32, 4)
    ref = GPSA(32, 4, fused_attn=False)
    ref.load_state_dict(fast.state_dict())
    prefixes = ("pos_proj", "gating_param") if frozen == "both" else (frozen,)
    for layer in (fast, ref):
        for name, p in layer.named_parameters():
            p.requires_grad_(not name.startswith(prefixes))
    x = torch.randn(2, 15, 32)
    out_f, gx_f, g_f = forward_and_grads(fast, x, (3, 5))
    out_r, gx_r, g_r = forward_and_grads(ref, x, (3, 5))
    torch.testing.assert_close(gx_f, gx_r, rtol=1e-4, atol=1e-5)
    assert g_f.keys() == g_r.keys()
    for name in g_r:
        torch.testing.assert_close(g_f[name], g_r[name], rtol=1e-4, atol=1e-5)


def test_backward_leaves_a_contiguous_v_alone():
    """With one head the permuted view of V is V itself; the backward's head-major copy must not write into it."""
    from convit.attention import _PositionalMix

    v = torch.randn(2, 3, 4, 1, 5, requires_grad=True)
    content = torch.randn(2, 1, 12, 5, requires_grad=True)
    p_rows, p_cols = torch.rand(1, 3, 3).softmax(-1), torch.rand(1, 4, 4).softmax(-1)
    keep = torch.rand(1)
    before = v.detach().clone()
    _PositionalMix.apply(v, content, p_rows, p_cols, keep).sum().backward()
    assert torch.equal(v.detach(), before)
    fast = perturbed_gpsa(8, 2)  # one image, one patch: every permuted view of V is contiguous
    ref = GPSA(8, 2, fused_attn=False)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(1, 1, 8)
    out_f, gx_f, g_f = forward_and_grads(fast, x, (1, 1))
    out_r, gx_r, g_r = forward_and_grads(ref, x, (1, 1))
    torch.testing.assert_close(out_f, out_r)
    torch.testing.assert_close(gx_f, gx_r)
    for name in ("qk.weight", "v.weight", "gating_param"):
        torch.testing.assert_close(g_f[name], g_r[name], rtol=1e-4, atol=1e-5)
