"""BLT training (not carried by checkpoints): ``hf-efficient-lm train-entropy`` and ``hf-efficient-lm train-blt``.

The examples ``examples/train_entropy_model.py`` and ``examples/train_blt.py`` call these mains.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, set_seed

from ..blt import BLTEntropyConfig, BLTEntropyModel, BLTForCausalLM, BLTTokenizer
from ..blt.tokenization_blt_lm import EOS_ID
from .blt_data import (
    BLTDataCollator,
    add_patch_lengths_column,
    byte_dataset,
    calibrate_threshold,
    pack_texts,
    pad_right,
    patch_packed_dataset,
    row_entropies,
    rows_bits_per_byte,
)
from .blt_flops import blt_flops_per_byte
from ..cli import normalize_option_names
from ..data import cache_dir, corpus_dir, read_texts
from ..io_utils import atomic_dir, check_writable
from ..train.launch import check_world_size
from ..train.run_dir import run_fingerprint, train_guarded, weights_fingerprint
from ..train.presets import BLT_PRESETS, blt_config_for

DEFAULT_CORPUS = corpus_dir()
DEFAULT_ENTROPY_MODEL = str(cache_dir("blt", "entropy"))
CALIBRATION_ROWS = 256  # rows whose entropies calibrate the threshold (~128K bytes at 512-byte rows)
# command-line option -> BLT_PRESETS key
BLT_SIZE_OPTIONS = {"local-hidden": "local", "latent-hidden": "latent", "latent-layers": "latent_layers",
                    "decoder-layers": "decoder_layers", "window": "window", "hash-buckets": "hash_buckets"}

TRAIN_ENTROPY_DOC = """Train BLT's entropy model (a small causal byte LM with sliding-window attention) on the bytes of any text dataset
with the Hugging Face Trainer, report validation bits per byte, and save it (``BLTEntropyModel.from_pretrained``).

    nice -n 10 hf-efficient-lm train-entropy --max-steps 300 \
        --output-dir ~/.cache/hf_efficient_lm/blt/entropy

