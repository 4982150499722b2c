"""ConViT models (d'Ascoli et al., 2021); importing this package registers them with timm (module ``convit``).

The zoo needs only torch and timm: the training system (``convit.training``) and the analysis
(``convit.locality``) are imported only when asked for.
"""

import sys

from .attention import GPSA, MHSA
from .convert import from_vit
from .errors import UserError
from .model import ConViT
from .variants import VARIANTS, checkpoint_filter_fn, create_model, register_models

register_models(sys.modules[__name__])

__all__ = [
    "ConViT",
    "GPSA",
    "MHSA",
    "UserError",
    "VARIANTS",
    "checkpoint_filter_fn",
    "create_model",
    "from_vit",
    *VARIANTS,
]
__version__ = "0.1.0"
