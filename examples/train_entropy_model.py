"""Train BLT's entropy model (a small causal byte LM with sliding-window attention) on the bytes of any text dataset
with the Hugging Face Trainer, report validation bits per byte, and save it (``BLTEntropyModel.from_pretrained``).

    nice -n 10 python examples/train_entropy_model.py --max-steps 300 \
        --output-dir ~/.cache/hf_efficient_lm/blt/entropy

Defaults read the project corpus (../shared/corpus/*.train.jsonl.gz); ``--train-files`` takes any local
json/jsonl(.gz)/txt/csv/parquet files with a ``text`` column.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from hf_efficient_lm.blt import BLTEntropyConfig, BLTEntropyModel, BLTTokenizer
from hf_efficient_lm.tools.blt_data import BLTDataCollator, byte_dataset
from hf_efficient_lm.data import read_texts

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


@torch.no_grad()
def bits_per_byte(model, dataset, batch_size: int = 8) -> float:
    model.eval()
    nats, count = 0.0, 0
    collate = BLTDataCollator()
    for i in range(0, len(dataset), batch_size):
        batch = collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        n = batch["labels"][:, 1:].numel()
        nats += float(model(**batch).loss) * n
        count += n
    return nats / count / math.log(2)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-files", nargs="*", default=sorted(glob.glob(str(DEFAULT_CORPUS / "*.train.jsonl.gz"))))
    parser.add_argument("--valid-files", nargs="*", default=sorted(glob.glob(str(DEFAULT_CORPUS / "*.valid.jsonl.gz"))))
    parser.add_argument("--output-dir", default=os.path.expanduser("~/.cache/hf_efficient_lm/blt/entropy"))
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--window", type=int, default=256, help="sliding window (bytes)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--limit-chars", type=int, default=4_000_000, help="read at most this many training characters")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.train_files:
        parser.error("no training files found; pass --train-files")

    train = byte_dataset(read_texts(args.train_files, args.limit_chars), args.seq_len)
    valid = byte_dataset(read_texts(args.valid_files, 200_000), args.seq_len) if args.valid_files else None
    config = BLTEntropyConfig(
        hidden_size=args.hidden_size, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=int(8 * args.hidden_size / 3), sliding_window=args.window, max_position_embeddings=8192,
    )
    model = BLTEntropyModel(config)
    print(f"entropy model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"{len(train)} training rows of {args.seq_len} bytes")
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=os.path.join(args.output_dir, "trainer"), max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate, warmup_steps=min(50, args.max_steps // 10),
            lr_scheduler_type="cosine", weight_decay=0.1, logging_steps=max(1, args.max_steps // 10), save_strategy="no",
            report_to=[], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        ),
        train_dataset=train,
        data_collator=BLTDataCollator(),
    )
    trainer.train()
    line = "entropy model trained"
    if valid is not None and len(valid):
        bpb = bits_per_byte(model, valid)
        line = f"entropy model: validation {bpb:.3f} bits/byte after {args.max_steps} steps"
    model.save_pretrained(args.output_dir)
    BLTTokenizer().save_pretrained(args.output_dir)
    print(line)
    print(f"saved to {args.output_dir}")
    return line


if __name__ == "__main__":
    main()
