"""Projected network (SLM-pn, "hyper-network"): a Llama whose per-layer MLP weights are read off per cluster.

For cluster ``i`` and layer ``l`` each MLP matrix (gate, up, down) is

    W^(l,i) = sum_r c^(l,i)_r T^(l)_r,    c^(l,i) = E_i . M^(l)

with cluster codes ``E [k, m]`` (shared by all layers), a projection ``M^(l) [m, h]`` per layer and ``h`` basis
tensors ``T^(l) [h, *W.shape]`` per matrix. Attention, embeddings, norms and the head are ordinary shared weights.
A batch is split into cluster-homogeneous groups inside each MLP, so the weights are materialised once per group
(once per micro-batch when the batches are cluster-homogeneous). The attention runs on the whole batch, so the KV
cache, padding and generation work exactly as in Llama.

:meth:`HyperSpecialistForCausalLM.instantiate` writes the materialised weights into a stock ``LlamaForCausalLM``;
upcycling a Llama into this model: ``hf_efficient_lm.tools.specialists_build.hyper_from_llama``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import LlamaForCausalLM, LlamaModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from .compat_specialists import AutoClassesMixin, cache_of, resolve_cache
from .configuration_hyper_specialist import HyperSpecialistConfig
from .routing_specialists import (cache_argument, check_cache_clusters, check_padding_mask, cluster_index,
                                  histogram_weights, resolve_cluster_ids, stock_llama_config)

PROJECTED_MATRICES = ("gate_proj", "up_proj", "down_proj")


class HyperSpecialistMLP(nn.Module):
    """Llama's gated MLP with cluster-conditioned weights.

    Parameters: ``coefficient_projection`` ``M [m, h]`` (``[3, m, h]``: one per matrix gate/up/down with
    ``config.projection_per_matrix``); ``gate_basis`` / ``up_basis`` ``[h, ffn, hidden]``;
    ``down_basis`` ``[h, hidden, ffn]`` (each basis slice has the shape of the matching ``nn.Linear.weight``).
    """

    def __init__(self, config: HyperSpecialistConfig):
        super().__init__()
        if config.mlp_bias:
            raise ValueError("HyperSpecialistConfig does not support mlp_bias=True (Llama's default is False)")
        hidden, ffn, basis = config.hidden_size, config.intermediate_size, config.num_basis
        per_matrix = (len(PROJECTED_MATRICES),) if config.projection_per_matrix else ()
        self.coefficient_projection = nn.Parameter(torch.empty(*per_matrix, config.code_dim, basis))
        self.gate_basis = nn.Parameter(torch.empty(basis, ffn, hidden))
        self.up_basis = nn.Parameter(torch.empty(basis, ffn, hidden))
        self.down_basis = nn.Parameter(torch.empty(basis, hidden, ffn))
        self.act_fn = ACT2FN[config.hidden_act]

    def materialize(self, code: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weights for one code ``[m]`` (``E_i``, or a histogram-weighted mix of codes) -> ``{name: weight}``."""
        coefficients = code.to(self.coefficient_projection.dtype) @ self.coefficient_projection  # [h] or [3, h]
        gate, up, down = coefficients if coefficients.dim() == 2 else (coefficients,) * 3
        return {
            "gate_proj": torch.einsum("h,hfd->fd", gate, self.gate_basis),
            "up_proj": torch.einsum("h,hfd->fd", up, self.up_basis),
            "down_proj": torch.einsum("h,hdf->df", down, self.down_basis),
        }

    def _gated_mlp(self, hidden_states: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        gate = F.linear(hidden_states, weights["gate_proj"])
        up = F.linear(hidden_states, weights["up_proj"])
        return F.linear(self.act_fn(gate) * up, weights["down_proj"])

    def forward(self, hidden_states: torch.Tensor, cluster_ids: torch.Tensor, cluster_codes: torch.Tensor) -> torch.Tensor:
        """``hidden_states [batch, seq, hidden]`` -> same shape; row ``b`` uses code ``cluster_codes[cluster_ids[b]]``
        (``cluster_ids [batch]``, ``cluster_codes [k, m]``)."""
        clusters = torch.unique(cluster_ids).tolist()
        if len(clusters) == 1:
            return self._gated_mlp(hidden_states, self.materialize(cluster_codes[clusters[0]]))
        output = None
        for cluster in clusters:
            rows = (cluster_ids == cluster).nonzero(as_tuple=True)[0]
            group = self._gated_mlp(hidden_states[rows], self.materialize(cluster_codes[cluster]))
            if output is None:
                # group's dtype (bf16 under autocast): CUDA's index_copy needs equal dtypes, CPU autocast promotes
                output = hidden_states.new_zeros(hidden_states.shape[:-1] + (group.shape[-1],), dtype=group.dtype)
            output = output.index_copy(0, rows, group)
        return output


class HyperSpecialistDecoderLayer(LlamaDecoderLayer):
    """``LlamaDecoderLayer`` whose MLP is a :class:`HyperSpecialistMLP`: ``LlamaDecoderLayer.forward`` with the
    ``cluster_ids`` / ``cluster_codes`` keyword arguments passed on to the MLP. (Arguments, not state set on the MLP
    around the call: threads sharing one model would read each other's clusters.)"""

    def __init__(self, config: HyperSpecialistConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.mlp = HyperSpecialistMLP(config)

    def forward(self, hidden_states, cluster_ids=None, cluster_codes=None, **kwargs):
        if cluster_ids is None or cluster_codes is None:
            raise ValueError("HyperSpecialistDecoderLayer needs cluster_ids and cluster_codes")
        attended, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states), cluster_ids, cluster_codes)


