"""``specialize()``: from a pretrained specialist (or a generic small Llama) and a little domain data to one stock,
fine-tuned ``LlamaForCausalLM``, with a cost report."""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from datasets import Dataset
from transformers import EarlyStoppingCallback, LlamaForCausalLM, Trainer, TrainingArguments

from ..data.packing import encode_documents, pack_ids
from ..eval.perplexity import rows_nll
from .cluster_index import ClusterIndex, entropy
from .specialists_distillation import DistillationTrainer
from ..specialists.modeling_hyper_specialist import HyperSpecialistForCausalLM
from ..specialists.modeling_specialist_mixture import SpecialistMixtureForCausalLM
from .specialists_training import SpecialistCollator

SELECTIONS = ("most_frequent", "best_pretrained", "best_finetuned", "histogram")


@dataclass
class SpecializationResult:
    """``model``: the specialised stock ``LlamaForCausalLM``; ``report``: perplexities, choice and costs."""

    model: LlamaForCausalLM
    report: dict = field(default_factory=dict)


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _domain_texts(domain_dataset, text_column: str) -> list[str]:
    if isinstance(domain_dataset, Dataset):
        if text_column not in domain_dataset.column_names:
            raise ValueError(f"domain_dataset has no {text_column!r} column (columns: {domain_dataset.column_names})")
        texts = domain_dataset[text_column]
    elif isinstance(domain_dataset, str):
        raise TypeError("domain_dataset must be a datasets.Dataset or a list of texts, got a single string")
    else:
        texts = list(domain_dataset)
    texts = [text for text in texts if isinstance(text, str) and text.strip()]
    if not texts:
        raise ValueError("the domain dataset is empty: specialize() needs some in-domain text")
    return texts


def token_blocks(texts: Sequence[str], tokenizer, block_size: int) -> list[list[int]]:
    """Concatenate the documents (EOS between them) and cut ``block_size``-token blocks (the tail is dropped)."""
    return pack_ids(encode_documents(tokenizer, texts), block_size, separator=tokenizer.eos_token_id).tolist()


def block_perplexity(model, blocks: list[list[int]], *, batch_size: int = 8, cluster_id: int | None = None) -> float:
    """Token-weighted perplexity ``exp(sum NLL / #predicted tokens)`` of ``model`` on ``blocks`` (``inf`` if it
    diverged); ``cluster_id`` routes every block to that cluster (specialist models)."""
    def cluster_ids(ids, _rows):
        return {"cluster_ids": torch.full((ids.shape[0],), cluster_id, device=ids.device)}

    return rows_nll(model, blocks, batch_size=batch_size,
                    model_inputs=cluster_ids if cluster_id is not None else None).perplexity


def _best_finetuned(model, domain_dataset, cluster_index, **kwargs) -> SpecializationResult:
    """Fine-tune every cluster's model on the same split and keep the best on the held-out domain documents."""
    started = time.perf_counter()
    best, candidates, flops = None, [], {"selection": 0.0, "finetune": 0.0, "evaluation": 0.0}
    for cluster in range(model.config.num_clusters):
        result = specialize(model.instantiate(cluster=cluster), domain_dataset, None, **kwargs)
        report = result.report
        candidates.append({"cluster": cluster, "ppl_before": report["ppl_before"], "ppl_after": report["ppl_after"],
                           "finetune_steps": report["finetune_steps"], "train_tokens": report["train_tokens"]})
        for key in flops:
            flops[key] += report["flops"][key]
        if best is None or report["ppl_after"] < best.report["ppl_after"]:
            best = SpecializationResult(model=result.model, report=dict(report, selected_cluster=cluster))
        else:
            del result
    flops["total"] = sum(flops.values())
    best.report.update(
        selection="best_finetuned", model_class=type(model).__name__, candidates=candidates, flops=flops,
        finetune_steps=sum(c["finetune_steps"] for c in candidates),
        train_tokens=sum(c["train_tokens"] for c in candidates),
        seconds=time.perf_counter() - started,
    )
    return best


