"""Continual pre-training of a Llama checkpoint into an AnchorLlama (AnLLM-EP or AnLLM-AC) with the Trainer.

Used by ``examples/train_anchor.py`` (CLI, ``accelerate launch``-able) and the demo. One right-truncated document
per example, right padding, loss on every real token including anchors (the paper's layout); EP keeps the text
as is, AC inserts ``<AC>`` after every sentence and initialises its embedding from ``.``. Optional PEFT LoRA (in AC
mode the embedding and LM head are trained fully too, so the new row learns). Resumes from the newest
``checkpoint-*`` in ``output_dir``. The final model (LoRA merged) and tokenizer are written atomically to
``<output_dir>/final``. Not imported by the modeling files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer, Trainer, TrainingArguments, set_seed

from ..data import load_text_dataset, local_path
from ..eval.perplexity import rows_nll
from ..io_utils import atomic_dir, check_writable
from ..train.run_dir import (FingerprintCallback, check_schedule, guarded_run, run_fingerprint, run_training,
                             weights_fingerprint, write_fingerprint)
from .anchor_data import AnchorDataCollator, tokenize_function
from ..anchor.modeling_anchor_llama import AnchorLlamaForCausalLM
from ..anchor.tokens_anchor import DEFAULT_ANCHOR_TOKEN, add_anchor_token, find_endpoint_token_ids

FINAL_DIRNAME = "final"


@dataclass
class AnchorTrainArguments:
    """What to convert and train on (optimisation settings are ``TrainingArguments``)."""

    base_model: str = field(metadata={"help": "Folder of a LlamaForCausalLM checkpoint and its tokenizer."})
    data_files: list[str] = field(default_factory=list, metadata={"help": "Local json/jsonl(.gz) files, 'text' column."})
    validation_files: list[str] = field(default_factory=list, metadata={"help": "Held-out files evaluated at the end."})
    text_column: str = field(default="text", metadata={"help": "Column holding the documents."})
    anchor_mode: str = field(default="ep", metadata={
        "help": "'ep' (endpoint tokens), 'ac' (insert <AC>) or 'none' (no anchors: plain causal continued "
                "pre-training through the same pipeline, the baseline for the anchor runs)."})
    endpoints: list[str] | None = field(default=None, metadata={
        "help": "EP: sentence-ending strings whose tokens become anchors (default: '.' for exact/stripped matching, "
                "'. ! ? \\n' for suffix)."})
    endpoint_match: str = field(default="exact", metadata={
        "help": "EP: 'exact' (the paper: the bare '.' token), 'stripped', or 'suffix' (alias 'endswith')."})
    anchor_token: str = field(default=DEFAULT_ANCHOR_TOKEN, metadata={"help": "AC: the anchor token text."})
    ac_init: str = field(default=".", metadata={"help": "AC: token whose embedding initialises <AC>, or 'mean'."})
    max_length: int = field(default=512, metadata={"help": "Tokens per document (right-truncated)."})
    max_documents: int | None = field(default=None, metadata={"help": "Use only the first N documents."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], metadata={"help": "LoRA target modules."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start fresh when output_dir holds checkpoints or a final model of a different run (they are "
                "deleted); without it such a dir is refused."})


def _load_texts(files: list[str], column: str, limit: int | None):
    if not files:
        raise ValueError("no data files given (--data_files)")
    dataset = load_text_dataset(list(files), text_column=column)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset


def build_anchor_model(args: AnchorTrainArguments):
    """``(model, tokenizer)``: the base Llama loaded as AnchorLlama with EP anchors or a new ``<AC>`` token."""
    tokenizer = AutoTokenizer.from_pretrained(local_path(args.base_model, "base model folder"))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if args.anchor_mode == "ep":
        anchor_ids = find_endpoint_token_ids(
            tokenizer, None if args.endpoints is None else tuple(args.endpoints), match=args.endpoint_match
        )
        model = AnchorLlamaForCausalLM.from_pretrained(
            args.base_model, anchor_token_ids=anchor_ids, anchor_mode="ep", pad_token_id=tokenizer.pad_token_id
        )
    elif args.anchor_mode == "none":
        model = AnchorLlamaForCausalLM.from_pretrained(
            args.base_model, anchor_token_ids=[], anchor_mode="ep", pad_token_id=tokenizer.pad_token_id
        )
    elif args.anchor_mode == "ac":
        model = AnchorLlamaForCausalLM.from_pretrained(
            args.base_model, anchor_token_ids=[], pad_token_id=tokenizer.pad_token_id
        )
        add_anchor_token(model, tokenizer, args.anchor_token, init_from=args.ac_init)
    else:
        raise ValueError(f"anchor_mode must be 'ep', 'ac' or 'none', got {args.anchor_mode!r}")
    return model, tokenizer


def run_anchor_training(args: AnchorTrainArguments, training_args: TrainingArguments) -> Path:
    """Train and return ``<output_dir>/final``."""
    check_schedule(training_args, max_documents=args.max_documents)
    if args.max_length < 2:
        raise ValueError(f"--max_length must be at least 2 tokens, got {args.max_length}")
    check_writable(training_args.output_dir)
    set_seed(training_args.seed)
    model, tokenizer = build_anchor_model(args)
    fingerprint = run_fingerprint(
        model_config=model.config, tokenizer=tokenizer, training_args=training_args, data_files=args.data_files,
        script="train_anchor", text_column=args.text_column, max_length=args.max_length,
        max_documents=args.max_documents, anchor_mode=args.anchor_mode,
        base_weights=weights_fingerprint(args.base_model),
        lora=[args.lora_r, args.lora_alpha, sorted(args.lora_target_modules)] if args.lora_r > 0 else None,
    )
    with guarded_run(training_args, fingerprint, overwrite=args.overwrite_output_dir,
                     final_dirname=FINAL_DIRNAME) as decision:
        return _train_anchor(args, training_args, model, tokenizer, fingerprint, decision.resume_from)


def _train_anchor(args, training_args, model, tokenizer, fingerprint: dict, resume_from: str | None) -> Path:
    anchor_id = model.config.anchor_token_ids[0] if args.anchor_mode == "ac" else None
    data_mode = "ac" if args.anchor_mode == "ac" else "ep"  # 'none' uses the text as is, like EP
    tokenize = tokenize_function(tokenizer, data_mode, anchor_id, args.max_length, args.text_column)
    with training_args.main_process_first(desc="tokenize"):
        raw = _load_texts(args.data_files, args.text_column, args.max_documents)
        train_set = raw.map(tokenize, batched=True, remove_columns=raw.column_names)
        train_set = train_set.filter(lambda row: len(row["input_ids"]) > 1)
        eval_set = None
        if args.validation_files:
            eval_raw = _load_texts(args.validation_files, args.text_column, None)
            eval_set = eval_raw.map(tokenize, batched=True, remove_columns=eval_raw.column_names)
            eval_set = eval_set.filter(lambda row: len(row["input_ids"]) > 1)
    if len(train_set) == 0:
        raise ValueError("the training data holds no document with 2+ tokens")

    if args.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        # The new <AC> row must learn: in AC mode the embeddings and the LM head train fully. A tied base
        # (tie_word_embeddings, e.g. Llama 3.2 1B) trains its one matrix, tied through PEFT: listing lm_head too, or
        # leaving ensure_weight_tying off, trained two copies, and PEFT 0.18 then kept the merged config tied, so a
        # later resize_token_embeddings re-tied them and silently dropped the trained head.
        tied = bool(model.config.tie_word_embeddings)
        trained_fully = None  # EP and "none": the adapters alone
        if args.anchor_mode == "ac":
            trained_fully = ["embed_tokens"] if tied else ["embed_tokens", "lm_head"]
        lora = LoraConfig(
            r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=list(args.lora_target_modules),
            task_type="CAUSAL_LM", modules_to_save=trained_fully,
            ensure_weight_tying=trained_fully is not None and tied,
        )
        model = get_peft_model(model, lora)

    training_args.include_num_input_tokens_seen = "non_padding"  # documents are padded per batch: count real tokens
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=AnchorDataCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[FingerprintCallback(fingerprint)],
    )
    output_dir = Path(training_args.output_dir)
    run_training(trainer, resume_from)
    metrics = {
        "anchor_mode": args.anchor_mode, "anchor_token_ids": list(model.config.anchor_token_ids),
        "documents": len(train_set), "steps": trainer.state.global_step,
        "train_tokens": int(trainer.state.num_input_tokens_seen),
        "train_losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "base_model": args.base_model, "data_files": [Path(f).name for f in args.data_files],
        "seed": training_args.seed, "learning_rate": training_args.learning_rate, "max_length": args.max_length,
        "lora_r": args.lora_r, "resumed_from": resume_from,
    }
    if eval_set is not None:
        metrics.update(trainer.evaluate())
        if trainer.is_world_process_zero():
            # Token-weighted over the documents (Trainer's eval_loss weights each batch's mean by its rows, which
            # is not the per-token mean when documents differ in length); anchors are scored like any token.
            nll = rows_nll(trainer.model, eval_set["input_ids"], batch_size=training_args.per_device_eval_batch_size)
            metrics["eval_perplexity_ansan"] = nll.perplexity

    final_dir = output_dir / FINAL_DIRNAME
    if trainer.is_world_process_zero():
        final_model = trainer.model
        if args.lora_r > 0:
            final_model = final_model.merge_and_unload()
        with atomic_dir(final_dir) as tmp:
            final_model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "anchor_train_metrics.json").write_text(json.dumps(metrics, indent=2))
            write_fingerprint(tmp, fingerprint)
    trainer.accelerator.wait_for_everyone()
    return final_dir


__all__ = ["AnchorTrainArguments", "build_anchor_model", "run_anchor_training", "FINAL_DIRNAME"]


TRAIN_ANCHOR_DOC = """Continual pre-training of a Llama checkpoint into AnchorLlama (AnLLM-EP or AnLLM-AC).

    hf-efficient-lm train-anchor --base_model BASE_DIR --data_files ../shared/corpus/pydocs.train.jsonl.gz \
        --anchor_mode ac --output_dir runs/anchor-ac --max_steps 200 --per_device_train_batch_size 4 \
        --learning_rate 2e-5 --lr_scheduler_type constant_with_warmup --warmup_steps 20 [--lora_r 8]

    accelerate launch examples/train_anchor.py ...   # same arguments, several processes

Every TrainingArguments option works (--gradient_checkpointing, --bf16, --save_steps ...). A killed run resumes
from the newest checkpoint in --output_dir when its run fingerprint matches; another run's dir is refused unless
--overwrite_output_dir. The final model (LoRA merged) and tokenizer land in OUTPUT_DIR/final
and load with AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True) or after `import hf_efficient_lm`.
"""


def main(argv=None):
    """``hf-efficient-lm train-anchor`` (and ``examples/train_anchor.py``): see ``TRAIN_ANCHOR_DOC``."""
    import os

    from transformers import HfArgumentParser

    from ..train.launch import parse_launched_args

    parser = HfArgumentParser((AnchorTrainArguments, TrainingArguments), description=TRAIN_ANCHOR_DOC)
    parser.set_defaults(report_to=["none"], save_strategy="steps", save_steps=100, logging_steps=10,
                        save_total_limit=2)
    args, training_args = parse_launched_args(parser, argv)  # --use_cpu by default for CPU-only DDP
    final_dir = run_anchor_training(args, training_args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"saved AnchorLlama ({args.anchor_mode.upper()}) and tokenizer to {final_dir}")
    return final_dir