class HyperSpecialistPreTrainedModel(AutoClassesMixin, LlamaPreTrainedModel):
    config: HyperSpecialistConfig
    config_class = HyperSpecialistConfig
    _no_split_modules = ["HyperSpecialistDecoderLayer"]
    # Routing groups rows by cluster (torch.unique + a python loop): data-dependent, so no fullgraph compile.
    _can_compile_fullgraph = False

    def _init_weights(self, module):
        """``random``: codes ``E`` and projections ``M`` ~ N(0, 1/m), bases scaled so a materialised ``W`` starts with
        std ``initializer_range`` in expectation (``||E_i M|| ~ sqrt(h/m)``; per cluster it varies a lot when h, m
        are small). ``shared_start``: every cluster's ``W`` starts as the same N(0, initializer_range) matrix."""
        super()._init_weights(module)
        config = self.config
        # shared_start edits whole tensors with init.copy_: init.* skip tensors loaded from a checkpoint, slices not.
        shared_start = config.projection_init == "shared_start"
        if isinstance(module, HyperSpecialistMLP):
            init.normal_(module.coefficient_projection, mean=0.0, std=1.0 / math.sqrt(config.code_dim))
            basis_std = config.initializer_range / math.sqrt(config.num_basis / config.code_dim)
            # shared_start: basis 0 rescaled to initializer_range, the other bases zeroed
            keep = torch.zeros(config.num_basis, 1, 1)
            keep[0] = config.initializer_range / basis_std
            for basis in (module.gate_basis, module.up_basis, module.down_basis):
                init.normal_(basis, mean=0.0, std=basis_std)
                if shared_start:
                    init.copy_(basis, basis.detach() * keep.to(basis))
            if shared_start:
                projection = module.coefficient_projection.detach().clone()
                projection[..., 0], projection[..., 0, 0] = 0.0, 1.0  # with E[:, 0] = 1: coefficient 0 is 1 for all
                init.copy_(module.coefficient_projection, projection)
        elif isinstance(module, HyperSpecialistModel):
            init.normal_(module.cluster_codes, mean=0.0, std=1.0 / math.sqrt(config.code_dim))
            if shared_start:
                init.copy_(module.cluster_codes, torch.cat([torch.ones_like(module.cluster_codes[:, :1]),
                                                            module.cluster_codes.detach()[:, 1:]], dim=1))


