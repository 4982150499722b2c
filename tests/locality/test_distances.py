"""Attention distance in pixels and the original authors' measure, against hand computations."""

import timm
import torch

from convit.locality.distances import authors_maps, distance_report, mean_distance, pixel_distances
from convit.locality.measures import nonlocality
from convit.variants import create_model


def test_pixels_are_patches_times_patch_size_and_non_square_patches_by_hand():
    maps = [torch.rand(2, 6, 6).softmax(-1)]
    assert torch.allclose(mean_distance(maps, (2, 3), (4, 4)), 4 * mean_distance(maps, (2, 3)))
    d = pixel_distances((2, 3), (5, 2))  # rows of 5 pixels, columns of 2
    assert torch.isclose(d[0, 5], torch.tensor((5.0**2 + 4.0**2) ** 0.5))  # patch (0,0) to (1,2)


def test_real_forward_and_authors_measure_by_hand():
    torch.manual_seed(0)
    model = create_model(
        "convit_tiny", 10, img_size=16, patch_size=4, embed_dim=16, num_heads=4, depth=3, local_up_to_layer=2
    ).eval()
    images = torch.randn(5, 3, 16, 16)
    report = distance_report(model, images, batch_size=2, authors=True)
    assert torch.allclose(torch.tensor(report["nonlocality_patches"]), nonlocality(model, images), atol=1e-5)
    theirs = authors_maps(model, images, batch_size=2)
    with torch.no_grad():
        x = model.patch_embed(images).flatten(1, 2)  # patch embeddings, no position embedding, no norm
        for b in range(3):
            expected = model.blocks[b].attn.attention_probs(x, (4, 4)).mean(0)
            assert torch.allclose(theirs[b], expected, atol=1e-5)
    assert report["authors_px"] != report["distance_px"]
    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2
    ).eval()
    with torch.no_grad():
        x = vit.patch_embed(images)
        q, k, _ = vit.blocks[1].attn.qkv(x).reshape(5, 16, 3, 2, 8).permute(2, 0, 3, 1, 4)
        expected = ((q @ k.transpose(-2, -1)) * 8**-0.5).softmax(-1).mean(0)
    assert torch.allclose(authors_maps(vit, images)[1], expected, atol=1e-5)