def specialize(
    model,
    domain_dataset,
    cluster_index: ClusterIndex | None,
    *,
    selection: str = "most_frequent",
    tokenizer=None,
    text_column: str = "text",
    block_size: int = 128,
    eval_fraction: float = 0.1,
    max_steps: int = 200,
    learning_rate: float = 3e-4,
    batch_size: int = 8,
    eval_steps: int = 20,
    early_stopping_patience: int = 3,
    histogram_smoothing: float = 0.0,
    selection_blocks: int = 32,
    teacher=None,
    distillation_alpha: float = 0.5,
    distillation_temperature: float = 2.0,
    seed: int = 0,
    output_dir: str | None = None,
) -> SpecializationResult:
    """Pick (or mix) a small model for the domain, then fine-tune it with early stopping on a held-out split.

    Args:
        model: a :class:`SpecialistMixtureForCausalLM`, a :class:`HyperSpecialistForCausalLM`, or a plain
            ``LlamaForCausalLM`` (the generic / importance-sampled baselines: fine-tuned as is).
        domain_dataset: ``datasets.Dataset`` with a ``text_column``, or a list of texts (documents).
        cluster_index: the index the specialist was trained with (``None`` allowed for a plain Llama or for
            ``best_pretrained``).
        selection: ``most_frequent`` (argmax of the domain histogram: the paper), ``best_pretrained`` (the
            expert with the lowest loss on the domain's training blocks), ``best_finetuned`` (fine-tune EVERY
            expert and keep the one with the lowest held-out perplexity: the paper's Table 5 upper bound, ``k``
            times the fine-tuning cost) or ``histogram`` (histogram-weighted mix of expert weights / cluster codes).
        tokenizer: the model's tokenizer (documents are cut into ``block_size``-token blocks).
        eval_fraction: share of the documents held out for early stopping and the reported perplexities.
        max_steps: fine-tuning step cap (0: no fine-tuning); evaluation every ``eval_steps``, stop after
            ``early_stopping_patience`` evaluations without improvement and keep the best checkpoint.
        teacher: optional larger LM; then fine-tuning is distillation (``DistillationTrainer``).

    Returns:
        :class:`SpecializationResult` with a stock ``LlamaForCausalLM`` and a report (``ppl_before``, ``ppl_after``,
        ``selected_cluster``, ``histogram``, ``train_tokens``, ``finetune_steps``, ``seconds``, ``flops``...).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection={selection!r}; choose one of {SELECTIONS}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if tokenizer is None:
        raise ValueError("specialize() needs the model's tokenizer to cut the domain texts into blocks")
    is_specialist = isinstance(model, (SpecialistMixtureForCausalLM, HyperSpecialistForCausalLM))
    if not is_specialist and not isinstance(model, LlamaForCausalLM):
        raise TypeError(f"model must be a SpecialistMixture/HyperSpecialist/Llama causal LM, got {type(model).__name__}")
    if is_specialist and selection == "best_finetuned":
        return _best_finetuned(model, domain_dataset, cluster_index, tokenizer=tokenizer, text_column=text_column,
                               block_size=block_size, eval_fraction=eval_fraction, max_steps=max_steps,
                               learning_rate=learning_rate, batch_size=batch_size, eval_steps=eval_steps,
                               early_stopping_patience=early_stopping_patience, teacher=teacher,
                               distillation_alpha=distillation_alpha,
                               distillation_temperature=distillation_temperature, seed=seed, output_dir=output_dir)
    texts = _domain_texts(domain_dataset, text_column)
    if len(texts) < 2:
        raise ValueError("specialize() needs at least 2 domain documents (one is held out for early stopping)")
    started = time.perf_counter()

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    num_eval = max(1, int(round(eval_fraction * len(texts))))
    eval_texts = [texts[i] for i in order[:num_eval]]
    train_texts = [texts[i] for i in order[num_eval:]]
    train_blocks = token_blocks(train_texts, tokenizer, block_size)
    eval_blocks = token_blocks(eval_texts, tokenizer, block_size)
    if not train_blocks or not eval_blocks:
        raise ValueError(
            f"the domain set is too small for block_size={block_size}: {len(train_blocks)} training and "
            f"{len(eval_blocks)} held-out blocks; add text or lower block_size"
        )

    report: dict = {"selection": selection if is_specialist else "generic", "model_class": type(model).__name__}
    flops = {"selection": 0.0}
    histogram = None
    num_clusters = model.config.num_clusters if is_specialist else None
    if is_specialist and selection in ("most_frequent", "histogram"):
        if cluster_index is None:
            raise ValueError(f"selection={selection!r} needs the cluster index the specialist was trained with")
        if cluster_index.k != num_clusters:
            raise ValueError(f"the cluster index has k={cluster_index.k} but the model has {num_clusters} clusters")
        windows = [tokenizer.decode(block) for block in train_blocks]
        histogram = cluster_index.histogram(windows, smoothing=histogram_smoothing, progress=False)
        report["histogram"] = [round(float(p), 6) for p in histogram]
        report["histogram_entropy"] = entropy(histogram)

    if not is_specialist:
        start_model = copy.deepcopy(model)
    elif selection == "most_frequent":
        cluster = int(np.argmax(histogram))
        report["selected_cluster"] = cluster
        start_model = model.instantiate(cluster=cluster)
    elif selection == "histogram":
        start_model = model.instantiate(histogram=histogram)
    else:  # best_pretrained: one forward pass per cluster over a few domain blocks
        probe = train_blocks[:selection_blocks]
        losses = [math.log(block_perplexity(model, probe, batch_size=batch_size, cluster_id=c))
                  for c in range(num_clusters)]
        cluster = int(np.argmin(losses))
        report["selected_cluster"] = cluster
        report["selection_losses"] = [round(loss, 4) for loss in losses]
        active = _num_params(model.instantiate(cluster=cluster))
        flops["selection"] = 2.0 * active * len(probe) * block_size * num_clusters
        start_model = model.instantiate(cluster=cluster)

    inference_params = _num_params(start_model)
    report["inference_params"] = inference_params
    report["domain_train_tokens"] = len(train_blocks) * block_size
    report["domain_eval_tokens"] = len(eval_blocks) * block_size
    report["ppl_before"] = block_perplexity(start_model, eval_blocks, batch_size=batch_size)

    steps_done = train_tokens = 0
    # Step 0 is a candidate of the early stopping too: a fine-tune that only hurts keeps the starting weights.
    start_state = {name: tensor.detach().clone() for name, tensor in start_model.state_dict().items()}
    if max_steps > 0:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        train_ds = Dataset.from_dict({"input_ids": train_blocks})
        eval_ds = Dataset.from_dict({"input_ids": eval_blocks})
        with tempfile.TemporaryDirectory(prefix="specialize-", dir=output_dir) as workdir:
            args = TrainingArguments(
                output_dir=workdir,
                max_steps=max_steps,
                per_device_train_batch_size=batch_size,
                per_device_eval_batch_size=batch_size,
                learning_rate=learning_rate,
                lr_scheduler_type="constant_with_warmup",
                warmup_steps=min(10, max_steps // 10),
                max_grad_norm=5.0,
                eval_strategy="steps",
                eval_steps=eval_steps,
                save_strategy="steps",
                save_steps=eval_steps,
                save_total_limit=2,
                save_only_model=True,
                load_best_model_at_end=True,
                metric_for_best_model="eval_loss",
                greater_is_better=False,
                logging_strategy="no",
                report_to=[],
                seed=seed,
                # the tokens actually trained on: an epoch's last batch holds the remainder rows, not batch_size
                include_num_input_tokens_seen="all",
            )
            common = dict(
                model=start_model,
                args=args,
                train_dataset=train_ds,
                eval_dataset=eval_ds,
                data_collator=SpecialistCollator(pad_id),
                callbacks=[EarlyStoppingCallback(early_stopping_patience=early_stopping_patience)],
            )
            if teacher is not None:
                trainer = DistillationTrainer(**common, teacher_model=teacher, alpha=distillation_alpha,
                                              temperature=distillation_temperature)
                report["teacher_params"] = _num_params(teacher)
            else:
                trainer = Trainer(**common)
            output = trainer.train()
            steps_done, train_tokens = output.global_step, int(trainer.state.num_input_tokens_seen)
            report["best_step"] = (
                int(trainer.state.best_model_checkpoint.rsplit("-", 1)[-1])
                if trainer.state.best_model_checkpoint else steps_done
            )
            start_model = trainer.model
    start_model.eval()
    report["ppl_after"] = block_perplexity(start_model, eval_blocks, batch_size=batch_size)
    report["kept_start_weights"] = bool(report["ppl_after"] > report["ppl_before"])
    if report["kept_start_weights"]:
        start_model.load_state_dict(start_state)
        report["ppl_after"], report["best_step"] = report["ppl_before"], 0
    num_evals = steps_done // eval_steps + 2 if steps_done else 2
    flops["finetune"] = 6.0 * inference_params * train_tokens
    if teacher is not None:
        flops["finetune"] += 2.0 * _num_params(teacher) * train_tokens
    flops["evaluation"] = 2.0 * inference_params * len(eval_blocks) * block_size * num_evals
    flops["total"] = flops["selection"] + flops["finetune"] + flops["evaluation"]
    report.update(finetune_steps=steps_done, train_tokens=train_tokens, flops=flops,
                  seconds=time.perf_counter() - started)
    return SpecializationResult(model=start_model, report=report)
