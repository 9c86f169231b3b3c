"""hf-efficient-lm: cheaper-inference language models as Transformers model classes.

Importing the package registers every family with the Auto classes.
"""

from .registration import MODEL_TYPE_PREFIX, register_causal_lm

__version__ = "0.1.0"

# Families (each import registers its classes with AutoConfig / AutoModelForCausalLM).
# Add a family's line here only once `import hf_efficient_lm.<family>` works.
from . import anchor  # noqa: F401
from .anchor import AnchorCache, AnchorLlamaConfig, AnchorLlamaForCausalLM  # noqa: F401
from . import scone  # noqa: F401
from .scone import FgramVocab, SconeLlamaConfig, SconeLlamaForCausalLM, mine_fgrams  # noqa: F401

from . import blt  # noqa: F401
from .blt import BLTConfig, BLTEntropyModel, BLTForCausalLM, BLTTokenizer  # noqa: F401
from . import specialists  # noqa: F401
from .specialists import (  # noqa: F401
    ClusterIndex,
    HyperSpecialistConfig,
    HyperSpecialistForCausalLM,
    SpecialistMixtureConfig,
    SpecialistMixtureForCausalLM,
    importance_sample,
    specialize,
)

__all__ = ["MODEL_TYPE_PREFIX", "register_causal_lm", "__version__"]
__all__ += ["AnchorCache", "AnchorLlamaConfig", "AnchorLlamaForCausalLM"]
__all__ += ["FgramVocab", "SconeLlamaConfig", "SconeLlamaForCausalLM", "mine_fgrams"]
__all__ += ["BLTConfig", "BLTEntropyModel", "BLTForCausalLM", "BLTTokenizer"]
__all__ += ["ClusterIndex", "HyperSpecialistConfig", "HyperSpecialistForCausalLM", "SpecialistMixtureConfig",
            "SpecialistMixtureForCausalLM", "importance_sample", "specialize"]
