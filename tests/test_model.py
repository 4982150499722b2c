import pytest
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.convit import ConVit as TimmConVit

from convit import ConViT
from convit.attention import GPSA


def small_convit(
    img_size=48, patch_size=16, heads=4, head_width=12, depth=4, local_up_to_layer=2, locality_strength=1.0, **kwargs
) -> ConViT:
    return ConViT(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=heads * head_width,
        num_heads=heads,
        depth=depth,
        local_up_to_layer=local_up_to_layer,
        locality_strength=locality_strength,
        num_classes=7,
        **kwargs,
    )


def timm_twin(model: ConViT, img_size: int) -> TimmConVit:
    """timm's ConVit with the same shape and weights (timm's embed_dim is per head)."""
    twin = TimmConVit(
        img_size=img_size,
        patch_size=model.patch_size[0],
        embed_dim=model.embed_dim // model.num_heads,
        num_heads=model.num_heads,
        depth=len(model.blocks),
        local_up_to_layer=model.local_up_to_layer,
        locality_strength=model.locality_strength,
        num_classes=model.num_classes,
    )
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin


def perturb(model: ConViT) -> ConViT:
    """Move gates and positional weights away from their init, so equality checks see them."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, GPSA):
                module.gating_param.copy_(torch.randn_like(module.gating_param) * 2)
                module.pos_proj.weight.add_(torch.randn_like(module.pos_proj.weight) * 0.3)
                module.pos_proj.bias.copy_(torch.randn_like(module.pos_proj.bias))
        model.pos_embed.normal_(std=0.5)
    return model


def outputs_and_grads(model, x):
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out.detach(), grads


def assert_same_outputs_and_grads(ours, theirs, x, rtol=1e-4, atol=1e-5):
    out_a, grads_a = outputs_and_grads(ours, x)
    out_b, grads_b = outputs_and_grads(theirs, x)
    torch.testing.assert_close(out_a, out_b, rtol=rtol, atol=atol)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_b:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize(
    "heads,img_size,local_up_to_layer,strength",
    [(4, 48, 2, 1.0), (9, 64, 4, 0.5), (4, 32, 0, 1.0), (16, 48, 3, 3.0), (9, 80, 1, 1.0)],
)
def test_equals_timm_convit_outputs_and_gradients(heads, img_size, local_up_to_layer, strength):
    ours = perturb(small_convit(img_size, heads=heads, local_up_to_layer=local_up_to_layer, locality_strength=strength))
    theirs = timm_twin(ours, img_size)
    assert_same_outputs_and_grads(ours.train(), theirs.train(), torch.randn(2, 3, img_size, img_size))
    assert_same_outputs_and_grads(ours.eval(), theirs.eval(), torch.randn(2, 3, img_size, img_size))


def test_fast_path_equals_reference_path_on_a_non_square_image():
    fast = perturb(small_convit(img_size=(48, 80), heads=9))
    reference = small_convit(img_size=(48, 80), heads=9, fused_attn=False)
    reference.load_state_dict(fast.state_dict())
    assert_same_outputs_and_grads(fast, reference, torch.randn(2, 3, 48, 80))


def test_state_dict_round_trips_strictly_with_timm():
    ours = perturb(small_convit())
    theirs = TimmConVit(
        img_size=48, patch_size=16, embed_dim=12, num_heads=4, depth=4, local_up_to_layer=2, num_classes=7
    )
    theirs.load_state_dict(ours.state_dict(), strict=True)
    back = small_convit()
    back.load_state_dict(theirs.state_dict(), strict=True)
    for (name, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_no_local_init_leaves_random_positional_weights():
    model = small_convit(local_init=False)
    assert not torch.equal(model.blocks[0].attn.v.weight, torch.eye(48))


@pytest.mark.parametrize("use_pos_embed", [True, False])
def test_patch_tokens_leave_the_embedding_token_major(use_pos_embed):
    # the convolution's channel-major strides made every GPSA-block add and LayerNorm a strided pass
    tokens, _ = small_convit(use_pos_embed=use_pos_embed).embed(torch.randn(2, 3, 48, 48))
    assert tokens.is_contiguous()


def test_larger_image_resamples_the_position_embedding():
    model = perturb(small_convit(img_size=32, dynamic_img_size=True)).eval()
    bigger = small_convit(img_size=64).eval()
    bigger.load_state_dict(model.state_dict())  # the pre-hook resamples 2x2 -> 4x4
    expected = resample_abs_pos_embed(model.pos_embed, [4, 4], [2, 2], num_prefix_tokens=0)
    torch.testing.assert_close(bigger.pos_embed, expected)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), bigger(x), rtol=1e-5, atol=1e-5)


def test_finetune_step_at_another_resolution():
    model = small_convit(img_size=32, dynamic_img_size=True)
    out = model(torch.randn(2, 3, 48, 80))
    out.sum().backward()
    assert model.pos_embed.grad.shape == model.pos_embed.shape


@pytest.mark.parametrize(
    "shape,message",
    [
        ((1, 3, 50, 48), r"image size 50x48 is not divisible by the patch size 16x16: .* e\.g\. 48x48"),
        ((1, 1, 48, 48), r"expects 3 image channels \(in_chans=3\), got 1"),
        ((3, 48, 48), r"expects images shaped \(batch, 3, height, width\)"),
    ],
)
def test_bad_images_are_clear_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        small_convit()(torch.randn(shape))


def test_forward_intermediates_equal_timm():
    ours = perturb(small_convit()).eval()
    theirs = timm_twin(ours, 48).eval()
    x = torch.randn(2, 3, 48, 48)
    final_a, inter_a = ours.forward_intermediates(x, indices=[0, 2, 3], norm=True)
    final_b, inter_b = theirs.forward_intermediates(x, indices=[0, 2, 3], norm=True)
    torch.testing.assert_close(final_a, final_b, rtol=1e-5, atol=1e-5)
    for a, b in zip(inter_a, inter_b):
        assert a.shape == (2, 48, 3, 3)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    taken = ours.forward_intermediates(x, indices=[3], norm=True, stop_early=True, intermediates_only=True)
    torch.testing.assert_close(taken[0], inter_a[-1], rtol=1e-5, atol=1e-5)


def test_timm_model_interface():
    model = small_convit()
    assert model.get_classifier() is model.head
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    assert "blocks" in model.group_matcher()
    model.reset_classifier(3, "avg")
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 3)
    model.reset_classifier(0, "")
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 10, 48)
    kept = model.prune_intermediate_layers(indices=[1])
    assert kept == [1] and len(model.blocks) == 2 and model.cls_token is None


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = perturb(small_convit())
    checkpointed = small_convit()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing(True)
    assert_same_outputs_and_grads(checkpointed, plain, torch.randn(2, 3, 48, 48), rtol=1e-6, atol=1e-6)


def test_bad_constructor_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="not divisible by num_heads=5"):
        ConViT(embed_dim=48, num_heads=5)
    with pytest.raises(ValueError, match="local_up_to_layer=13 must lie between 0 and depth=12"):
        ConViT(local_up_to_layer=13, depth=12)


def test_fast_path_equals_reference_path_under_bf16_autocast():
    fast = perturb(small_convit(heads=9))
    reference = small_convit(heads=9, fused_attn=False)
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 48, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_f, out_r = fast(x), reference(x)
    out_f.float().sum().backward()
    out_r.float().sum().backward()
    torch.testing.assert_close(out_f.float(), out_r.float(), rtol=5e-2, atol=5e-2)
    for (name, a), (_, b) in zip(fast.named_parameters(), reference.named_parameters()):
        if a.grad is None or name.endswith("pos_proj.bias"):
            continue
        scale = b.grad.abs().max().clamp_min(1e-6)
        assert ((a.grad - b.grad).abs().max() / scale).item() < 5e-2, name
