"""Training the pretraining-time specialists: cluster-homogeneous batches, routed collation, per-expert jobs.

Rows of a training set are fixed-length token windows with a ``cluster_ids`` column (from ``ClusterIndex.assign``).
:class:`ClusterHomogeneousTrainer` orders them so every micro-batch holds ONE cluster: the projected network then
materialises its MLP weights once per micro-batch, and a hard-mixture step trains exactly one expert.
:func:`train_expert` trains one stock Llama on one cluster (the "k independent jobs" layout); gather the folders
with ``specialists_build.mixture_from_experts``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import Sampler
from transformers import Trainer, TrainingArguments

from ..io_utils import atomic_dir
from ..train.run_dir import run_fingerprint, train_guarded, weights_fingerprint

CLUSTER_COLUMN = "cluster_ids"


def cluster_homogeneous_order(cluster_ids: Sequence[int], batch_size: int, *, seed: int = 0) -> np.ndarray:
    """Row indices whose consecutive blocks of ``batch_size`` share one cluster.

    Each cluster's rows are shuffled and cut into blocks; a last partial block is topped up with rows of the same
    cluster drawn again (so no row is lost and no block mixes clusters); the blocks are then shuffled.
    Returns ``int64 [num_blocks * batch_size]``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
    if cluster_ids.size == 0:
        raise ValueError("cluster_ids is empty")
    rng = np.random.default_rng(seed)
    blocks = []
    for cluster in np.unique(cluster_ids):
        rows = rng.permutation(np.flatnonzero(cluster_ids == cluster))
        remainder = (-len(rows)) % batch_size
        if remainder:
            rows = np.concatenate([rows, rng.choice(rows, size=remainder, replace=True)])
        blocks.extend(rows.reshape(-1, batch_size))
    order = rng.permutation(len(blocks))
    return np.concatenate([blocks[i] for i in order])


class _ClusterHomogeneousSampler(Sampler):
    def __init__(self, cluster_ids: Sequence[int], batch_size: int, seed: int):
        self.cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self._length = len(cluster_homogeneous_order(self.cluster_ids, batch_size, seed=seed))

    def __len__(self) -> int:
        return self._length

    def set_epoch(self, epoch: int) -> None:
        # The Trainer names the epoch before iterating, also in a resumed process: epoch e always gets the order of
        # seed + e (a resumed run replayed epoch 0's batches when the count restarted at 0).
        self.epoch = epoch

    def __iter__(self):
        order = cluster_homogeneous_order(self.cluster_ids, self.batch_size, seed=self.seed + self.epoch)
        self.epoch += 1  # (a loop that never calls set_epoch still gets a new order each epoch)
        return iter(order.tolist())


class SpecialistCollator:
    """Stacks fixed-length ``input_ids`` windows; ``labels`` = inputs (padding -> -100); passes ``cluster_ids``
    and ``loss_weight`` through. Windows of unequal length are right-padded with ``pad_token_id``."""

    def __init__(self, pad_token_id: int = 0):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids = torch.as_tensor(row["input_ids"], dtype=torch.long)
            input_ids[i, : len(ids)] = ids
            attention_mask[i, : len(ids)] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": input_ids.masked_fill(attention_mask == 0, -100),
        }
        if CLUSTER_COLUMN in rows[0]:
            batch[CLUSTER_COLUMN] = torch.tensor([int(row[CLUSTER_COLUMN]) for row in rows], dtype=torch.long)
        if "loss_weight" in rows[0]:
            batch["loss_weight"] = torch.tensor([float(row["loss_weight"]) for row in rows], dtype=torch.float32)
        return batch


class ClusterHomogeneousTrainer(Trainer):
    """``Trainer`` whose training micro-batches each hold a single cluster (needs a ``cluster_ids`` column).

    Single-process only: with several processes the shards of one global batch would not line up with blocks.
    """

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not isinstance(train_dataset, Dataset) or CLUSTER_COLUMN not in train_dataset.column_names:
            raise ValueError(f"ClusterHomogeneousTrainer needs a datasets.Dataset with a {CLUSTER_COLUMN!r} column")
        if self.args.world_size > 1:
            raise ValueError("ClusterHomogeneousTrainer supports a single process (world_size == 1)")
        return _ClusterHomogeneousSampler(
            train_dataset[CLUSTER_COLUMN], self.args.per_device_train_batch_size, self.args.seed
        )