class HyperSpecialistModel(HyperSpecialistPreTrainedModel, LlamaModel):
    """``LlamaModel`` with :class:`HyperSpecialistDecoderLayer` layers and the cluster codes ``E [k, m]``."""

    def __init__(self, config: HyperSpecialistConfig):
        config.validate_architecture()  # from_pretrained sets overrides after the config's own checks
        # LlamaModel.__init__ would run post_init() before our parameters exist (marking the module initialised),
        # so build the same submodules here, with our decoder layers.
        HyperSpecialistPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [HyperSpecialistDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.cluster_codes = nn.Parameter(torch.empty(config.num_clusters, config.code_dim))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, use_cache=None, cluster_ids=None, **kwargs):
        """As ``LlamaModel.forward`` plus ``cluster_ids [batch]`` (None: ``config.default_cluster_id``)."""
        cache = resolve_cache(cache, kwargs)
        cluster_ids = resolve_cluster_ids(cluster_ids, input_ids, inputs_embeds, self.config)
        check_cache_clusters(cache, cluster_ids)
        check_padding_mask(attention_mask, input_ids if input_ids is not None else inputs_embeds, cache)
        output = LlamaModel.forward(self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                    **cache_argument(cache), inputs_embeds=inputs_embeds, use_cache=use_cache,
                                    cluster_ids=cluster_ids, cluster_codes=self.cluster_codes, **kwargs)
        check_cache_clusters(cache_of(output), cluster_ids)  # (a cache the forward created records them too)
        return output


class HyperSpecialistForCausalLM(HyperSpecialistPreTrainedModel, LlamaForCausalLM):
    """Causal LM head over :class:`HyperSpecialistModel`; ``forward(..., cluster_ids=LongTensor[batch])``."""

    def __init__(self, config: HyperSpecialistConfig):
        HyperSpecialistPreTrainedModel.__init__(self, config)
        self.model = HyperSpecialistModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, cluster_ids=None, **kwargs):
        """Shapes: ``input_ids [batch, seq]``, ``cluster_ids [batch]``; returns ``CausalLMOutputWithPast``."""
        cache = resolve_cache(cache, kwargs)
        return LlamaForCausalLM.forward(self, input_ids=input_ids, attention_mask=attention_mask,
                                        position_ids=position_ids, **cache_argument(cache), inputs_embeds=inputs_embeds,
                                        labels=labels, use_cache=use_cache, logits_to_keep=logits_to_keep,
                                        cluster_ids=cluster_ids, **kwargs)

    def cluster_code(self, cluster: int | None = None, histogram=None) -> torch.Tensor:
        """``E_cluster`` or ``sum_c p_c E_c`` for a ``histogram [k]`` (normalised here) -> ``[m]``."""
        codes = self.model.cluster_codes
        if (cluster is None) == (histogram is None):
            raise ValueError("pass exactly one of cluster= or histogram=")
        if cluster is not None:
            return codes[cluster_index(cluster, self.config.num_clusters, "a cluster")]
        return histogram_weights(histogram, self.config.num_clusters, codes.dtype, codes.device) @ codes

    @torch.no_grad()
    def instantiate(self, cluster: int | None = None, histogram=None) -> LlamaForCausalLM:
        """A stock ``LlamaForCausalLM`` holding the shared weights and the MLP weights materialised for
        ``cluster`` (the paper) or for the ``histogram``-weighted code (linear in ``E``; beyond the paper)."""
        code = self.cluster_code(cluster=cluster, histogram=histogram)
        parameter = next(self.parameters())
        stock = LlamaForCausalLM(stock_llama_config(self.config))
        state = {name: tensor for name, tensor in self.state_dict().items()
                 if name != "model.cluster_codes" and ".mlp." not in name}
        for layer_idx, layer in enumerate(self.model.layers):
            for matrix, weight in layer.mlp.materialize(code).items():
                state[f"model.layers.{layer_idx}.mlp.{matrix}.weight"] = weight
        stock.load_state_dict(state, strict=True)
        stock.generation_config.update(**self.generation_config.to_dict())  # (eos ids, lengths, ...)
        return stock.to(device=parameter.device, dtype=parameter.dtype).train(self.training)


__all__ = ["HyperSpecialistForCausalLM", "HyperSpecialistModel", "HyperSpecialistPreTrainedModel", "HyperSpecialistMLP",
           "HyperSpecialistDecoderLayer"]
