"""timm's ImageNet transforms, set from a run's settings."""

from __future__ import annotations


def imagenet_transforms(cfg, train: bool):
    """timm's training (RandAugment, random erasing, ...) or evaluation (resize, center crop) transform."""
    from timm.data import create_transform

    if train:
        return create_transform(
            cfg.img_size,
            is_training=True,
            scale=cfg.scale,
            ratio=cfg.ratio,
            hflip=cfg.hflip,
            color_jitter=cfg.color_jitter,
            auto_augment=cfg.aa or None,
            interpolation=cfg.interpolation,
            re_prob=cfg.reprob,
            re_mode=cfg.remode,
            re_count=cfg.recount,
        )
    return create_transform(cfg.img_size, is_training=False, interpolation=cfg.interpolation, crop_pct=cfg.crop_pct)