def train_expert(
    model,
    dataset: Dataset,
    cluster_id: int,
    output_dir: str | Path,
    args: TrainingArguments,
    *,
    pad_token_id: int = 0,
    fingerprint: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Train a stock Llama ``model`` on the rows of ``dataset`` whose ``cluster_ids == cluster_id`` and save it to
    ``output_dir/expert_{cluster_id}`` (one of ``k`` independent jobs; the folder appears whole).

    With a run ``fingerprint`` (``train-expert`` gives one) the checkpoints ``args`` asks for resume only this run,
    under the run guard of ``pretrain`` (``overwrite``: start fresh over another run's), and are removed at the end."""
    rows = [i for i, c in enumerate(dataset[CLUSTER_COLUMN]) if int(c) == int(cluster_id)]
    if not rows:
        raise ValueError(f"no rows of cluster {cluster_id} in the dataset")
    subset = dataset.select(rows).remove_columns([CLUSTER_COLUMN])
    trainer = Trainer(model=model, args=args, train_dataset=subset, data_collator=SpecialistCollator(pad_token_id))
    if fingerprint is None:
        trainer.train()
    else:
        train_guarded(trainer, fingerprint, overwrite=overwrite)
    path = Path(output_dir) / f"expert_{int(cluster_id)}"
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
    if fingerprint is not None and trainer.is_world_process_zero():
        shutil.rmtree(args.output_dir, ignore_errors=True)  # the job is done: its checkpoints are not needed
    return path


def train_mixture_experts(model, dataset: Dataset, args: TrainingArguments, *, pad_token_id: int = 0):
    """Train a :class:`SpecialistMixtureForCausalLM` or :class:`HyperSpecialistForCausalLM` on windows with a
    ``cluster_ids`` column, with cluster-homogeneous micro-batches. Returns the ``TrainOutput``."""
    trainer = ClusterHomogeneousTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=SpecialistCollator(pad_token_id)
    )
    return trainer.train()


def main(argv=None) -> Path:
    """CLI: one of the ``k`` independent expert jobs of a hard mixture.

    Trains a copy of the ``--base`` Llama on the windows of ``--cluster`` from a dataset saved with
    ``Dataset.save_to_disk`` (columns ``input_ids`` and ``cluster_ids``) and writes ``OUTPUT_DIR/expert_{cluster}``.
    Assemble the folders with ``mixture_from_experts(OUTPUT_DIR)`` (expert ``i`` = cluster ``i``).
    """
    import argparse

    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser(
        prog="hf-efficient-lm train-expert", description=main.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base", required=True, help="Llama checkpoint each expert starts from")
    parser.add_argument("--windows", required=True, help="dataset folder (save_to_disk) with input_ids, cluster_ids")
    parser.add_argument("--cluster", type=int, required=True, help="the cluster (= expert index) this job trains")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-steps", type=int, default=100,
                        help="checkpoint every N steps into OUTPUT_DIR/.expert_CLUSTER.trainer (removed when the job "
                             "ends); a killed job started again with the same options resumes from its newest one. 0: none")
    parser.add_argument("--overwrite-output-dir", action="store_true",
                        help="start fresh over the checkpoints of a job with other options instead of refusing")
    args = parser.parse_args(argv)
    dataset = load_from_disk(args.windows)
    missing = {"input_ids", CLUSTER_COLUMN} - set(dataset.column_names)
    if missing:
        parser.error(f"--windows dataset lacks columns {sorted(missing)}")
    model = AutoModelForCausalLM.from_pretrained(args.base)
    training_args = TrainingArguments(
        output_dir=str(args.output_dir / f".expert_{args.cluster}.trainer"), max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        save_strategy="steps" if args.save_steps > 0 else "no", save_steps=max(1, args.save_steps), report_to=[],
        seed=args.seed,
    )
    fingerprint = run_fingerprint(model_config=model.config, tokenizer=None, training_args=training_args,
                                  data_files=sorted(map(str, Path(args.windows).glob("*.arrow"))), cluster=args.cluster,
                                  base_weights=weights_fingerprint(args.base), script="train_expert")
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    path = train_expert(model, dataset, args.cluster, args.output_dir, training_args, pad_token_id=pad,
                        fingerprint=fingerprint, overwrite=args.overwrite_output_dir)
    print(f"expert {args.cluster} written to {path}")
    return path


if __name__ == "__main__":
    main()
