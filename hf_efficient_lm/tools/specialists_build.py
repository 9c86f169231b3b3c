"""Building specialist models from Llamas (not carried by checkpoints): assemble a hard mixture from expert
checkpoints, write its experts as stock Llama folders, and upcycle a Llama into a projected network.

The carried model files keep only what forward / generate / ``instantiate`` need; these builders run once, before
training or after per-cluster jobs, and write through ``io_utils``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from ..io_utils import atomic_dir
from ..specialists.configuration_hyper_specialist import HyperSpecialistConfig
from ..specialists.configuration_specialist_mixture import SpecialistMixtureConfig
from ..specialists.modeling_hyper_specialist import PROJECTED_MATRICES, HyperSpecialistForCausalLM
from ..specialists.modeling_specialist_mixture import SpecialistMixtureForCausalLM
from ..specialists.routing_specialists import stock_llama_config

# config.json keys that name a class or a release rather than the network's shape
_NOT_SHAPE = ("architectures", "model_type", "transformers_version")


def _llama_fields(config) -> dict:
    fields = stock_llama_config(config).to_dict()
    for key in _NOT_SHAPE:
        fields.pop(key, None)
    return fields


def save_experts(mixture: SpecialistMixtureForCausalLM, directory: str | Path) -> list[Path]:
    """Write each expert of ``mixture`` as a stock Llama checkpoint ``directory/expert_{i}`` (one folder per expert,
    each appearing whole); returns the folders in cluster order."""
    directory = Path(directory)
    paths = []
    for i in range(mixture.config.num_clusters):
        path = directory / f"expert_{i}"
        with atomic_dir(path) as tmp:
            mixture.instantiate(cluster=i).save_pretrained(tmp)
        paths.append(path)
    return paths


def mixture_from_experts(experts, **config_overrides) -> SpecialistMixtureForCausalLM:
    """Assemble a mixture from ``k`` Llama checkpoints (paths or ``LlamaForCausalLM``s of one shape), e.g. the
    outputs of ``k`` independent per-cluster training jobs. Expert ``i`` becomes cluster ``i``; ``config_overrides``
    set :class:`SpecialistMixtureConfig` fields (``default_cluster_id``, ...)."""
    models = [
        expert if isinstance(expert, LlamaForCausalLM) else LlamaForCausalLM.from_pretrained(expert)
        for expert in experts
    ]
    if not models:
        raise ValueError("mixture_from_experts needs at least one expert")
    base = _llama_fields(models[0].config)
    for i, model in enumerate(models[1:], start=1):
        other = _llama_fields(model.config)
        differing = sorted(
            key for key in set(base) | set(other)
            if key not in ("_name_or_path", "dtype") and base.get(key) != other.get(key)
        )
        if differing:
            raise ValueError(f"expert {i} has a different config from expert 0 in {differing}")
    config = SpecialistMixtureConfig(**{**base, **config_overrides, "num_clusters": len(models)})
    mixture = SpecialistMixtureForCausalLM(config)
    for target, source in zip(mixture.experts, models):
        target.load_state_dict(source.state_dict())
    return mixture.to(next(models[0].parameters()).dtype)


@torch.no_grad()
def hyper_from_llama(llama: LlamaForCausalLM, *, num_clusters: int, num_basis: int, code_dim: int | None = None,
                     seed: int = 0) -> HyperSpecialistForCausalLM:
    """Upcycle a pretrained ``LlamaForCausalLM`` into a projected network: shared weights copied, and at
    initialisation EVERY cluster's materialised MLP equals the Llama's (basis 0 holds its weights, the other bases
    are zero, and ``M^(l)[:, 0]`` solves ``E_i . M^(l)[:, 0] = 1`` for all ``i``). Training then lets the clusters
    diverge. Needs ``code_dim >= num_clusters`` (default ``num_clusters``) so that system has an exact solution."""
    code_dim = num_clusters if code_dim is None else code_dim
    if code_dim < num_clusters:
        raise ValueError(f"hyper_from_llama needs code_dim >= num_clusters (got {code_dim} < {num_clusters})")
    config = HyperSpecialistConfig(**_llama_fields(llama.config), num_clusters=num_clusters, num_basis=num_basis,
                                   code_dim=code_dim)
    config._attn_implementation = llama.config._attn_implementation
    torch.manual_seed(seed)
    model = HyperSpecialistForCausalLM(config)
    source = llama.state_dict()
    state = {name: source.get(name, tensor) for name, tensor in model.state_dict().items()}
    codes = state["model.cluster_codes"].double()
    ones = torch.ones(num_clusters, 1, dtype=torch.float64)
    first_column = torch.linalg.lstsq(codes, ones).solution[:, 0]  # [m]
    for layer_idx in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer_idx}.mlp"
        projection = state[f"{prefix}.coefficient_projection"].clone()
        projection[..., 0] = first_column.to(projection.dtype)  # every matrix's M, shared or per matrix
        state[f"{prefix}.coefficient_projection"] = projection
        for matrix in PROJECTED_MATRICES:  # gate_proj -> gate_basis, ...
            basis = f"{prefix}.{matrix.replace('_proj', '_basis')}"
            tensor = torch.zeros_like(state[basis])
            tensor[0] = source[f"{prefix}.{matrix}.weight"]
            state[basis] = tensor
    model.load_state_dict(state)
    parameter = next(llama.parameters())
    return model.to(device=parameter.device, dtype=parameter.dtype).train(llama.training)
