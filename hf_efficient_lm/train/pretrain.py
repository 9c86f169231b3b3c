"""Pretraining a ``LlamaForCausalLM`` from a size preset on any text dataset (HfArgumentParser + Trainer).

Runs as a plain script or under ``accelerate launch`` (the Trainer does the distribution); resumes from the newest
``checkpoint-*`` in ``output_dir`` after a kill when the run fingerprint (model config, tokenizer, data, seed,
schedule) matches, and refuses another run's dir unless ``--overwrite_output_dir`` (see ``train.run_dir``). The final model and tokenizer are written atomically to
``<output_dir>/final``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from transformers import (
    AutoTokenizer,
    HfArgumentParser,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from ..data import check_vocab_fits, load_text_dataset, local_path, pack_dataset
from ..io_utils import atomic_dir, check_writable
from .launch import parse_launched_args
from .run_dir import (
    FingerprintCallback,
    check_schedule,
    count_trained_tokens,
    global_batch,
    guarded_run,
    run_training,
    run_fingerprint,
    write_fingerprint,
)
from .presets import LLAMA_PRESETS, llama_config_from_preset

FINAL_DIRNAME = "final"


@dataclass
class PretrainArguments:
    """What to train on and what to train (the optimisation settings are ``TrainingArguments``)."""

    tokenizer: str = field(metadata={"help": "Folder of a PreTrainedTokenizerFast (see `hf-efficient-lm train-tokenizer`)."})
    data_files: list[str] = field(default_factory=list, metadata={"help": "Local json/jsonl(.gz)/txt/csv/parquet training files."})
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset name instead of data_files (needs network)."})
    text_column: str = field(default="text", metadata={"help": "Column that holds the documents."})
    validation_files: list[str] = field(default_factory=list, metadata={"help": "Held-out files evaluated at the end."})
    preset: str = field(default="tiny", metadata={"help": f"Model size: one of {sorted(LLAMA_PRESETS)}."})
    block_size: int = field(default=256, metadata={"help": "Tokens per packed training block."})
    max_train_tokens: int | None = field(
        default=None, metadata={"help": "Token budget: sets max_steps so that at least this many tokens are trained (instead of "
                                  "--max_steps)."}
    )
    max_documents: int | None = field(default=None, metadata={"help": "Use only the first N documents (quick runs)."})
    max_position_embeddings: int = field(
        default=2048, metadata={"help": "Longest sequence the model supports; block_size may not exceed it."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start fresh when output_dir holds checkpoints or a final model of a "
                                         "different run (they are deleted); without it such a dir is refused."}
    )


def _refuse_other_model(final_dir: Path, config) -> None:
    """An output dir that already holds a different model is a mistake, not something to silently overwrite."""
    existing = final_dir / "config.json"
    if not existing.exists():
        return
    saved = json.loads(existing.read_text())
    keys = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
    wanted = config.to_dict()
    differing = {k: (saved.get(k), wanted.get(k)) for k in keys if saved.get(k) != wanted.get(k)}
    if differing:
        raise FileExistsError(
            f"{final_dir} holds another model (saved vs requested: {differing}); choose another output_dir or "
            "pass --overwrite_output_dir"
        )


def check_pretrain_args(args: PretrainArguments, training_args: TrainingArguments) -> None:
    """Numbers that would silently do something else (0 steps -> 1 step, a block longer than the model) or hang."""
    check_schedule(training_args, max_train_tokens=args.max_train_tokens, max_documents=args.max_documents)
    if args.max_position_embeddings < 2:
        raise ValueError(f"--max_position_embeddings must be at least 2, got {args.max_position_embeddings}")
    if not 2 <= args.block_size <= args.max_position_embeddings:
        raise ValueError(
            f"--block_size must be between 2 and max_position_embeddings ({args.max_position_embeddings}), got "
            f"{args.block_size}; raise --max_position_embeddings explicitly for longer blocks"
        )
    if not args.data_files and not args.dataset_name:
        raise ValueError("pass --data_files (local files) or --dataset_name (a Hub dataset)")


def run_pretrain(args: PretrainArguments, training_args: TrainingArguments) -> Path:
    """Train and return the folder of the final model (``<output_dir>/final``)."""
    check_pretrain_args(args, training_args)
    output_dir = Path(training_args.output_dir)
    check_writable(output_dir)
    set_seed(training_args.seed)
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(local_path(args.tokenizer, "tokenizer folder"))
    config = llama_config_from_preset(
        args.preset,
        vocab_size=len(tokenizer),
        max_position_embeddings=args.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    check_vocab_fits(tokenizer, config.vocab_size)
    final_dir = output_dir / FINAL_DIRNAME
    if not args.overwrite_output_dir:
        _refuse_other_model(final_dir, config)
    fingerprint = run_fingerprint(
        model_config=config, tokenizer=tokenizer, training_args=training_args, data_files=args.data_files,
        dataset_name=args.dataset_name, text_column=args.text_column, block_size=args.block_size,
        max_documents=args.max_documents, script="pretrain",
    )
    with guarded_run(training_args, fingerprint, overwrite=args.overwrite_output_dir,
                     final_dirname=FINAL_DIRNAME) as decision:
        return _train(args, training_args, tokenizer, config, fingerprint, decision.resume_from)


def _train(args: PretrainArguments, training_args: TrainingArguments, tokenizer, config, fingerprint: dict,
           resume_from: str | None) -> Path:
    final_dir = Path(training_args.output_dir) / FINAL_DIRNAME
    with training_args.main_process_first(desc="load and pack"):
        raw = load_text_dataset(args.data_files or None, dataset_name=args.dataset_name, text_column=args.text_column)
        if args.max_documents is not None:
            raw = raw.select(range(min(args.max_documents, len(raw))))
        train_set = pack_dataset(raw, tokenizer, args.block_size, text_column=args.text_column)
        eval_set = None
        if args.validation_files:
            eval_raw = load_text_dataset(args.validation_files, text_column=args.text_column)
            eval_set = pack_dataset(eval_raw, tokenizer, args.block_size, text_column=args.text_column)
    if len(train_set) == 0:
        raise ValueError(f"the training data gives no full block of {args.block_size} tokens; lower --block_size")
    count_trained_tokens(training_args, args.max_train_tokens, args.block_size, num_rows=len(train_set))

    model = LlamaForCausalLM(config)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                      data_collator=default_data_collator, processing_class=tokenizer,
                      callbacks=[FingerprintCallback(fingerprint)])
    run_training(trainer, resume_from)
    metrics = {
        "train_blocks": len(train_set), "block_size": args.block_size, "preset": args.preset,
        "parameters": sum(p.numel() for p in model.parameters()), "world_size": training_args.world_size,
        "global_batch": global_batch(training_args), "steps": trainer.state.global_step,
        "train_tokens": int(trainer.state.num_input_tokens_seen),
        "train_losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "data_files": [Path(f).name for f in args.data_files], "dataset_name": args.dataset_name,
        "seed": training_args.seed, "learning_rate": training_args.learning_rate, "resumed_from": resume_from,
    }
    if eval_set is not None:
        eval_metrics = trainer.evaluate()
        metrics.update(eval_metrics)
        metrics["eval_perplexity"] = math.exp(eval_metrics["eval_loss"])

    if trainer.is_world_process_zero():
        with atomic_dir(final_dir) as tmp:
            trainer.model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2))
            write_fingerprint(tmp, fingerprint)
    trainer.accelerator.wait_for_everyone()
    return final_dir


def parse_pretrain_args(argv: list[str] | None = None) -> tuple[PretrainArguments, TrainingArguments]:
    parser = HfArgumentParser((PretrainArguments, TrainingArguments), description=__doc__)
    parser.set_defaults(report_to=["none"], save_strategy="steps", save_steps=200, logging_steps=20)
    args, training_args = parse_launched_args(parser, argv)
    return args, training_args


def main(argv: list[str] | None = None) -> Path:
    args, training_args = parse_pretrain_args(argv)
    final_dir = run_pretrain(args, training_args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"saved model and tokenizer to {final_dir}")
    return final_dir


if __name__ == "__main__":
    import sys

    from ..cli import run_cli

    sys.exit(run_cli(main))
