"""``hf-efficient-lm``: the command line of the package, one table (``COMMANDS``) of every user entry point.

Subcommands build the baseline pipeline (train-tokenizer, pretrain, evaluate), publish models with their cards, run
the demos (quickstart, demo) and each family's tools (train-anchor, anchor-mcq, train-scone, scone-mine, scone-export,
train-entropy, train-blt, train-expert, plan-specialists). ``hf-efficient-lm SUBCOMMAND --help`` explains each one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROG = "hf-efficient-lm"
DEBUG_ENV = "HFELM_DEBUG"  # set to 1 (or pass --debug) to see the traceback of a failed command
USAGE_ERROR = 2

@dataclass(frozen=True)
class Command:
    """One subcommand. ``target`` is ``"module:function"``, imported only when the command runs (or, for an
    argparse command, when the parser is built; those modules import their heavy dependencies inside functions).

    passthrough=False: ``function(parser)`` adds the options to the subcommand's argparse parser and sets ``func``.
    passthrough=True: ``function(argv)`` is a tool's own main (HfArgumentParser or argparse: its ``--help`` lists
    every option, all of ``TrainingArguments`` for the Trainer-based ones) and gets the arguments as they are.
    """

    name: str
    help: str
    target: str
    passthrough: bool = False

    def load(self) -> Callable:
        module, function = self.target.split(":")
        return getattr(importlib.import_module(module), function)


COMMANDS: tuple[Command, ...] = (
    # baseline pipeline and publishing
    Command("train-tokenizer", "train a byte-level BPE tokenizer on a text dataset", "hf_efficient_lm.cli:_add_train_tokenizer"),
    Command("pretrain", "pretrain a Llama from a size preset (HfArgumentParser + Trainer)",
            "hf_efficient_lm.train.pretrain:main", passthrough=True),
    Command("evaluate", "perplexity and bits-per-byte of a model on a text dataset", "hf_efficient_lm.cli:_add_evaluate"),
    Command("publish", "save a model folder with its model card and upload it to the Hub", "hf_efficient_lm.cli:_add_publish"),
    Command("quickstart", "the main demo: tokenizer, base Llama and every family's headline figure, offline",
            "hf_efficient_lm.tools.demos:quickstart_main", passthrough=True),
    Command("demo", "one family's demo on its own, on a tiny Llama it builds first (no data, no download)",
            "hf_efficient_lm.tools.demos:demo_main", passthrough=True),
    # AnchorLlama
    Command("train-anchor", "continual pretraining of a Llama checkpoint into AnchorLlama (EP or AC anchors)",
            "hf_efficient_lm.tools.anchor_continual:main", passthrough=True),
    Command("anchor-mcq", "multiple-choice accuracy and KV-cache size of a model, full vs anchor attention",
            "hf_efficient_lm.tools.anchor_mcq:main", passthrough=True),
    # SconeLlama
    Command("train-scone", "continual pretraining of a Llama into SconeLlama, then export the f-gram table",
            "hf_efficient_lm.tools.scone_training:main", passthrough=True),
    Command("scone-mine", "mine the top-S frequent token n-grams (f-grams) of a corpus for SconeLlama",
            "hf_efficient_lm.tools.scone_cli:add_scone_mine"),
    Command("scone-export", "precompute a trained SconeLlama's f-gram table and write a table-mode folder",
            "hf_efficient_lm.tools.scone_cli:add_scone_export"),
    # BLT
    Command("train-entropy", "train BLT's entropy model (a small causal byte LM) on a text dataset",
            "hf_efficient_lm.tools.blt_training:train_entropy_main", passthrough=True),
    Command("train-blt", "train BLT from scratch with entropy (or space) patching",
            "hf_efficient_lm.tools.blt_training:train_blt_main", passthrough=True),
    # specialists
    Command("train-expert", "train one expert of a specialist mixture on its cluster (one of k independent jobs)",
            "hf_efficient_lm.tools.specialists_training:main", passthrough=True),
    Command("plan-specialists", "which specialist method the paper recommends for given budgets, with its costs",
            "hf_efficient_lm.tools.specialists_plan:main", passthrough=True),
)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (``--max-documents 0`` must not silently mean "all")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _cmd_train_tokenizer(args: argparse.Namespace) -> None:
    from .data import iter_texts, load_text_dataset, train_tokenizer
    from .io_utils import atomic_dir, check_writable

    check_writable(args.output_dir, replace=True)
    dataset = load_text_dataset(args.data_files, dataset_name=args.dataset_name, text_column=args.text_column)
    if args.max_documents is not None:
        dataset = dataset.select(range(min(args.max_documents, len(dataset))))
    tokenizer = train_tokenizer(iter_texts(dataset, args.text_column), args.vocab_size, min_frequency=args.min_frequency)
    with atomic_dir(args.output_dir) as tmp:
        tokenizer.save_pretrained(tmp)
    print(f"saved a {len(tokenizer)}-token byte-level BPE tokenizer to {args.output_dir}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoTokenizer

    from .data import load_text_dataset, local_path
    from .eval import check_tokenizer_matches_folder, evaluate_causal_lm, load_causal_lm_strict
    from .eval.loading import folder_has_tokenizer

    model_path = local_path(args.model, "model folder")
    if args.tokenizer is None and Path(model_path).is_dir() and not folder_has_tokenizer(model_path):
        raise FileNotFoundError(f"{model_path} holds no tokenizer; pass --tokenizer")
    tokenizer_path = local_path(args.tokenizer or model_path, "tokenizer folder")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=args.trust_remote_code)
    if args.tokenizer is not None:
        check_tokenizer_matches_folder(tokenizer, model_path, trust_remote_code=args.trust_remote_code)
    dataset = load_text_dataset(args.data_files, dataset_name=args.dataset_name, split=args.split,
                                text_column=args.text_column)
    model = load_causal_lm_strict(model_path, trust_remote_code=args.trust_remote_code, dtype=getattr(torch, args.dtype))
    if args.max_documents is not None:
        dataset = dataset.select(range(min(args.max_documents, len(dataset))))
    result = evaluate_causal_lm(model, tokenizer, dataset[args.text_column], block_size=args.block_size,
                                batch_size=args.batch_size)
    print(json.dumps(result.as_dict(), indent=2))


def _parse_metric(text: str) -> tuple[str, str, float]:
    try:
        where, value = text.rsplit("=", 1)
        dataset, metric = where.split(":", 1)
        return dataset, metric, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"metric {text!r} is not DATASET:METRIC=VALUE") from None


def _cmd_publish(args: argparse.Namespace) -> None:
    from .data import local_path
    from .hub import CardInfo, publish, template_for_model_type

    model_dir = Path(local_path(args.model, "model folder"))
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} holds no saved model (config.json missing)")
    template = args.template
    if template is None:
        template = template_for_model_type(json.loads((model_dir / "config.json").read_text()).get("model_type"))
    api = None
    if args.dry_run:
        api = _DryRunApi()
    info = CardInfo(model_id=args.repo_id, base_model=args.base_model, datasets=args.dataset or [],
                    metrics=args.metric or [], license=args.license)
    result = publish(model_dir, args.repo_id, card_template=template, card_info=info, api=api,
                     private=args.private, staging_dir=args.staging_dir)
    if args.dry_run:
        print(f"[dry run] README.md ({template} template):\n{result.card}", file=sys.stderr)
    print(json.dumps({"repo_id": result.repo_id, "files": result.files}, indent=2))


class _DryRunApi:
    """Stands in for HfApi in ``publish --dry-run``: uploads nothing, says what it would do."""

    def create_repo(self, repo_id, **kwargs):
        print(f"[dry run] would create {repo_id}", file=sys.stderr)

    def upload_folder(self, folder_path, repo_id, **kwargs):
        print(f"[dry run] would upload {folder_path} to {repo_id}", file=sys.stderr)


def _data_options(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-files", nargs="+", help="local json/jsonl(.gz)/txt/csv/parquet files")
    source.add_argument("--dataset-name", help="a Hub dataset name (needs the network)")
    p.add_argument("--text-column", default="text", help="column holding the documents (default: text)")
    p.add_argument("--max-documents", type=positive_int, default=None,
                   help="use only the first N documents (N >= 1; default: all)")


def _add_train_tokenizer(p: argparse.ArgumentParser) -> None:
    p.description = ("Train a byte-level BPE tokenizer (no unknown tokens; <pad>=0, <s>=1, </s>=2) and save it as a "
                     "PreTrainedTokenizerFast.")
    _data_options(p)
    p.add_argument("--vocab-size", type=positive_int, default=4096, help="vocabulary size including 259 byte/special tokens")
    p.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge")
    p.add_argument("--output-dir", required=True, help="folder to write the tokenizer to (replaced atomically)")
    p.set_defaults(func=_cmd_train_tokenizer)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.description = ("Perplexity and bits-per-byte (documents joined with EOS, fixed windows; every document token "
                     "predicted once).")
    p.add_argument("--model", required=True, help="saved model folder")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    _data_options(p)
    p.add_argument("--split", default="train", help="split name for the loaded files (default: train)")
    p.add_argument("--block-size", type=positive_int, default=256,
                   help="tokens per evaluation window (at most the model's max_position_embeddings)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true", help="allow code from the model folder")
    p.set_defaults(func=_cmd_evaluate)


def _add_publish(p: argparse.ArgumentParser) -> None:
    p.description = ("Render a model card from a template in model_cards/ and upload the folder with "
                     "HfApi.upload_folder (push_to_hub would replace the card).")
    p.add_argument("--model", required=True, help="saved model folder")
    p.add_argument("--repo-id", required=True, help="Hub repo id, e.g. user/anchor-llama-5m")
    p.add_argument("--template", default=None,
                   help="card template name in model_cards/ or a .md path (default: the one for the folder's "
                        "model_type; a named template must match it)")
    p.add_argument("--license", default="other",
                   help="licence id for the card (default: 'other', stated as not given; the training data decides "
                        "what is allowed, e.g. gpl-3.0 or gfdl for GPL/GFDL text)")
    p.add_argument("--base-model", help="the base model's Hub id, for the card metadata")
    p.add_argument("--dataset", action="append", help="training dataset id (repeatable)")
    p.add_argument("--metric", action="append", type=_parse_metric, help="DATASET:METRIC=VALUE (repeatable)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="stage the folder and card, upload nothing")
    p.add_argument("--staging-dir", help="keep the staged folder here (must be empty or new; written atomically)")
    p.set_defaults(func=_cmd_publish)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Options may be spelled with dashes or underscores (--data-files / --data_files). A failed command "
               f"prints one line and exits with status 2; --debug (or {DEBUG_ENV}=1) shows the full traceback.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback when a command fails")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for command in COMMANDS:
        if command.passthrough:  # main() hands these their arguments; listed here for --help
            sub.add_parser(command.name, add_help=False, help=f"{command.help} (`{PROG} {command.name} --help`)")
        else:
            command.load()(sub.add_parser(command.name, help=command.help))
    return parser


def normalize_option_names(argv: list[str]) -> list[str]:
    """``--data_files`` -> ``--data-files``: the argparse subcommands spell options with dashes, the HfArgumentParser
    ones (pretrain, train-anchor, train-scone) accept both; this makes the underscore spelling work everywhere (the
    passthrough commands' own parsers included)."""
    out = []
    for token in argv:
        if token == "--":
            out.extend(argv[len(out):])
            break
        match = re.match(r"^--([A-Za-z0-9][A-Za-z0-9_-]*)(=.*)?$", token, flags=re.S)
        if match and "_" in match.group(1):
            token = "--" + match.group(1).replace("_", "-") + (match.group(2) or "")
        out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; errors propagate as exceptions (the console script turns them into one line)."""
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--debug"]
    passthrough = {command.name: command for command in COMMANDS if command.passthrough}
    if argv and argv[0] in passthrough:  # (quickstart, anchor-mcq and the BLT tools read dashes only)
        passthrough[argv[0]].load()(normalize_option_names(argv[1:]))
        return 0
    args = build_parser().parse_args(normalize_option_names(argv))
    args.func(args)
    return 0


def error_line(error: BaseException) -> str:
    """One line naming the problem: the exception's message with its whitespace collapsed."""
    text = " ".join(str(error).split())
    if isinstance(error, KeyError) or not text:
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def run_cli(entry: Callable[[list[str]], object], argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run ``entry(argv)`` as a command: a failure prints ``PROG: error: MESSAGE`` on one line and returns exit status 2;
    ``--debug`` anywhere in ``argv`` (or ``HFELM_DEBUG=1``) re-raises it with the full traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0]) or PROG
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
    argv = [a for a in argv if a != "--debug"]
    try:
        entry(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every failure of a command is reported the same way
        if debug:
            raise
        print(f"{prog}: error: {error_line(error)} (--debug or {DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
        return USAGE_ERROR
    return 0


def console_main() -> int:
    """The ``hf-efficient-lm`` console script."""
    return run_cli(main, prog=PROG)


if __name__ == "__main__":
    sys.exit(console_main())
