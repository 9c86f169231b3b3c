"""SCONE subcommands of ``hf-efficient-lm`` (rows of ``hf_efficient_lm.cli.COMMANDS``): ``scone-mine`` (corpus ->
f-gram vocabulary) and ``scone-export`` (trained SconeLlama -> table-mode folder)."""

from __future__ import annotations

import argparse
import json

from ..cli import positive_int


def _tokenized_dataset(args):
    """A dataset with an ``input_ids`` column: loaded with ``load_from_disk`` or tokenized from text files."""
    from transformers import AutoTokenizer

    from ..data import encode_documents, local_path

    tokenizer = AutoTokenizer.from_pretrained(local_path(args.tokenizer, "tokenizer folder"))
    if args.tokenized:
        from datasets import load_from_disk

        dataset = load_from_disk(local_path(args.tokenized, "tokenized dataset folder"))
        if "input_ids" not in dataset.column_names:
            raise ValueError(f"{args.tokenized} has no input_ids column (columns: {dataset.column_names})")
    else:
        from ..data import load_text_dataset

        dataset = load_text_dataset(args.data_files, dataset_name=args.dataset_name, text_column=args.text_column)
    if args.max_documents is not None:
        dataset = dataset.select(range(min(args.max_documents, len(dataset))))
    if not args.tokenized:
        dataset = dataset.map(
            lambda batch: {"input_ids": encode_documents(tokenizer, batch[args.text_column])},
            batched=True, batch_size=1000, remove_columns=dataset.column_names, num_proc=args.num_proc,
            desc="tokenizing",
        )
    return dataset, tokenizer


def _cmd_scone_mine(args: argparse.Namespace) -> None:
    from ..io_utils import check_writable
    from .scone_export import save_fgram_vocab
    from .scone_mining import mine_fgrams

    check_writable(args.output_dir, replace=True)
    dataset, tokenizer = _tokenized_dataset(args)
    barriers = args.barrier_ids
    if barriers is None:  # document-boundary specials of the tokenizer
        barriers = sorted({t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
                           if t is not None})
    vocab = mine_fgrams(dataset, num_fgrams=args.num_fgrams, max_len=args.max_len, min_count=args.min_count,
                        barrier_ids=barriers, tokenizer=tokenizer, chunk_tokens=args.chunk_tokens,
                        num_threads=args.num_threads)
    save_fgram_vocab(vocab, args.output_dir)
    print(json.dumps(vocab.metadata(), indent=2))


def _cmd_scone_export(args: argparse.Namespace) -> None:
    import torch

    from pathlib import Path

    from ..data import local_path
    from ..eval.loading import TOKENIZER_FILES, folder_has_tokenizer
    from ..io_utils import check_writable
    from ..scone.modeling_scone_llama import SconeLlamaForCausalLM
    from .scone_export import export_fgram_table

    model_dir = Path(local_path(args.model, "model folder"))
    out_dir = Path(args.output_dir)
    if out_dir.resolve() == model_dir.resolve() or model_dir.resolve() in out_dir.resolve().parents:
        raise ValueError(f"--output-dir {out_dir} is the training-mode model {model_dir} (or inside it): exporting "
                         "would replace the training checkpoint; choose another folder")
    check_writable(out_dir, replace=True)
    tokenizer = None
    if folder_has_tokenizer(model_dir):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = SconeLlamaForCausalLM.from_pretrained(model_dir)
    out = export_fgram_table(model, out_dir, batch_size=args.batch_size, dtype=getattr(torch, args.dtype),
                             tokenizer=tokenizer)
    note = "" if tokenizer is not None else (
        f" (no tokenizer in {model_dir}: add one of {list(TOKENIZER_FILES[:2])} before evaluating it)")
    print(f"wrote table-mode SconeLlama ({model.config.num_fgrams} f-gram rows, {args.dtype}) to {out}{note}")


def add_scone_subcommands(subparsers) -> None:
    """Add ``scone-mine`` and ``scone-export`` to argparse subparsers (``hf_efficient_lm.cli.COMMANDS`` adds each
    through :func:`add_scone_mine` / :func:`add_scone_export`)."""
    add_scone_mine(subparsers.add_parser("scone-mine"))
    add_scone_export(subparsers.add_parser("scone-export"))


def add_scone_mine(p) -> None:
    """Options of ``hf-efficient-lm scone-mine``."""
    p.description = ("Count all token n-grams of length 2..K (Apriori pruning, exact integer keys, chunked) and keep "
                     "the S most frequent, ties broken by (count desc, length asc) so the set is closed under "
                     "prefixes and suffixes. Never crosses documents or BOS/EOS/pad. Writes fgram_index.safetensors "
                     "and fgram_vocab.json (with the tokenizer's fingerprint) atomically.")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (its fingerprint is stored with the f-grams)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-files", nargs="+", help="local json/jsonl(.gz)/txt/csv/parquet text files")
    source.add_argument("--dataset-name", help="a Hub text dataset (needs the network)")
    source.add_argument("--tokenized", help="a datasets folder (save_to_disk) with an input_ids column")
    p.add_argument("--text-column", default="text", help="column holding the documents (default: text)")
    p.add_argument("--max-documents", type=positive_int, default=None, help="use only the first N documents (N >= 1)")
    p.add_argument("--num-fgrams", type=positive_int, required=True, help="S, number of f-grams to keep")
    p.add_argument("--max-len", type=int, default=5, help="K, longest f-gram (default 5)")
    p.add_argument("--min-count", type=int, default=5, help="n-grams seen fewer times are never kept (default 5)")
    p.add_argument("--barrier-ids", type=int, nargs="*", default=None,
                   help="token ids never inside an f-gram (default: the tokenizer's BOS/EOS/pad)")
    p.add_argument("--chunk-tokens", type=int, default=1 << 24, help="tokens per counting chunk (memory bound)")
    p.add_argument("--num-proc", type=int, default=None, help="processes for tokenization")
    p.add_argument("--num-threads", type=int, default=None,
                   help="counting threads (default: every CPU this process may use); the result does not depend on it")
    p.add_argument("--output-dir", required=True, help="folder for fgram_index.safetensors + fgram_vocab.json")
    p.set_defaults(func=_cmd_scone_mine)


def add_scone_export(p) -> None:
    """Options of ``hf-efficient-lm scone-export``."""
    p.description = ("Run the f-gram model over all S f-grams (batched) and write model.safetensors without it plus "
                     "a memory-mapped fgram_table.safetensors, plus the model folder's tokenizer; the folder loads "
                     "with from_pretrained and can be evaluated on its own.")
    p.add_argument("--model", required=True, help="training-mode SconeLlama folder")
    p.add_argument("--output-dir", required=True, help="table-mode folder to write (replaced atomically)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the stored table rows (default bfloat16)")
    p.add_argument("--batch-size", type=positive_int, default=4096, help="f-grams per f-gram-model batch")
    p.set_defaults(func=_cmd_scone_export)
