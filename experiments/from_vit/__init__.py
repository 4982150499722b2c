"""Turning a trained DeiT twin into a ConViT: ``python -m experiments.from_vit.run`` (see README.md)."""
