"""What the two specialist model types share (copied with their files for ``trust_remote_code``): their
configs' cluster fields, cluster-id routing, histogram weights and the stock Llama config of one cluster."""

from __future__ import annotations

import dataclasses
import operator

import torch
from transformers import LlamaConfig

from .compat_specialists import CACHE_NAME


class ClusterConfig(LlamaConfig):
    """A ``LlamaConfig`` plus the cluster fields both specialist configs share.

    Args:
        num_clusters: ``k``, clusters of the ``ClusterIndex`` saved beside the checkpoint (one expert each in a mixture).
        default_cluster_id: the cluster used when ``forward`` / ``generate`` get no ``cluster_ids``.
    """

    num_clusters: int = 4
    default_cluster_id: int = 0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        """Transformers' validation hook, extended with the cluster fields (``ValueError`` naming the value)."""
        super().validate_architecture()
        if isinstance(self.num_clusters, bool) or not isinstance(self.num_clusters, int) or self.num_clusters < 1:
            raise ValueError(f"num_clusters must be a positive integer, got {self.num_clusters!r}")
        if not 0 <= self.default_cluster_id < self.num_clusters:
            raise ValueError(
                f"default_cluster_id={self.default_cluster_id} is not a cluster index in [0, {self.num_clusters})"
            )

    def validate(self) -> None:  # save_pretrained runs it; the inherited one runs LlamaConfig's checks only
        self.validate_architecture()
        super().validate()


def resolve_cluster_ids(cluster_ids, input_ids, inputs_embeds, config) -> torch.LongTensor:
    """``cluster_ids`` as ``LongTensor[batch]`` on the inputs' device; ``None`` means ``config.default_cluster_id``.

    Accepts an int, a sequence or a tensor of shape ``[batch]`` (or ``[batch, 1]``); raises ``ValueError`` without
    inputs, on another shape, a wrong length, non-integer ids or an id outside ``[0, config.num_clusters)``.
    """
    reference = input_ids if input_ids is not None else inputs_embeds
    if reference is None:
        raise ValueError("pass input_ids or inputs_embeds")
    batch_size, device, num_clusters = reference.shape[0], reference.device, config.num_clusters
    if cluster_ids is None:
        return torch.full((batch_size,), config.default_cluster_id, dtype=torch.long, device=device)
    if isinstance(cluster_ids, int):
        cluster_ids = torch.full((batch_size,), cluster_ids, dtype=torch.long, device=device)
    cluster_ids = torch.as_tensor(cluster_ids, device=device)
    if cluster_ids.is_floating_point() or cluster_ids.is_complex():
        raise ValueError(f"cluster_ids must be integers, got dtype {cluster_ids.dtype}")
    # [batch] or [batch, 1] only: generate() repeats dim 0 for beams / returned sequences, so a row-major [1, batch]
    # would be expanded as c0, c1, c0, c1 against rows r0, r0, r1, r1
    if cluster_ids.dim() > 2 or (cluster_ids.dim() == 2 and cluster_ids.shape[1] != 1):
        raise ValueError(f"cluster_ids must have shape [batch] or [batch, 1], got {tuple(cluster_ids.shape)}")
    cluster_ids = cluster_ids.long().reshape(-1)
    if cluster_ids.numel() == 1 and batch_size > 1:
        cluster_ids = cluster_ids.expand(batch_size)
    if cluster_ids.numel() != batch_size:
        raise ValueError(f"cluster_ids has {cluster_ids.numel()} entries for a batch of {batch_size} sequences "
                         "(generate() repeats them for beams / returned sequences only when given as a tensor)")
    if cluster_ids.numel() and (cluster_ids.min() < 0 or cluster_ids.max() >= num_clusters):
        raise ValueError(f"cluster_ids must lie in [0, {num_clusters}), got values {sorted(set(cluster_ids.tolist()))}")
    return cluster_ids


def cluster_index(cluster, num_clusters: int, what: str = "a cluster") -> int:
    """``cluster`` as an int in ``[0, num_clusters)``; ``ValueError`` for anything else (``int(1.7)`` routed to 1)."""
    try:
        index = operator.index(cluster) if not isinstance(cluster, bool) else None
    except TypeError:
        index = None
    if index is None or not 0 <= index < num_clusters:
        raise ValueError(f"cluster={cluster!r} is not {what} index in [0, {num_clusters})")
    return index


def check_cache_clusters(cache, cluster_ids: torch.LongTensor) -> None:
    """A KV cache holds keys computed under its rows' clusters: record ``cluster_ids [batch]`` on it, and refuse a later
    step that routes a row elsewhere (a decode loop that leaves ``cluster_ids`` out falls back to the default)."""
    if cache is None or not hasattr(cache, "get_seq_length"):
        return
    held = getattr(cache, "specialist_cluster_ids", None)
    if (held is not None and cache.get_seq_length() > 0 and held.shape == cluster_ids.shape
            and not torch.equal(held, cluster_ids.to(held.device))):
        raise ValueError(f"the KV cache was filled under cluster_ids {held.tolist()} but this step routes "
                         f"{cluster_ids.tolist()}: pass the same cluster_ids at every step (None is the default cluster)")
    cache.specialist_cluster_ids = cluster_ids.detach().clone()


def check_padding_mask(attention_mask, inputs: torch.Tensor, cache) -> None:
    """A 2-D ``attention_mask`` must be ``[batch, cached + new]`` for ``inputs [batch, new, ...]``: Llama's forward
    pads a narrower one with zeros, silently hiding the newest tokens (a decode step given the new token's width alone).
    (4-D masks are the caller's own, as in Llama.)"""
    if attention_mask is None or attention_mask.dim() != 2:
        return
    cached = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
    if attention_mask.shape[0] != inputs.shape[0]:
        raise ValueError(f"attention_mask has {attention_mask.shape[0]} rows for a batch of {inputs.shape[0]}")
    if attention_mask.shape[1] != cached + inputs.shape[1]:
        raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions but the inputs need {cached} cached "
                         f"+ {inputs.shape[1]} new = {cached + inputs.shape[1]}")


def cache_argument(cache) -> dict:
    """``{CACHE_NAME: cache}``. Before Transformers 5.24, continuous batching's ``cache=PagedAttentionCache`` (no
    ``get_seq_length``) is the paged attention functions' own argument, so it travels on under that name."""
    return {CACHE_NAME if cache is None or hasattr(cache, "get_seq_length") else "cache": cache}


def histogram_weights(histogram, num_clusters: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """``histogram`` (``[num_clusters]``, any sequence) normalised to sum 1; ``ValueError`` unless it has one bin per
    cluster and is finite and non-negative with a positive sum."""
    weights = torch.as_tensor(histogram, dtype=dtype, device=device).flatten()
    if weights.numel() != num_clusters:
        raise ValueError(f"histogram has {weights.numel()} bins for {num_clusters} clusters")
    if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"histogram must be finite and non-negative with a positive sum, got {weights.tolist()}")
    return weights / weights.sum()


def stock_llama_config(config) -> LlamaConfig:
    """The plain ``LlamaConfig`` of one expert / one instantiated cluster: only ``LlamaConfig``'s own fields."""
    llama_fields = {field.name for field in dataclasses.fields(LlamaConfig)} - {"architectures", "transformers_version"}
    stock = LlamaConfig(**{key: value for key, value in config.to_dict().items() if key in llama_fields})
    stock._attn_implementation = config._attn_implementation
    return stock
