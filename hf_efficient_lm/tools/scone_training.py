"""``hf-efficient-lm train-scone``: continual pretraining of a Llama checkpoint into a SconeLlama with the Trainer,
then export the f-gram table (``examples/train_scone.py`` calls :func:`main`).

    hf-efficient-lm train-scone --base_model ~/.cache/hf_efficient_lm/base \
        --data_files ../shared/corpus/*.train.jsonl.gz --validation_files ../shared/corpus/*.valid.jsonl.gz \
        --num_fgrams 100000 --fgram_num_layers 2 --max_train_tokens 2000000 --output_dir runs/scone-5m

From scratch (the scaling study: same main-model preset and token budget as the base, plus the f-gram model):

    hf-efficient-lm train-scone --from_scratch_preset 5m --tokenizer TOK_DIR --fgram_fusion replace ...

Two CPU processes (gloo DDP; ``--use_cpu true`` is implied when several processes are launched without GPUs):

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        examples/train_scone.py --use_cpu true ...     # (an accelerate-launched script)

``--per_device_train_batch_size`` is per process. The main process prepares the data first (the others then read
the ``datasets`` cache), every process mines the same f-grams and builds the same model from ``--seed`` (DDP
broadcasts rank 0's weights anyway, but a one-process run with the doubled batch then trains identically), and
rank 0 writes ``final/``, ``table/`` and ``train_scone_metrics.json`` (world size, global batch, per-step losses).

Steps: mine (or load) the f-grams of the training data -> pack documents into blocks with EOS between them ->
pre-compute ``fgram_row``/``fgram_len`` columns (the paper's pre-scan) -> Trainer -> ``output_dir/final``
(training mode, keeps the f-gram model: new f-grams can be embedded later) -> ``output_dir/table`` (inference
mode: memory-mapped table, no f-gram model) -> held-out perplexity of the table model vs the base.
`hf-efficient-lm train-scone --help` lists every option (all of TrainingArguments too).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, HfArgumentParser, LlamaForCausalLM, Trainer, TrainingArguments
from transformers import default_data_collator, set_seed

from ..data import check_vocab_fits, load_text_dataset, local_path, pack_dataset
from ..io_utils import atomic_dir, atomic_file, check_writable
from ..scone import FgramVocab, SconeLlamaConfig, SconeLlamaForCausalLM
from ..scone.fgram_vocab_scone import INDEX_FILE
from .scone_export import export_fgram_table
from .scone_mining import add_fgram_columns, mine_fgrams
from ..train.launch import parse_launched_args
from ..train.run_dir import (
    FingerprintCallback,
    check_schedule,
    count_trained_tokens,
    global_batch,
    guarded_run,
    run_training,
    run_fingerprint,
    write_fingerprint,
)


@dataclass
class SconeTrainArguments:
    base_model: str | None = field(default=None, metadata={"help": "Llama checkpoint folder to wrap (continual pretraining)."})
    from_scratch_preset: str | None = field(default=None, metadata={"help": "Instead of base_model: train a fresh main model of this preset."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer folder (default: base_model)."})
    data_files: list[str] = field(default_factory=list, metadata={"help": "Training text files (json/jsonl(.gz)/txt/...)."})
    validation_files: list[str] = field(default_factory=list, metadata={"help": "Held-out files; perplexity per file at the end."})
    text_column: str = field(default="text")
    block_size: int = field(default=256, metadata={"help": "Tokens per packed training block."})
    max_train_tokens: int | None = field(default=None, metadata={"help": "Token budget: sets max_steps so that at least this many tokens are trained "
                                                  "(instead of --max_steps)."})
    max_documents: int | None = field(default=None, metadata={"help": "Use only the first N training documents."})
    fgram_dir: str | None = field(default=None, metadata={"help": "A mined f-gram vocabulary (hf-efficient-lm scone-mine); mined from the training data if absent."})
    num_fgrams: int = field(default=100_000, metadata={"help": "S when mining here."})
    max_fgram_len: int = field(default=5, metadata={"help": "K when mining here."})
    min_count: int = field(default=5)
    fgram_num_layers: int = field(default=2)
    fgram_hidden_size: int | None = field(default=None)
    fgram_fusion: str = field(default="gated", metadata={"help": "'gated' (zero-init, exact base at step 0) or 'replace' (paper)."})
    table_dtype: str = field(default="bfloat16", metadata={"help": "dtype of the exported table rows."})
    eval_block_size: int = field(default=256)
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start fresh when output_dir holds checkpoints or a final model of a different run (they are "
                "deleted); without it such a dir is refused."})


def build_model(args: SconeTrainArguments, vocab: FgramVocab, tokenizer) -> SconeLlamaForCausalLM:
    fgram_options = dict(fgram_num_layers=args.fgram_num_layers, fgram_hidden_size=args.fgram_hidden_size,
                         fgram_fusion=args.fgram_fusion)
    if args.base_model:
        return SconeLlamaForCausalLM.from_pretrained(args.base_model, fgram_vocab=vocab, **fgram_options)
    from ..train.presets import llama_config_from_preset

    llama = llama_config_from_preset(args.from_scratch_preset, vocab_size=len(tokenizer))
    config = SconeLlamaConfig(**llama.to_diff_dict(), num_fgrams=vocab.num_fgrams, max_fgram_len=vocab.max_len,
                              fgram_tokenizer_fingerprint=vocab.tokenizer_fingerprint, **fgram_options)
    model = SconeLlamaForCausalLM(config)
    model.set_fgram_vocab(vocab)
    return model


def parse_args(argv: list[str] | None = None) -> tuple[SconeTrainArguments, TrainingArguments]:
    parser = HfArgumentParser((SconeTrainArguments, TrainingArguments))
    parser.set_defaults(report_to=["none"])
    args, training_args = parse_launched_args(parser, argv if argv is not None else sys.argv[1:])
    if (args.base_model is None) == (args.from_scratch_preset is None):
        raise ValueError("pass exactly one of --base_model (continual pretraining) or --from_scratch_preset")
    check_schedule(training_args, max_train_tokens=args.max_train_tokens, max_documents=args.max_documents)
    if args.block_size < 2:
        raise ValueError(f"--block_size must be at least 2, got {args.block_size}")
    if args.from_scratch_preset and not args.tokenizer:
        raise ValueError("--from_scratch_preset needs --tokenizer")
    return args, training_args


def main(argv: list[str] | None = None) -> Path:
    args, training_args = parse_args(argv)
    check_writable(training_args.output_dir)
    fgram_dir = Path(args.fgram_dir) if args.fgram_dir else None
    if fgram_dir and not (fgram_dir / INDEX_FILE).exists():  # the mined vocabulary will go there
        check_writable(fgram_dir, replace=True)
        if fgram_dir.is_dir() and any(fgram_dir.iterdir()):
            raise FileExistsError(f"--fgram_dir {fgram_dir} holds other files but no f-gram vocabulary "
                                  f"({INDEX_FILE}): pass a vocabulary folder, or a new or empty one to fill")
    if args.base_model:
        args.base_model = local_path(args.base_model, "base model folder")
    tokenizer = AutoTokenizer.from_pretrained(local_path(args.tokenizer or args.base_model, "tokenizer folder"))
    with training_args.main_process_first(desc="load, pack, mine and match"):
        train = load_text_dataset(args.data_files, text_column=args.text_column)
        if args.max_documents:
            train = train.select(range(min(args.max_documents, len(train))))
        blocks = pack_dataset(train, tokenizer, args.block_size, text_column=args.text_column)
        barriers = sorted({t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
                           if t is not None})
        # (asked again here: under main_process_first the other processes load what the main one mined and saved)
        if fgram_dir and (fgram_dir / INDEX_FILE).exists():
            vocab = FgramVocab.load(fgram_dir, tokenizer=tokenizer)
        else:
            vocab = mine_fgrams(blocks, num_fgrams=args.num_fgrams, max_len=args.max_fgram_len,
                                min_count=args.min_count, barrier_ids=barriers, tokenizer=tokenizer)
            if fgram_dir and training_args.process_index == 0:  # whole or not at all; never over other files
                with atomic_dir(fgram_dir, overwrite=False) as tmp:
                    vocab.save(tmp)
        blocks = add_fgram_columns(blocks, vocab)
    print(f"f-gram vocabulary: {vocab}")

    set_seed(training_args.seed)  # the f-gram model's initial weights: the same in every process and run
    model = build_model(args, vocab, tokenizer)
    check_vocab_fits(tokenizer, model.config.vocab_size)
    count_trained_tokens(training_args, args.max_train_tokens, args.block_size, num_rows=len(blocks))
    fingerprint = run_fingerprint(
        model_config=model.config, tokenizer=tokenizer, training_args=training_args, data_files=args.data_files,
        script="train_scone", base_model=args.base_model, fgram_vocab=vocab.metadata(), block_size=args.block_size,
        max_documents=args.max_documents, text_column=args.text_column,
    )
    with guarded_run(training_args, fingerprint, overwrite=args.overwrite_output_dir, outputs=OUTPUTS) as decision:
        trainer = Trainer(model=model, args=training_args, train_dataset=blocks, data_collator=default_data_collator,
                          processing_class=tokenizer, callbacks=[FingerprintCallback(fingerprint)])  # (in checkpoints)
        run_training(trainer, decision.resume_from)
        if trainer.is_world_process_zero():
            _write_outputs(args, trainer, tokenizer, vocab, fingerprint, global_batch(training_args),
                           decision.resume_from)
        # Every process leaves together (as pretrain, train-anchor and train-blt do): one that exits while the main
        # process still writes can abort at interpreter exit with the process group alive ("terminate called without
        # an active exception", SIGABRT), and the launcher then fails the whole run.
        trainer.accelerator.wait_for_everyone()
    return Path(training_args.output_dir)


OUTPUTS = ("table", "train_scone_metrics.json", "eval_scone.json")  # what _write_outputs writes beside final/


def _write_outputs(args, trainer, tokenizer, vocab, fingerprint: dict, rows_per_step: int, resumed_from) -> None:
    """Main process: ``output_dir/final`` (training mode), ``output_dir/table`` (table mode), the metrics json and,
    with ``--validation_files``, ``eval_scone.json``."""
    out = Path(trainer.args.output_dir)
    with atomic_dir(out / "final") as tmp:
        trainer.save_model(tmp)
        tokenizer.save_pretrained(tmp)
        write_fingerprint(tmp, fingerprint)
    table_dir = export_fgram_table(trainer.model, out / "table", dtype=getattr(torch, args.table_dtype),
                                   tokenizer=tokenizer)
    print(f"wrote training-mode model to {out / 'final'} and table-mode model to {table_dir}")
    metrics = {
        "world_size": trainer.args.world_size, "global_batch": rows_per_step, "block_size": args.block_size,
        "steps": trainer.state.global_step, "num_fgrams": vocab.num_fgrams,
        "train_losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "base_model": args.base_model, "from_scratch_preset": args.from_scratch_preset,
        "data_files": [Path(f).name for f in args.data_files], "seed": trainer.args.seed,
        "learning_rate": trainer.args.learning_rate, "fgram_fusion": args.fgram_fusion,
        "fgram_num_layers": args.fgram_num_layers, "max_fgram_len": vocab.max_len,
        "train_tokens": int(trainer.state.num_input_tokens_seen),
        "resumed_from": resumed_from,
    }
    with atomic_file(out / "train_scone_metrics.json", "w") as handle:
        handle.write(json.dumps(metrics, indent=2))
    if args.validation_files:
        _evaluate(args, tokenizer, table_dir, out)
    else:  # (an earlier run's evaluation would go on this model's card)
        (out / "eval_scone.json").unlink(missing_ok=True)


def _evaluate(args, tokenizer, table_dir: Path, out: Path) -> None:
    from ..eval import evaluate_causal_lm

    scone = SconeLlamaForCausalLM.from_pretrained(table_dir).eval()
    base = LlamaForCausalLM.from_pretrained(args.base_model).eval() if args.base_model else None
    results = {}
    for path in args.validation_files:
        texts = load_text_dataset(path, text_column=args.text_column)[args.text_column]
        row = {"scone_ppl": evaluate_causal_lm(scone, tokenizer, texts, block_size=args.eval_block_size).perplexity}
        if base is not None:
            row["base_ppl"] = evaluate_causal_lm(base, tokenizer, texts, block_size=args.eval_block_size).perplexity
        results[Path(path).name] = row
        print(path, row)
    with atomic_file(out / "eval_scone.json", "w") as handle:
        handle.write(json.dumps(results, indent=2))

