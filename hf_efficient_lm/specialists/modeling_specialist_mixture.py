"""Hard mixture of small Llama experts (SLM-mix): one full ``LlamaForCausalLM`` per cluster, routed per sequence.

Expert ``i`` is trained only on the generic windows of cluster ``i``; at evaluation time each sequence goes to the
expert of its cluster id. Inference cost is that of ONE expert, and :meth:`SpecialistMixtureForCausalLM.instantiate`
returns that expert as a stock ``LlamaForCausalLM`` (loadable without this package). Assembling a mixture from
expert checkpoints and writing its experts out: ``hf_efficient_lm.tools.specialists_build``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, LlamaForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .compat_specialists import CACHE_NAME, AutoClassesMixin, cache_of, resolve_cache
from .configuration_specialist_mixture import SpecialistMixtureConfig
from .routing_specialists import (cache_argument, check_cache_clusters, check_padding_mask, cluster_index,
                                  histogram_weights, resolve_cluster_ids, stock_llama_config)


def _gather_rows(batch_size: int, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Put each ``(rows [r], values [r, ...])`` part back at its rows of a ``[batch_size, ...]`` tensor."""
    first = parts[0][1]
    full = first.new_zeros((batch_size,) + tuple(first.shape[1:]))
    for rows, values in parts:
        full[rows] = values
    return full


def _gather_row_tuples(batch_size: int, routed: list, field: str) -> tuple[torch.Tensor, ...] | None:
    """Per-layer tuples (``hidden_states`` / ``attentions``) of the routed experts, rows put back in batch order."""
    if getattr(routed[0][1], field) is None:
        return None
    num_layers = len(getattr(routed[0][1], field))
    return tuple(
        _gather_rows(batch_size, [(rows, getattr(output, field)[layer]) for rows, output in routed])
        for layer in range(num_layers)
    )


