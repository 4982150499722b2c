"""ConViT models (d'Ascoli et al., 2021); importing this package registers them with timm (module ``convit``).

The zoo needs only torch and timm: the training system (``convit.training``) and the analysis
(``convit.locality``) are imported only when asked for.
"""

from .attention import GPSA, MHSA
from .convert import from_vit
from .errors import UserError
from .model import ConViT
from .variants import (
    VARIANTS,
    checkpoint_filter_fn,
    convit_base,
    convit_base_plus,
    convit_small,
    convit_small_plus,
    convit_tiny,
    convit_tiny_plus,
    create_model,
)

__all__ = [
    "GPSA",
    "MHSA",
    "VARIANTS",
    "ConViT",
    "UserError",
    "checkpoint_filter_fn",
    "convit_base",
    "convit_base_plus",
    "convit_small",
    "convit_small_plus",
    "convit_tiny",
    "convit_tiny_plus",
    "create_model",
    "from_vit",
]
__version__ = "0.1.0"
