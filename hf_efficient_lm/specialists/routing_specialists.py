"""Helpers shared by the two specialist model files (copied with them for ``trust_remote_code``)."""

from __future__ import annotations

import dataclasses

import torch
from transformers import LlamaConfig

# Fields our configs add on top of LlamaConfig; a stock Llama config drops them.
SPECIALIST_CONFIG_FIELDS = ("num_clusters", "num_experts", "num_basis", "code_dim", "default_cluster_id")


def resolve_cluster_ids(
    cluster_ids, batch_size: int, num_clusters: int, default_cluster_id: int, device: torch.device
) -> torch.LongTensor:
    """``cluster_ids`` as ``LongTensor[batch_size]`` on ``device``; ``None`` means ``default_cluster_id`` for all.

    Accepts an int, a sequence or a tensor of shape ``[batch]`` (or ``[batch, 1]``); raises ``ValueError`` on a wrong
    length or an id outside ``[0, num_clusters)``.
    """
    if cluster_ids is None:
        return torch.full((batch_size,), default_cluster_id, dtype=torch.long, device=device)
    if isinstance(cluster_ids, int):
        cluster_ids = torch.full((batch_size,), cluster_ids, dtype=torch.long, device=device)
    cluster_ids = torch.as_tensor(cluster_ids, device=device).long().reshape(-1)
    if cluster_ids.numel() == 1 and batch_size > 1:
        cluster_ids = cluster_ids.expand(batch_size)
    if cluster_ids.numel() != batch_size:
        raise ValueError(f"cluster_ids has {cluster_ids.numel()} entries for a batch of {batch_size} sequences")
    if cluster_ids.numel() and (cluster_ids.min() < 0 or cluster_ids.max() >= num_clusters):
        raise ValueError(
            f"cluster_ids must lie in [0, {num_clusters}), got values {sorted(set(cluster_ids.tolist()))}"
        )
    return cluster_ids


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
    """The plain ``LlamaConfig`` of one expert / one instantiated cluster (our extra fields dropped)."""
    llama_fields = {field.name for field in dataclasses.fields(LlamaConfig)}
    values = {key: value for key, value in config.to_dict().items() if key in llama_fields}
    for key in SPECIALIST_CONFIG_FIELDS + ("architectures", "auto_map", "model_type", "transformers_version"):
        values.pop(key, None)
    stock = LlamaConfig(**values)
    stock._attn_implementation = config._attn_implementation
    return stock
