"""Resample generic data to a domain's cluster histogram (SLM-is), or weight its loss instead.

- :func:`importance_sample`: map-style ``datasets.Dataset``; exact per-cluster counts (largest-remainder rounding of
  ``target * num_samples``), uniform rows inside each cluster, seeded, with or without replacement.
- :func:`importance_sample_iterable`: streaming ``IterableDataset`` (rows carry a cluster column); clusters are drawn
  from the target with ``interleave_datasets`` so counts match in expectation, not exactly.
- :func:`importance_weights` / :class:`ImportanceWeightedTrainer`: the loss-weighting alternative — every generic
  row is used once, its sequence loss multiplied by ``w(c) = p_target(c) / p_generic(c)``.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from datasets import Dataset, IterableDataset, interleave_datasets
from transformers import Trainer

LOSS_WEIGHT_COLUMN = "loss_weight"


def _check_histogram(target_histogram, num_clusters: int | None = None) -> np.ndarray:
    target = np.asarray(target_histogram, dtype=np.float64)
    if target.ndim != 1 or target.size == 0:
        raise ValueError(f"target_histogram must be a non-empty 1-D array, got shape {target.shape}")
    if num_clusters is not None and target.size != num_clusters:
        raise ValueError(
            f"target_histogram has {target.size} bins but the cluster ids need {num_clusters} "
            "(one bin per cluster of the index)"
        )
    if not np.all(np.isfinite(target)) or (target < 0).any():
        raise ValueError("target_histogram must be finite and non-negative")
    if target.sum() <= 0:
        raise ValueError("target_histogram sums to 0")
    return target / target.sum()


def exact_counts(probabilities: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` closest to ``probabilities * total`` (largest remainder)."""
    raw = probabilities * total
    counts = np.floor(raw).astype(np.int64)
    remainder = int(total - counts.sum())
    if remainder:
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[:remainder]] += 1
    return counts


def _rows_by_cluster(cluster_ids: np.ndarray, num_clusters: int) -> list[np.ndarray]:
    order = np.argsort(cluster_ids, kind="stable")
    boundaries = np.searchsorted(cluster_ids[order], np.arange(num_clusters + 1))
    return [order[boundaries[c] : boundaries[c + 1]] for c in range(num_clusters)]


def _target_over_present(target: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``target`` (normalised ``[k]``) without the clusters that have no generic rows (``sizes[c] == 0``),
    renormalised with a warning; ``ValueError`` when no target mass is left."""
    missing = (target > 0) & (sizes == 0)
    if missing.any():
        if target[~missing].sum() <= 0:
            raise ValueError("the generic data has no rows in any cluster the target histogram wants")
        warnings.warn(
            f"clusters {np.flatnonzero(missing).tolist()} carry {target[missing].sum():.3f} of the target mass but "
            "have no generic rows; dropping them and renormalising",
            stacklevel=3,
        )
        target = np.where(missing, 0.0, target)
        target = target / target.sum()
    return target


def importance_sample_indices(
    cluster_ids: Sequence[int],
    target_histogram,
    num_samples: int,
    *,
    seed: int = 0,
    replace: bool = True,
) -> np.ndarray:
    """Row indices (shuffled) whose cluster counts are exactly the rounded ``target_histogram * num_samples``.

    Clusters the target wants but the generic data lacks are dropped and the rest renormalised, with a warning.
    """
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
    if cluster_ids.ndim != 1 or cluster_ids.size == 0:
        raise ValueError("cluster_ids must be a non-empty 1-D sequence (one id per dataset row)")
    if (cluster_ids < 0).any():
        raise ValueError("cluster_ids must be >= 0")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    target = np.asarray(target_histogram, dtype=np.float64)
    if cluster_ids.max() >= target.size:
        raise ValueError(
            f"target_histogram has {target.size} bins but cluster_ids go up to {int(cluster_ids.max())}: "
            "the histogram must have one bin per cluster of the index"
        )
    target = _check_histogram(target)
    rows = _rows_by_cluster(cluster_ids, target.size)
    sizes = np.array([len(r) for r in rows])
    target = _target_over_present(target, sizes)
    counts = exact_counts(target, int(num_samples))
    if not replace:
        short = np.flatnonzero(counts > sizes)
        if short.size:
            c = int(short[0])
            raise ValueError(
                f"sampling without replacement needs {int(counts[c])} rows of cluster {c} but it has {int(sizes[c])}; "
                "use replace=True or fewer num_samples"
            )
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(rows[c], size=int(counts[c]), replace=replace) for c in range(target.size) if counts[c] > 0
    ]
    indices = np.concatenate(picked)
    rng.shuffle(indices)
    return indices


def importance_sample(
    dataset: Dataset,
    cluster_ids: Sequence[int],
    target_histogram,
    num_samples: int,
    *,
    seed: int = 0,
    replace: bool = True,
) -> Dataset:
    """``dataset`` resampled so its cluster histogram equals ``target_histogram`` (exact counts, seeded).

    Args:
        dataset: generic rows (windows), ``len(dataset) == len(cluster_ids)``.
        cluster_ids: cluster of each row (from ``ClusterIndex.assign``).
        target_histogram: ``[k]`` non-negative weights (normalised here), e.g. ``ClusterIndex.histogram(domain)``.
        num_samples: rows in the result.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}; "
                        "use importance_sample_iterable for streams")
    if len(cluster_ids) != len(dataset):
        raise ValueError(f"cluster_ids has {len(cluster_ids)} entries but the dataset has {len(dataset)} rows")
    indices = importance_sample_indices(cluster_ids, target_histogram, num_samples, seed=seed, replace=replace)
    return dataset.select(indices.tolist())


