"""The specialists in the contract suite: a 3-expert hard mixture and a 3-cluster projected network.

Neither gets ``cluster_ids`` from the suite, so each routes to ``config.default_cluster_id``; it is set to a cluster
other than 0 so the default-routing path (not just expert/code 0) is what the checks exercise.
"""

import torch

from hf_efficient_lm.specialists import (
    HyperSpecialistConfig,
    HyperSpecialistForCausalLM,
    SpecialistMixtureConfig,
    SpecialistMixtureForCausalLM,
)
from hf_efficient_lm.testing_utils import TINY_LLAMA_KWARGS
from tests.contract.common import ContractCase, random_ids


def make_mixture(attn_implementation: str = "sdpa") -> SpecialistMixtureForCausalLM:
    torch.manual_seed(0)
    config = SpecialistMixtureConfig(**TINY_LLAMA_KWARGS, num_experts=3, default_cluster_id=1)
    config._attn_implementation = attn_implementation
    return SpecialistMixtureForCausalLM(config).eval()


def make_hyper(attn_implementation: str = "sdpa") -> HyperSpecialistForCausalLM:
    torch.manual_seed(0)
    config = HyperSpecialistConfig(**TINY_LLAMA_KWARGS, num_clusters=3, num_basis=2, code_dim=2, default_cluster_id=2)
    config._attn_implementation = attn_implementation
    return HyperSpecialistForCausalLM(config).eval()


CASES = [
    ContractCase(
        name="specialist_mixture",
        make_model=make_mixture,
        make_input_ids=random_ids(TINY_LLAMA_KWARGS["vocab_size"]),
        invalid_config=("default_cluster_id", 99, "default_cluster_id=99 is not a cluster index"),
    ),
    ContractCase(
        name="hyper_specialist",
        make_model=make_hyper,
        make_input_ids=random_ids(TINY_LLAMA_KWARGS["vocab_size"]),
        invalid_config=("projection_init", "zeros", "projection_init='zeros'"),
    ),
]
