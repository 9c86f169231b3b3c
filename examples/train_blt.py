"""Train BLT from scratch on the bytes of any text dataset with the Hugging Face Trainer.

Patch boundaries come from a trained entropy model (``examples/train_entropy_model.py``) whose threshold is
calibrated to ``--target-patch-size`` bytes per patch; patch lengths are precomputed as a dataset column so the
training step does not run the entropy model. Prints FLOPs per byte (and the training FLOPs spent) and evaluates
bits per byte per domain with in-forward patching (the inference path).

    nice -n 10 python examples/train_blt.py --entropy-model ~/.cache/hf_efficient_lm/blt/entropy --max-steps 200

``--no-pack`` keeps one document per row (its first ``--seq-len`` bytes) instead of packing; the collator then
right-pads each batch (attention mask 0 and labels -100 on padding, which leaves every real byte's logits unchanged).

Runs under ``accelerate launch`` unchanged (the Trainer handles the distribution); on CPUs that is DDP over gloo:

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        examples/train_blt.py --batch-size 4 ...

``--batch-size`` is per process. Rank 0 writes the model, the tokenizer and ``train_blt_metrics.json`` (world size,
global batch, training losses, bits/byte) to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, set_seed

from hf_efficient_lm.blt import BLTConfig, BLTEntropyModel, BLTForCausalLM, BLTTokenizer
from hf_efficient_lm.tools.blt_data import (
    BLTDataCollator,
    add_patch_lengths_column,
    byte_dataset,
    calibrate_threshold,
    pack_texts,
    pad_right,
)
from hf_efficient_lm.tools.blt_flops import blt_flops_per_byte
from hf_efficient_lm.cli import normalize_option_names, run_cli
from hf_efficient_lm.data import read_texts
from hf_efficient_lm.io_utils import atomic_dir, check_writable
from hf_efficient_lm.train import check_world_size

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
DEFAULT_ENTROPY_MODEL = os.path.expanduser("~/.cache/hf_efficient_lm/blt/entropy")


def blt_config_for(entropy_model: BLTEntropyModel | None, local: int, latent: int, latent_layers: int,
                   decoder_layers: int, window: int, hash_buckets: int, threshold: float, mode: str) -> BLTConfig:
    loc = dict(hidden_size=local, num_attention_heads=4, intermediate_size=int(8 * local / 3))
    kwargs = dict(
        encoder_config=dict(loc, num_hidden_layers=1),
        decoder_config=dict(loc, num_hidden_layers=decoder_layers),
        global_config=dict(hidden_size=latent, num_attention_heads=4, intermediate_size=int(8 * latent / 3),
                           num_hidden_layers=latent_layers),
        local_attention_window_len=window, encoder_hash_byte_group_vocab=hash_buckets,
        patching_mode=mode, patching_threshold=threshold,
    )
    if entropy_model is not None:
        kwargs["entropy_config"] = entropy_model.config.to_dict()
    return BLTConfig(**kwargs)


@torch.no_grad()
def bits_per_byte(model, rows: list[list[int]], batch_size: int = 4) -> float:
    """Next-byte BPB of ``rows`` with in-forward patching."""
    model.eval()
    nats, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        ids = torch.tensor(rows[i : i + batch_size], device=model.device)
        n = ids[:, 1:].numel()
        nats += float(model(ids, labels=ids).loss) * n
        count += n
    return nats / max(count, 1) / math.log(2)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-files", nargs="*", default=sorted(glob.glob(str(DEFAULT_CORPUS / "*.train.jsonl.gz"))))
    parser.add_argument("--valid-files", nargs="*", default=sorted(glob.glob(str(DEFAULT_CORPUS / "*.valid.jsonl.gz"))))
    parser.add_argument("--entropy-model", default=None,
                        help=f"folder of a trained BLTEntropyModel (an error if it is not one). Default: "
                             f"{DEFAULT_ENTROPY_MODEL} if it exists, else space patching (said in the log)")
    parser.add_argument("--space-patching", action="store_true",
                        help="patch at spaces instead of with an entropy model")
    parser.add_argument("--target-patch-size", type=float, default=4.5)
    parser.add_argument("--output-dir", default=os.path.expanduser("~/.cache/hf_efficient_lm/blt/model"),
                        help="replaced as a whole (atomically) by rank 0 when training ends")
    parser.add_argument("--local-hidden", type=int, default=128)
    parser.add_argument("--latent-hidden", type=int, default=256)
    parser.add_argument("--latent-layers", type=int, default=4)
    parser.add_argument("--decoder-layers", type=int, default=3)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--hash-buckets", type=int, default=8191)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--no-pack", action="store_true",
                        help="one document per row (first --seq-len bytes), right-padded per batch, instead of packing")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per step and process")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--limit-chars", type=int, default=4_000_000)
    parser.add_argument("--eval-rows", type=int, default=16, help="validation rows per domain")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(normalize_option_names(list(sys.argv[1:] if argv is None else argv)))
    if args.entropy_model is not None and args.space_patching:
        parser.error("pass --entropy-model or --space-patching, not both")
    if args.entropy_model is not None and not os.path.isfile(os.path.join(args.entropy_model, "config.json")):
        raise FileNotFoundError(f"--entropy-model {args.entropy_model} is not a saved BLTEntropyModel folder (no "
                                "config.json); train one with examples/train_entropy_model.py or pass --space-patching")
    if args.entropy_model is None and not args.space_patching and os.path.isfile(
            os.path.join(DEFAULT_ENTROPY_MODEL, "config.json")):
        args.entropy_model = DEFAULT_ENTROPY_MODEL
    for name in ("seq_len", "batch_size", "max_steps", "eval_rows", "threads", "limit_chars"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if not args.train_files:
        parser.error(f"no training files: pass --train-files (default: {DEFAULT_CORPUS}/*.train.jsonl.gz)")
    check_writable(args.output_dir, replace=True)
    torch.set_num_threads(args.threads)
    # Every process builds the same model: DDP broadcasts rank 0's weights anyway, but a one-process run with the
    # same seed then starts from the same weights as a multi-process one.
    set_seed(args.seed)

    texts = read_texts(args.train_files, args.limit_chars)
    train = byte_dataset(texts, args.seq_len, pack=not args.no_pack)
    if len(train) == 0:
        raise ValueError(f"the training files give no row of {args.seq_len} bytes; lower --seq-len or use --no-pack")
    entropy_model = None
    if args.entropy_model is not None:
        entropy_model = BLTEntropyModel.from_pretrained(args.entropy_model).eval()
        sample, sample_mask = pad_right(train[: min(32, len(train))]["input_ids"])
        entropies, _ = entropy_model.entropies(sample, sample_mask)
        threshold = calibrate_threshold(entropies, args.target_patch_size, attention_mask=sample_mask)
        mode = "entropy"
    else:
        why = "--space-patching" if args.space_patching else f"no entropy model at {DEFAULT_ENTROPY_MODEL}"
        print(f"{why}: using space patching")
        threshold, mode = 0.0, "space"
    config = blt_config_for(entropy_model, args.local_hidden, args.latent_hidden, args.latent_layers,
                            args.decoder_layers, args.window, args.hash_buckets, threshold, mode)
    model = BLTForCausalLM(config)
    if entropy_model is not None:
        model.model.entropy_model.load_state_dict(entropy_model.state_dict())
    train = add_patch_lengths_column(train, entropy_model, mode, threshold)
    patches = sum(len(p) for p in train["patch_lengths"])
    row_bytes = sum(len(r) for r in train["input_ids"])
    mean_patch = (row_bytes + len(train)) / patches  # lengths cover each row's bytes plus its next-byte slot
    flops = blt_flops_per_byte(config, mean_patch, args.seq_len)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"BLT: {trainable / 1e6:.2f}M trainable params; {mode} patching, threshold {threshold:.3f}, "
          f"{mean_patch:.2f} bytes/patch; forward FLOPs/byte {flops['total'] / 1e6:.2f}M "
          f"(latent {flops['latent'] / 1e6:.2f}M, entropy model {flops['entropy_model'] / 1e6:.2f}M)")

    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=os.path.join(args.output_dir, "trainer"), max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
            warmup_steps=min(50, args.max_steps // 10), lr_scheduler_type="cosine", weight_decay=0.1,
            max_grad_norm=1.0, logging_steps=max(1, args.max_steps // 10), save_strategy="no", report_to=[],
            use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=args.seed,
            # Every trainable parameter is used at every step, and DDP never registers the frozen entropy model
            # (requires_grad=False), so the unused-parameter search the Trainer turns on by default is not needed.
            ddp_find_unused_parameters=False,
        ),
        train_dataset=train,
        data_collator=BLTDataCollator(),
    )
    check_world_size(trainer.args.world_size)
    trainer.train()
    global_batch = args.batch_size * trainer.args.world_size
    bytes_seen = trainer.state.global_step * global_batch * row_bytes / len(train)
    train_flops = 3 * (flops["total"] - flops["entropy_model"]) * bytes_seen
    results = {}
    for f in args.valid_files:
        domain = Path(f).name.split(".")[0]
        rows = pack_texts(read_texts([f], 200_000), args.seq_len)[: args.eval_rows]
        if rows:
            results[domain] = bits_per_byte(model, rows)
    summary = ", ".join(f"{d} {v:.3f}" for d, v in results.items())
    line = (f"BLT after {trainer.state.global_step} steps ({bytes_seen / 1e6:.1f}M bytes, {train_flops:.2e} training "
            f"FLOPs): bits/byte {summary}")
    metrics = {
        "world_size": trainer.args.world_size, "global_batch": global_batch, "steps": trainer.state.global_step,
        "patching_mode": mode, "threshold": threshold, "mean_patch_size": mean_patch,
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


if __name__ == "__main__":
    sys.exit(run_cli(main))
