"""hf-efficient-lm: cheaper-inference language models as Transformers model classes.

Importing the package registers every family with the Auto classes.
"""

from .registration import MODEL_TYPE_PREFIX, lazy_attributes, register_causal_lm

__version__ = "0.1.0"

# Families (each import registers its classes with AutoConfig / AutoModelForCausalLM).
# Add a family's line here only once `import hf_efficient_lm.<family>` works.
from . import (
    anchor,  # noqa: F401
    blt,  # noqa: F401
    scone,  # noqa: F401
    specialists,  # noqa: F401
)
from .anchor import AnchorCache, AnchorLlamaConfig, AnchorLlamaForCausalLM
from .blt import BLTConfig, BLTEntropyModel, BLTForCausalLM, BLTTokenizer
from .scone import FgramVocab, SconeLlamaConfig, SconeLlamaForCausalLM
from .specialists import (
    HyperSpecialistConfig,
    HyperSpecialistForCausalLM,
    SpecialistMixtureConfig,
    SpecialistMixtureForCausalLM,
)

# tools, imported on first use: `import hf_efficient_lm` (what Auto registration needs) stays light
__getattr__ = lazy_attributes(__name__, {
    "mine_fgrams": ".scone",
    **dict.fromkeys(["ClusterIndex", "importance_sample", "specialize"], ".specialists"),
})

__all__ = ["MODEL_TYPE_PREFIX", "__version__", "register_causal_lm"]
__all__ += ["AnchorCache", "AnchorLlamaConfig", "AnchorLlamaForCausalLM"]
__all__ += ["FgramVocab", "SconeLlamaConfig", "SconeLlamaForCausalLM", "mine_fgrams"]
__all__ += ["BLTConfig", "BLTEntropyModel", "BLTForCausalLM", "BLTTokenizer"]
__all__ += ["ClusterIndex", "HyperSpecialistConfig", "HyperSpecialistForCausalLM", "SpecialistMixtureConfig",
            "SpecialistMixtureForCausalLM", "importance_sample", "specialize"]