class SpecialistMixturePreTrainedModel(AutoClassesMixin, PreTrainedModel):
    config: SpecialistMixtureConfig
    config_class = SpecialistMixtureConfig
    base_model_prefix = "mixture"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer"]
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class SpecialistMixtureForCausalLM(SpecialistMixturePreTrainedModel, GenerationMixin):
    """``k`` experts ``self.experts[i]`` (each a ``LlamaForCausalLM`` of the config's shape).

    ``forward(..., cluster_ids=LongTensor[batch])`` sends each row to its expert (rows of one cluster run together).
    A batch whose rows span several clusters is computed without a KV cache (training / generic evaluation);
    cached generation needs one cluster per batch, which is what ``generate`` for one domain is.
    """

    def __init__(self, config: SpecialistMixtureConfig):
        config.validate_architecture()  # from_pretrained sets overrides after the config's own checks
        super().__init__(config)
        self.experts = nn.ModuleList([LlamaForCausalLM(config) for _ in range(config.num_clusters)])
        if config.tie_word_embeddings:
            self._tied_weights_keys = {f"experts.{i}.lm_head.weight": f"experts.{i}.model.embed_tokens.weight"
                                       for i in range(config.num_clusters)}
        self.post_init()

    # ------------------------------------------------------------------------------------------ embeddings
    def get_input_embeddings(self) -> nn.Embedding:
        return self.experts[self.config.default_cluster_id].get_input_embeddings()

    def set_input_embeddings(self, value):
        self.experts[self.config.default_cluster_id].set_input_embeddings(value)

    @property
    def embeddings(self) -> nn.ModuleDict:
        """``embeddings.word_embeddings`` is the default expert's table: PEFT's prompt learning embeds ids with the module
        at that path, else with the first vocab-sized table it finds (expert 0's, whatever ``default_cluster_id`` is)."""
        return nn.ModuleDict({"word_embeddings": self.get_input_embeddings()})

    def get_output_embeddings(self) -> nn.Linear:
        return self.experts[self.config.default_cluster_id].get_output_embeddings()

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """Resize every expert's embeddings and head (they share one tokenizer)."""
        embeddings = None
        for expert in self.experts:
            embeddings = expert.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.vocab_size = embeddings.weight.shape[0]
        return self.get_input_embeddings()

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cluster_ids: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """Shapes: ``input_ids [batch, seq]``, ``cluster_ids [batch]`` (None: ``config.default_cluster_id``);
        returns ``logits [batch, seq (or logits_to_keep), vocab]``, the mean token loss if ``labels`` (or
        ``shift_labels``) are given, and the routed experts' ``hidden_states`` / ``attentions`` when asked for
        (``output_hidden_states`` / ``output_attentions``), each row's from its own expert."""
        cache = resolve_cache(cache, kwargs)
        cluster_ids = resolve_cluster_ids(cluster_ids, input_ids, inputs_embeds, self.config)
        check_cache_clusters(cache, cluster_ids)
        check_padding_mask(attention_mask, input_ids if input_ids is not None else inputs_embeds, cache)
        batch_size = cluster_ids.shape[0]
        loss_kwargs = {key: kwargs.pop(key) for key in ("num_items_in_batch", "shift_labels") if key in kwargs}
        clusters = torch.unique(cluster_ids).tolist()
        if inputs_embeds is not None and clusters != [self.config.default_cluster_id]:
            raise ValueError(f"inputs_embeds routed to clusters {clusters}: the experts embed with tables of their own "
                             f"and get_input_embeddings() is expert {self.config.default_cluster_id}'s, so pass "
                             "input_ids (or call model.experts[c] with embeddings from its own table)")
        if len(clusters) == 1:
            output = self._run_expert(
                clusters[0], input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                inputs_embeds=inputs_embeds, use_cache=use_cache, logits_to_keep=logits_to_keep, return_dict=True,
                **cache_argument(cache), **kwargs,
            )
            logits, cache = output.logits, cache_of(output)
            check_cache_clusters(cache, cluster_ids)  # (a cache the expert created records them too)
            hidden_states, attentions = output.hidden_states, output.attentions
        else:
            if cache is not None or use_cache:
                # Each expert would need its own KV cache over its own rows; refuse rather than decode wrongly.
                raise ValueError(
                    f"a KV cache with rows of several clusters ({clusters}) in one batch is not supported by the hard "
                    "mixture: generate one cluster per batch (or pass use_cache=False)"
                )
            # PEFT's mixed adapter batches (eval only) hand each LoRA layer one adapter per row of the whole batch
            if not self.training and any({"adapter_names", "alora_offsets"} & set(getattr(hook, "keywords", ()))
                                         for module in self.experts.modules() for hook in module._forward_pre_hooks.values()):
                raise ValueError(f"PEFT's per-row adapters (adapter_names=...) need the whole batch in every LoRA layer, "
                                 f"but rows of several clusters ({clusters}) run each expert on its own rows: send "
                                 "one cluster per batch")
            for name, tensor in (("attention_mask", attention_mask), ("position_ids", position_ids)):
                if tensor is not None and tensor.shape[0] not in ((batch_size,) if name == "attention_mask" else (1, batch_size)):
                    raise ValueError(f"{name} has {tensor.shape[0]} rows for a batch of {batch_size}: each expert reads its rows")
            routed = []
            for cluster in clusters:
                rows = (cluster_ids == cluster).nonzero(as_tuple=True)[0]

                def take(tensor):
                    return tensor[rows] if tensor is not None and tensor.shape[0] == batch_size else tensor

                output = self._run_expert(cluster, input_ids=take(input_ids), attention_mask=take(attention_mask),
                                          position_ids=take(position_ids), inputs_embeds=take(inputs_embeds),
                                          use_cache=False, logits_to_keep=logits_to_keep, return_dict=True, **kwargs)
                routed.append((rows, output))
            logits = _gather_rows(batch_size, [(rows, output.logits) for rows, output in routed])
            hidden_states = _gather_row_tuples(batch_size, routed, "hidden_states")
            attentions = _gather_row_tuples(batch_size, routed, "attentions")
        loss = None
        if labels is not None or "shift_labels" in loss_kwargs:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **loss_kwargs)
        result = CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions, **{CACHE_NAME: cache}
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return result if return_dict else result.to_tuple()

    # ------------------------------------------------------------------------------------------ experts
    def _run_expert(self, cluster: int, **inputs) -> CausalLMOutputWithPast:
        """Expert ``cluster``'s forward. Trainer's NEFTune noises the table ``get_input_embeddings()`` returns (the
        default expert's); the other experts' tables get the same noise for the call, so NEFTune trains them all."""
        expert, default_table = self.experts[cluster], self.get_input_embeddings()
        alpha, table = getattr(default_table, "neftune_noise_alpha", None), expert.get_input_embeddings()
        if alpha is None or table is default_table:
            return expert(**inputs)
        from transformers.integrations.neftune import neftune_post_forward_hook  # (0.14 s to import; Trainer has)
        table.neftune_noise_alpha = alpha
        hook = table.register_forward_hook(neftune_post_forward_hook)
        try:
            return expert(**inputs)
        finally:
            hook.remove()
            del table.neftune_noise_alpha

    def instantiate(self, cluster: int | None = None, histogram=None) -> LlamaForCausalLM:
        """A stock ``LlamaForCausalLM`` (a copy): expert ``cluster``, or the ``histogram``-weighted average of all
        experts' parameters (``histogram [num_clusters]``, normalised here; beyond the paper)."""
        if (cluster is None) == (histogram is None):
            raise ValueError("pass exactly one of cluster= or histogram=")
        stock = LlamaForCausalLM(stock_llama_config(self.config))
        device, dtype = next(self.parameters()).device, next(self.parameters()).dtype
        if cluster is not None:
            cluster = cluster_index(cluster, self.config.num_clusters, "an expert")
            state = self.experts[cluster].state_dict()
        else:
            weights = histogram_weights(histogram, self.config.num_clusters, torch.float64)
            states = [expert.state_dict() for expert in self.experts]
            state = {
                name: sum(float(w) * s[name].double() for w, s in zip(weights, states)).to(states[0][name].dtype)
                for name in states[0]
            }
        stock.load_state_dict(state)
        stock.generation_config.update(**self.generation_config.to_dict())  # (eos ids, lengths, ...)
        return stock.to(device=device, dtype=dtype).train(self.training)


__all__ = ["SpecialistMixtureForCausalLM", "SpecialistMixturePreTrainedModel"]
