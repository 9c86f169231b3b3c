"""Specialists: small cheap Llamas for a domain, from clustered generic data and a little domain data.

Grangier et al., "Need a Small Specialized Language Model? Plan Early!" (arXiv 2402.01093). See docs/specialists.md.
"""

from ..registration import lazy_attributes, register_causal_lm
from .configuration_hyper_specialist import HyperSpecialistConfig
from .configuration_specialist_mixture import SpecialistMixtureConfig
from .modeling_hyper_specialist import HyperSpecialistForCausalLM, HyperSpecialistModel
from .modeling_specialist_mixture import SpecialistMixtureForCausalLM

# tools, imported on first use (clustering pulls scikit-learn, training the Trainer and datasets)
__getattr__ = lazy_attributes(__name__, {
    **dict.fromkeys(["ClusterIndex", "HashedNgramEmbedder", "LMHiddenStateEmbedder", "MiniLMEmbedder",
                     "embedder_from_spec", "split_into_windows"], "..tools.cluster_index"),
    "DistillationTrainer": "..tools.specialists_distillation",
    **dict.fromkeys(["ImportanceWeightedTrainer", "importance_sample", "importance_sample_iterable",
                     "importance_weights", "with_importance_weights"], "..tools.importance_sampling"),
    **dict.fromkeys(["SpecializationResult", "specialize"], "..tools.specialize"),
    **dict.fromkeys(["hyper_from_llama", "mixture_from_experts", "save_experts"], "..tools.specialists_build"),
    **dict.fromkeys(["SpecialistPlan", "plan"], "..tools.specialists_plan"),
    **dict.fromkeys(["ClusterHomogeneousTrainer", "SpecialistCollator", "cluster_homogeneous_order",
                     "train_mixture_experts"],
                    "..tools.specialists_training"),
})

register_causal_lm(SpecialistMixtureConfig, SpecialistMixtureForCausalLM)
register_causal_lm(HyperSpecialistConfig, HyperSpecialistForCausalLM, HyperSpecialistModel)

__all__ = [
    "ClusterIndex",
    "ClusterHomogeneousTrainer",
    "DistillationTrainer",
    "HashedNgramEmbedder",
    "HyperSpecialistConfig",
    "HyperSpecialistForCausalLM",
    "HyperSpecialistModel",
    "ImportanceWeightedTrainer",
    "LMHiddenStateEmbedder",
    "MiniLMEmbedder",
    "SpecializationResult",
    "SpecialistMixtureConfig",
    "SpecialistCollator",
    "SpecialistPlan",
    "SpecialistMixtureForCausalLM",
    "cluster_homogeneous_order",
    "embedder_from_spec",
    "hyper_from_llama",
    "importance_sample",
    "importance_sample_iterable",
    "importance_weights",
    "mixture_from_experts",
    "save_experts",
    "plan",
    "specialize",
    "split_into_windows",
    "train_mixture_experts",
    "with_importance_weights",
]
