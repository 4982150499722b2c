"""ConViT models (d'Ascoli et al., 2021); importing this package registers them with timm."""

from .attention import GPSA, MHSA
from .model import ConViT
from .variants import VARIANTS, checkpoint_filter_fn

__all__ = ["ConViT", "GPSA", "MHSA", "VARIANTS", "checkpoint_filter_fn"]
__version__ = "0.1.0"