def importance_sample_iterable(
    dataset: IterableDataset,
    target_histogram,
    *,
    cluster_column: str = "cluster",
    seed: int = 0,
    stopping_strategy: str = "all_exhausted",
    cluster_sizes: Sequence[int] | None = None,
) -> IterableDataset:
    """A stream drawing each row's cluster from ``target_histogram`` then the next row of that cluster.

    ``stopping_strategy`` (``datasets.interleave_datasets``'): ``all_exhausted`` (default) cycles the small clusters
    (with replacement) until every one has been read once; ``first_exhausted`` never repeats a row and stops when the
    first cluster runs out. (``all_exhausted_without_replacement`` is refused: it reads every cluster to its end, so
    the stream is the generic data with its generic histogram.) ``cluster_sizes`` (``[k]`` generic rows per cluster,
    e.g. ``np.bincount`` of the index's assignments): target clusters without generic rows are dropped with a warning;
    without it such a cluster ends a ``first_exhausted`` stream at once.
    """
    if not isinstance(dataset, IterableDataset):
        raise TypeError(f"dataset must be a datasets.IterableDataset, got {type(dataset).__name__}")
    if stopping_strategy not in ("all_exhausted", "first_exhausted"):
        raise ValueError(
            f"stopping_strategy={stopping_strategy!r}: use 'all_exhausted' or 'first_exhausted' (a strategy that reads "
            "every cluster to its end without repeats returns the generic histogram, not the target's)"
        )
    target = _check_histogram(target_histogram)
    if cluster_sizes is not None:
        sizes = np.asarray(cluster_sizes, dtype=np.int64)
        if sizes.shape != target.shape:
            raise ValueError(f"cluster_sizes has {sizes.size} entries for {target.size} clusters")
        target = _target_over_present(target, sizes)
    clusters = np.flatnonzero(target > 0)
    streams = [dataset.filter(lambda row, c=int(c): row[cluster_column] == c) for c in clusters]
    return interleave_datasets(
        streams, probabilities=target[clusters].tolist(), seed=seed, stopping_strategy=stopping_strategy
    )


def importance_weights(cluster_ids: Sequence[int], target_histogram, *, max_weight: float | None = None) -> np.ndarray:
    """Per-row weights ``p_target(c) / p_generic(c)``, normalised to mean 1 over the rows. ``max_weight`` caps that
    ratio before the normalisation, so a final weight may exceed it by the normalisation factor."""
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
    target = _check_histogram(target_histogram)
    if cluster_ids.size == 0:
        raise ValueError("cluster_ids is empty")
    if cluster_ids.max() >= target.size:
        raise ValueError(f"target_histogram has {target.size} bins but cluster_ids go up to {int(cluster_ids.max())}")
    sizes = np.bincount(cluster_ids, minlength=target.size)
    target = _target_over_present(target, sizes)  # (mass on clusters without rows would vanish unnoticed)
    generic = sizes / cluster_ids.size
    weights = target[cluster_ids] / generic[cluster_ids]
    if max_weight is not None:
        weights = np.minimum(weights, max_weight)
    return (weights / weights.mean()).astype(np.float32)


def with_importance_weights(dataset: Dataset, cluster_ids, target_histogram, **kwargs) -> Dataset:
    """``dataset`` plus a ``loss_weight`` column for :class:`ImportanceWeightedTrainer`."""
    if len(cluster_ids) != len(dataset):
        raise ValueError(f"cluster_ids has {len(cluster_ids)} entries but the dataset has {len(dataset)} rows")
    return dataset.add_column(LOSS_WEIGHT_COLUMN, importance_weights(cluster_ids, target_histogram, **kwargs).tolist())


class ImportanceWeightedTrainer(Trainer):
    """A ``Trainer`` whose loss is the importance-weighted token cross-entropy ``sum(w_row * loss_token) / tokens`` of
    each micro-batch. The weights have mean 1 over the dataset (:func:`importance_weights`), so this estimates the loss
    under the target histogram. (Dividing by the sum of the weights instead cancelled them within any micro-batch whose
    rows share one weight: a batch of one row, or of one cluster.)"""

    # compute_loss returns a per-micro-batch mean (it ignores num_items_in_batch), so the Trainer must divide it by
    # the accumulation steps: left at None, it assumes a model whose forward takes **kwargs scaled it already, and
    # gradient accumulation over n micro-batches would give n times the gradient.
    loss_is_scaled_for_ga = False

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if LOSS_WEIGHT_COLUMN not in self._signature_columns:
            self._signature_columns = list(self._signature_columns) + [LOSS_WEIGHT_COLUMN]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop(LOSS_WEIGHT_COLUMN, None)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits[:, :-1].float()
        targets = labels[:, 1:]
        token_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
        ).view_as(targets)
        valid = (targets != -100).to(token_loss.dtype)
        row_weights = torch.ones(targets.shape[0], device=logits.device) if weights is None else weights.float()
        loss = (token_loss * valid * row_weights[:, None]).sum() / valid.sum().clamp(min=1)
        return (loss, outputs) if return_outputs else loss
