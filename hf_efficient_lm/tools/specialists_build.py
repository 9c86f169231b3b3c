"""Building specialist models from Llamas (not carried by checkpoints): assemble a hard mixture from expert
checkpoints, write its experts as stock Llama folders, and upcycle a Llama into a projected network.

The carried model files keep only what forward / generate / ``instantiate`` need; these builders run once, before
training or after per-cluster jobs, and write through ``io_utils``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from ..io_utils import atomic_dir
from ..specialists.configuration_hyper_specialist import HyperSpecialistConfig
from ..specialists.configuration_specialist_mixture import SpecialistMixtureConfig
from ..specialists.modeling_hyper_specialist import PROJECTED_MATRICES, HyperSpecialistForCausalLM
from ..specialists.modeling_specialist_mixture import SpecialistMixtureForCausalLM
from ..specialists.routing_specialists import stock_llama_config

EXPERT_FOLDER = re.compile(r"expert_(\d+)")  # save_experts' and train-expert's folder names; the number is the cluster
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
        path = directory / f"expert_{i}"  # (EXPERT_FOLDER reads the number back)
        with atomic_dir(path) as tmp:
            mixture.instantiate(cluster=i).save_pretrained(tmp)
        paths.append(path)
    return paths


def mixture_from_experts(experts, **config_overrides) -> SpecialistMixtureForCausalLM:
    """Assemble a mixture from ``k`` Llama checkpoints of one shape, e.g. the outputs of ``k`` independent
    per-cluster training jobs. Expert ``i`` becomes cluster ``i``; ``config_overrides`` set
    :class:`SpecialistMixtureConfig` fields (``default_cluster_id``, ...).

    ``experts``: the folder holding ``expert_0 .. expert_{k-1}`` (what :func:`save_experts` and the
    ``train-expert`` jobs write; a missing one is an error), or a sequence of paths / ``LlamaForCausalLM``s in cluster
    order. A path named ``expert_N`` must sit at position ``N``: ``sorted()`` puts ``expert_10`` before ``expert_2``.
    """
    if isinstance(experts, (str, os.PathLike)):
        experts = _expert_folders(Path(experts))
    experts = list(experts)
    for position, expert in enumerate(experts):
        number = EXPERT_FOLDER.fullmatch(Path(expert).name) if isinstance(expert, (str, os.PathLike)) else None
        if number and int(number.group(1)) != position:
            raise ValueError(
                f"{expert} is expert {position} of the list, but expert i becomes cluster i: pass the expert_N folders "
                "in cluster order (sorted() puts expert_10 before expert_2), or pass the folder that holds them"
            )
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
    mixture.generation_config.update(**models[0].generation_config.to_dict())  # (what save_experts wrote)
    source = next(models[0].parameters())
    return mixture.to(device=source.device, dtype=source.dtype)


def _expert_folders(directory: Path) -> list[Path]:
    """``directory/expert_0 .. expert_{k-1}`` in cluster order (numbers, not names); a gap is an unfinished job."""
    found = {int(m.group(1)): path for path in (directory.iterdir() if directory.is_dir() else ())
             if path.is_dir() and (m := EXPERT_FOLDER.fullmatch(path.name))}
    if not found:
        raise FileNotFoundError(f"{directory} holds no expert_N folders (save_experts / train-expert write them)")
    missing = [i for i in range(max(found) + 1) if i not in found]
    if missing:
        raise ValueError(f"{directory} lacks expert_{missing[0]} ({len(missing)} of {max(found) + 1} missing): "
                         "every cluster's job must finish before the mixture is assembled")
    return [found[i] for i in range(len(found))]


@torch.no_grad()
def hyper_from_llama(llama: LlamaForCausalLM, *, num_clusters: int, num_basis: int, code_dim: int | None = None,
                     seed: int = 0) -> HyperSpecialistForCausalLM:
    """Upcycle a pretrained ``LlamaForCausalLM`` into a projected network: shared weights copied, and at
    initialisation EVERY cluster's materialised MLP equals the Llama's, bit for bit in any dtype (basis 0 holds its
    weights, the other bases are zero, ``E[:, 0] = 1`` and ``M^(l)[:, 0] = e_0``, so coefficient 0 is exactly 1:
    ``projection_init="shared_start"``'s construction). The codes' other columns and ``M``'s other entries are
    random, so training lets the clusters diverge. ``code_dim`` defaults to ``num_clusters``."""
    code_dim = num_clusters if code_dim is None else code_dim
    config = HyperSpecialistConfig(**_llama_fields(llama.config), num_clusters=num_clusters, num_basis=num_basis,
                                   code_dim=code_dim)
    config._attn_implementation = llama.config._attn_implementation
    torch.manual_seed(seed)
    model = HyperSpecialistForCausalLM(config)
    source = llama.state_dict()
    state = {name: source.get(name, tensor) for name, tensor in model.state_dict().items()}
    state["model.cluster_codes"][:, 0] = 1.0
    for layer_idx in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer_idx}.mlp"
        projection = state[f"{prefix}.coefficient_projection"]  # every matrix's M, shared or per matrix
        projection[..., 0], projection[..., 0, 0] = 0.0, 1.0
        for matrix in PROJECTED_MATRICES:  # gate_proj -> gate_basis, ...
            basis = f"{prefix}.{matrix.replace('_proj', '_basis')}"
            tensor = torch.zeros_like(state[basis])
            tensor[0] = source[f"{prefix}.{matrix}.weight"]
            state[basis] = tensor
    model.load_state_dict(state)
    parameter = next(llama.parameters())
    return model.to(device=parameter.device, dtype=parameter.dtype).train(llama.training)