Defaults read the project corpus (../shared/corpus/*.train.jsonl.gz); ``--train-files`` takes any local
json/jsonl(.gz)/txt/csv/parquet files with a ``text`` column.
"""

TRAIN_BLT_DOC = """Train BLT from scratch on the bytes of any text dataset with the Hugging Face Trainer.

Patch boundaries come from a trained entropy model (``hf-efficient-lm train-entropy``) whose threshold is
calibrated to ``--target-patch-size`` bytes per patch; patch lengths are precomputed as a dataset column so the
training step does not run the entropy model. Prints FLOPs per byte (and the training FLOPs spent) and evaluates
bits per byte per domain with in-forward patching (the inference path).

    nice -n 10 hf-efficient-lm train-blt --entropy-model ~/.cache/hf_efficient_lm/blt/entropy --max-steps 200

``--no-pack`` keeps one document per row (its first ``--seq-len`` bytes) instead of packing; the collator then
right-pads each batch (attention mask 0 and labels -100 on padding, which leaves every real byte's logits unchanged).

Meta's recipe (docs/blt.md, "Meta's recipe options"): ``--patches-per-row K`` packs K patches per row (each document
patched alone, rows of varying byte length, ``--max-row-bytes`` caps them) instead of ``--seq-len`` bytes;
``--document-mask`` sets ``BLTConfig.document_mask`` (no attention, patch or n-gram across an EOS);
``--patching-mode entropy_combined --threshold-add X`` uses Meta's combined rule (the global threshold is calibrated).

Runs under ``accelerate launch`` unchanged (the Trainer handles the distribution); on CPUs that is DDP over gloo:

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        -m hf_efficient_lm.cli train-blt --batch-size 4 ...

``--batch-size`` is per process. Rank 0 writes the model, the tokenizer and ``train_blt_metrics.json`` (world size,
global batch, training losses, bits/byte) to ``--output-dir``.
"""


def add_blt_size_options(parser: argparse.ArgumentParser, preset: str = "small",
                         keys: tuple[str, ...] | None = None) -> None:
    """``--local-hidden --latent-hidden --latent-layers --decoder-layers --window --hash-buckets`` (only those of
    ``keys`` when given, e.g. the sizes a reference model takes) with the defaults of ``BLT_PRESETS[preset]``;
    :func:`parsed_blt_sizes` reads them back, :func:`blt_size_config` turns them into a ``BLTConfig``."""
    size = BLT_PRESETS[preset]
    unknown = sorted(set(keys or ()) - set(size))
    if unknown:
        raise ValueError(f"unknown BLT size key(s) {unknown}; known: {sorted(size)}")
    for option, key in BLT_SIZE_OPTIONS.items():
        if keys is None or key in keys:
            parser.add_argument(f"--{option}", type=int, default=size[key], help=f"BLT size {key!r} (default {size[key]})")


def parsed_blt_sizes(args: argparse.Namespace) -> dict[str, int]:
    """The ``BLT_PRESETS`` keys (``local``, ``latent``, ...) of the options :func:`add_blt_size_options` added."""
    dests = {key: option.replace("-", "_") for option, key in BLT_SIZE_OPTIONS.items()}
    return {key: getattr(args, dest) for key, dest in dests.items() if hasattr(args, dest)}


def blt_size_config(args: argparse.Namespace, entropy_model, threshold: float, mode: str, **options):
    """``blt_config_for`` with the sizes parsed by :func:`add_blt_size_options` (``options``: ``threshold_add``,
    ``document_mask``)."""
    return blt_config_for(entropy_model, threshold=threshold, mode=mode, **options, **parsed_blt_sizes(args))


def _add_byte_training_options(parser: argparse.ArgumentParser, *, output_dir: str, output_help: str | None,
                               seq_len: int, batch_size: int, max_steps: int) -> None:
    """The options ``train-entropy`` and ``train-blt`` share: the text files read as bytes, the output folder, the
    row length, batch, steps, learning rate, training-text budget, torch threads and seed (defaults per command)."""
    parser.add_argument("--train-files", nargs="*", default=sorted(glob.glob(str(DEFAULT_CORPUS / "*.train.jsonl.gz"))))
    parser.add_argument("--valid-files", nargs="*", default=sorted(glob.glob(str(DEFAULT_CORPUS / "*.valid.jsonl.gz"))))
    parser.add_argument("--output-dir", default=output_dir, help=output_help)
    parser.add_argument("--seq-len", type=int, default=seq_len, help="bytes per training row")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="rows per step and process")
    parser.add_argument("--max-steps", type=int, default=max_steps)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--limit-chars", type=int, default=4_000_000,
                        help="read at most this many training characters, split evenly over the training files")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="initial weights and data order")
    parser.add_argument("--save-steps", type=int, default=100,
                        help="checkpoint every N steps into OUTPUT_DIR/trainer (removed when training ends); a killed "
                             "run started again with the same options resumes from its newest whole checkpoint. 0: none")
    parser.add_argument("--overwrite-output-dir", action="store_true",
                        help="start fresh over the checkpoints of a run with other options instead of refusing")


def _trainer_args(args, **kwargs) -> TrainingArguments:
    """The Trainer settings of both commands: checkpoints every ``--save-steps`` in ``OUTPUT_DIR/trainer``."""
    return TrainingArguments(
        output_dir=os.path.join(args.output_dir, "trainer"), max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_steps=min(50, args.max_steps // 10), lr_scheduler_type="cosine", weight_decay=0.1,
        logging_steps=max(1, args.max_steps // 10), save_strategy="steps" if args.save_steps > 0 else "no",
        save_steps=max(1, args.save_steps), report_to=[], use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0, seed=args.seed, **kwargs,
    )


def _train(trainer: Trainer, args, model_config, **settings) -> None:
    """``trainer.train()`` under the run guard of ``pretrain`` / ``train-anchor``: every checkpoint carries the run's
    fingerprint (model config, data file digests, seed, schedule, ``settings``), a run with other options is refused
    (or, with ``--overwrite-output-dir``, replaced) and a killed one resumes from its newest whole checkpoint."""
    fingerprint = run_fingerprint(model_config=model_config, tokenizer=None, training_args=trainer.args,
                                  data_files=args.train_files, seq_len=args.seq_len, limit_chars=args.limit_chars,
                                  **settings)
    train_guarded(trainer, fingerprint, overwrite=args.overwrite_output_dir)


def train_entropy_main(argv=None) -> str:
    """``hf-efficient-lm train-entropy``: see the module docstring (and ``--help``)."""
    parser = argparse.ArgumentParser(prog="hf-efficient-lm train-entropy", description=TRAIN_ENTROPY_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_byte_training_options(parser, output_dir=DEFAULT_ENTROPY_MODEL, output_help=None, seq_len=256, batch_size=16,
                               max_steps=300)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--window", type=int, default=256, help="sliding window (bytes)")
    args = parser.parse_args(normalize_option_names(list(sys.argv[1:] if argv is None else argv)))
    torch.set_num_threads(args.threads)
    if not args.train_files:
        parser.error("no training files found; pass --train-files")

    check_writable(args.output_dir, replace=True)
    train = byte_dataset(read_texts(args.train_files, args.limit_chars, per_file=True), args.seq_len)
    valid = byte_dataset(read_texts(args.valid_files, 200_000, per_file=True), args.seq_len) if args.valid_files else None
    config = BLTEntropyConfig(
        hidden_size=args.hidden_size, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=int(8 * args.hidden_size / 3), sliding_window=args.window, max_position_embeddings=8192,
    )
    set_seed(args.seed)
    model = BLTEntropyModel(config)
    print(f"entropy model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"{len(train)} training rows of {args.seq_len} bytes")
    trainer = Trainer(model=model, args=_trainer_args(args), train_dataset=train, data_collator=BLTDataCollator())
    _train(trainer, args, config)
    line = "entropy model trained"
    if valid is not None and len(valid):
        bpb = rows_bits_per_byte(model, valid["input_ids"], batch_size=8)
        line = f"entropy model: validation {bpb:.3f} bits/byte after {args.max_steps} steps"
    with atomic_dir(args.output_dir) as tmp:
        model.save_pretrained(tmp)
        BLTTokenizer().save_pretrained(tmp)
    print(line)
    print(f"saved to {args.output_dir}")
    return line



def train_blt_main(argv=None) -> str:
    """``hf-efficient-lm train-blt``: see the module docstring (and ``--help``)."""
    parser = argparse.ArgumentParser(prog="hf-efficient-lm train-blt", description=TRAIN_BLT_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_byte_training_options(parser, output_dir=str(cache_dir("blt", "model")), seq_len=512, batch_size=8,
                               max_steps=200, output_help="replaced as a whole (atomically) by rank 0 when training ends")
    parser.add_argument("--entropy-model", default=None,
                        help=f"folder of a trained BLTEntropyModel (an error if it is not one). Default: "
                             f"{DEFAULT_ENTROPY_MODEL} if it exists, else space patching (said in the log)")
    parser.add_argument("--space-patching", action="store_true",
                        help="patch at spaces instead of with an entropy model")
    parser.add_argument("--target-patch-size", type=float, default=4.5)
    parser.add_argument("--patching-mode", default="entropy", choices=["entropy", "entropy_monotonic", "entropy_combined"],
                        help="entropy rule (with an entropy model); its threshold is calibrated to --target-patch-size")
    parser.add_argument("--threshold-add", type=float, default=0.0,
                        help="difference threshold of --patching-mode entropy_combined (Meta's threshold_add)")
    parser.add_argument("--document-mask", action="store_true",
                        help="BLTConfig.document_mask: no attention, patch or n-gram across an EOS (Meta's training masks)")
    parser.add_argument("--patches-per-row", type=int, default=None,
                        help="pack this many patches per row (Meta's packing by patch count) instead of --seq-len bytes")
    parser.add_argument("--max-row-bytes", type=int, default=None, help="with --patches-per-row: cut longer rows here")
    add_blt_size_options(parser)
    parser.add_argument("--no-pack", action="store_true",
                        help="one document per row (first --seq-len bytes), right-padded per batch, instead of packing")
    parser.add_argument("--eval-rows", type=int, default=16, help="validation rows per domain")
    args = parser.parse_args(normalize_option_names(list(sys.argv[1:] if argv is None else argv)))
    if args.entropy_model is not None and args.space_patching:
        parser.error("pass --entropy-model or --space-patching, not both")
    if args.entropy_model is not None and not os.path.isfile(os.path.join(args.entropy_model, "config.json")):
        raise FileNotFoundError(f"--entropy-model {args.entropy_model} is not a saved BLTEntropyModel folder (no "
                                "config.json); train one with `hf-efficient-lm train-entropy` or pass --space-patching")
    if args.entropy_model is None and not args.space_patching and os.path.isfile(
            os.path.join(DEFAULT_ENTROPY_MODEL, "config.json")):
        args.entropy_model = DEFAULT_ENTROPY_MODEL
    for name in ("seq_len", "batch_size", "max_steps", "eval_rows", "threads", "limit_chars"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.patches_per_row is not None and (args.patches_per_row < 2 or args.no_pack):
        parser.error(f"--patches-per-row must be >= 2 and excludes --no-pack, got {args.patches_per_row}")
    if not args.train_files:
        parser.error(f"no training files: pass --train-files (default: {DEFAULT_CORPUS}/*.train.jsonl.gz)")
    if args.threshold_add and args.patching_mode != "entropy_combined":
        parser.error("--threshold-add is the difference threshold of --patching-mode entropy_combined only")
    if args.max_row_bytes is not None and args.patches_per_row is None:
        parser.error("--max-row-bytes cuts the rows of --patches-per-row packing only")
    check_writable(args.output_dir, replace=True)
    torch.set_num_threads(args.threads)
    # Every process builds the same model: DDP broadcasts rank 0's weights anyway, but a one-process run with the
    # same seed then starts from the same weights as a multi-process one.
    set_seed(args.seed)

    texts = read_texts(args.train_files, args.limit_chars, per_file=True)
    train = byte_dataset(texts, args.seq_len, pack=not args.no_pack)
    if len(train) == 0:
        raise ValueError(f"the training files give no row of {args.seq_len} bytes; lower --seq-len or use --no-pack")
    entropy_model = None
    threshold_add = args.threshold_add if args.patching_mode == "entropy_combined" else None
    if args.entropy_model is not None:
        entropy_model = BLTEntropyModel.from_pretrained(args.entropy_model).eval()
        # a seeded sample spread over the whole training set, read as the patch-length column reads its rows (the
        # first 32 rows were ~16 KB of the first file: 4.18 bytes/patch on the whole set for a 4.5 target)
        picked = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[:CALIBRATION_ROWS]
        sample, sample_mask = pad_right(train.select(sorted(picked.tolist()))["input_ids"])
        entropies = row_entropies(entropy_model, sample, sample_mask, eos_id=EOS_ID if args.document_mask else None)
        mode = args.patching_mode
        threshold = calibrate_threshold(entropies, args.target_patch_size, monotonic=mode == "entropy_monotonic",
                                        attention_mask=sample_mask, threshold_add=threshold_add)
    else:
        why = "--space-patching" if args.space_patching else f"no entropy model at {DEFAULT_ENTROPY_MODEL}"
        print(f"{why}: using space patching")
        threshold, mode, threshold_add = 0.0, "space", None
    config = blt_size_config(args, entropy_model, threshold, mode, threshold_add=threshold_add,
                             document_mask=args.document_mask)
    model = BLTForCausalLM(config)
    if entropy_model is not None:
        model.model.entropy_model.load_state_dict(entropy_model.state_dict())
    rule = dict(threshold_add=threshold_add, meta_start=config.patching_meta_start)
    if args.patches_per_row is not None:  # every document patched alone: the lengths sum to each row's bytes
        train = patch_packed_dataset(texts, args.patches_per_row, entropy_model, mode, threshold, args.max_row_bytes,
                                     **rule)
        if len(train) == 0:
            raise ValueError(f"the training files give no row of {args.patches_per_row} patches")
        extra = 0
    else:
        eos = config.eos_token_id if args.document_mask else None
        train = add_patch_lengths_column(train, entropy_model, mode, threshold, eos_id=eos, **rule)
        extra = len(train)  # Meta's include_next_token lengths: each row's bytes plus its next-byte slot
    patches = sum(len(p) for p in train["patch_lengths"])
    row_bytes = sum(len(r) for r in train["input_ids"])
    mean_patch = (row_bytes + extra) / patches
    context = args.seq_len if args.patches_per_row is None else round(row_bytes / len(train))
    flops = blt_flops_per_byte(config, mean_patch, context)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"BLT: {trainable / 1e6:.2f}M trainable params; {mode} patching, threshold {threshold:.3f}, "
          f"{mean_patch:.2f} bytes/patch; forward FLOPs/byte {flops['total'] / 1e6:.2f}M "
          f"(latent {flops['latent'] / 1e6:.2f}M, entropy model {flops['entropy_model'] / 1e6:.2f}M)")

    trainer = Trainer(
        model=model,
        # Every trainable parameter is used at every step, and DDP never registers the frozen entropy model
        # (requires_grad=False), so the unused-parameter search the Trainer turns on by default is not needed.
        args=_trainer_args(args, max_grad_norm=1.0, ddp_find_unused_parameters=False),
        train_dataset=train,
        data_collator=BLTDataCollator(),
    )
    check_world_size(trainer.args.world_size)
    _train(trainer, args, config, pack=not args.no_pack, patches_per_row=args.patches_per_row,
           max_row_bytes=args.max_row_bytes, target_patch_size=args.target_patch_size,
           entropy_weights=weights_fingerprint(args.entropy_model) if args.entropy_model else None)
    global_batch = args.batch_size * trainer.args.world_size
    bytes_seen = trainer.state.global_step * global_batch * row_bytes / len(train)
    train_flops = 3 * (flops["total"] - flops["entropy_model"]) * bytes_seen
    results = {}
    for f in args.valid_files:
        domain = Path(f).name.split(".")[0]
        rows = pack_texts(read_texts([f], 200_000), args.seq_len)[: args.eval_rows]
        if rows:
            results[domain] = rows_bits_per_byte(model, rows, batch_size=4)
    summary = ", ".join(f"{d} {v:.3f}" for d, v in results.items())
    line = (f"BLT after {trainer.state.global_step} steps ({bytes_seen / 1e6:.1f}M bytes, {train_flops:.2e} training "
            f"FLOPs): bits/byte {summary}")
    metrics = {
        "world_size": trainer.args.world_size, "global_batch": global_batch, "steps": trainer.state.global_step,
        "train_rows": len(train), "patching_mode": mode, "threshold": threshold, "threshold_add": threshold_add, "mean_patch_size": mean_patch,
        "document_mask": args.document_mask, "patches_per_row": args.patches_per_row,
        "train_bytes": bytes_seen, "flops_per_byte": flops["total"], "train_flops": train_flops, "seed": args.seed,
        "learning_rate": args.learning_rate, "data_files": [Path(f).name for f in args.train_files],
        "train_losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "bits_per_byte": results,
    }
    if trainer.is_world_process_zero():
        with atomic_dir(args.output_dir) as tmp:
            model.save_pretrained(tmp)
            BLTTokenizer().save_pretrained(tmp)
            (tmp / "train_blt_metrics.json").write_text(json.dumps(metrics, indent=2))
        print(line)
        print(f"saved to {args.output_dir}")
    trainer.accelerator.wait_for_everyone()
    return line

