"""The main demo: from nothing to a trained base Llama and each model family, offline, in a few minutes on a CPU.

1. Builds a small training text from the docstrings of the Python standard library (every install has them).
2. Trains a byte-level BPE tokenizer and a tiny Llama (`hf_efficient_lm.train`), evaluates its held-out perplexity
   and bits-per-byte, and saves it.
3. Converts that base into each model family (examples/demo_<family>.py), trains a few steps and prints the
   family's headline figure.

    python examples/quickstart.py [--output-dir quickstart-output] [--steps 300]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import pkgutil
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from hf_efficient_lm.data import train_tokenizer  # noqa: E402
from hf_efficient_lm.eval import evaluate_causal_lm  # noqa: E402
from hf_efficient_lm.io_utils import atomic_dir, atomic_file  # noqa: E402
from hf_efficient_lm.train import parse_pretrain_args, run_pretrain  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent
FAMILY_DEMOS = ["anchor", "scone", "blt", "specialists"]
STDLIB_MODULES = [
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions", "ftplib", "functools", "glob",
    "gzip", "hashlib", "heapq", "hmac", "html", "http", "imaplib", "inspect", "io", "ipaddress", "itertools", "json",
    "logging", "mailbox", "mimetypes", "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pprint",
    "queue", "random", "re", "sched", "secrets", "selectors", "shlex", "shutil", "smtplib", "socket", "sqlite3",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "traceback", "typing", "unittest", "urllib", "uuid", "warnings", "weakref", "xml", "zipfile",
]


def stdlib_docstrings(max_chars: int) -> list[str]:
    """One document per module (and per submodule): its docstring followed by its public members' docstrings."""
    documents, total = [], 0
    names = []
    for name in STDLIB_MODULES:
        names.append(name)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            names += [f"{name}.{m.name}" for m in pkgutil.iter_modules(spec.submodule_search_locations)
                      if not m.name.startswith("_")]
    for name in tqdm(names, desc="collecting stdlib docstrings", unit="module"):
        try:
            module = importlib.import_module(name)
        except Exception:  # some submodules need optional C extensions or a platform we are not on
            continue
        parts = [inspect.getdoc(module) or ""]
        for member_name, member in sorted(vars(module).items()):
            if member_name.startswith("_") or getattr(member, "__module__", None) != name:
                continue
            doc = inspect.getdoc(member)
            if doc:
                parts.append(f"{member_name}: {doc}")
        text = "\n\n".join(p for p in parts if p).strip()
        if len(text) > 200:
            documents.append(text[:6000])
            total += len(documents[-1])
        if total >= max_chars:
            break
    return documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="quickstart-output", help="where the tokenizer and models go")
    parser.add_argument("--steps", type=int, default=300, help="pretraining steps of the tiny base Llama")
    parser.add_argument("--max-chars", type=int, default=1_500_000, help="training text size")
    parser.add_argument("--families", nargs="*", default=FAMILY_DEMOS, help="which family demos to run")
    args = parser.parse_args()
    torch.manual_seed(0)
    out = Path(args.output_dir)
    started = time.perf_counter()

    documents = stdlib_docstrings(args.max_chars)
    held_out, train_docs = documents[::20], [d for i, d in enumerate(documents) if i % 20]
    print(f"text: {len(train_docs)} training and {len(held_out)} held-out documents, "
          f"{sum(map(len, documents)) / 1e6:.2f} M characters of standard-library docstrings")
    with atomic_file(out / "train.jsonl", "w") as handle:
        for text in train_docs:
            handle.write(json.dumps({"text": text}) + "\n")

    tokenizer = train_tokenizer([train_docs], 512)
    with atomic_dir(out / "tokenizer") as tmp:
        tokenizer.save_pretrained(tmp)
    pretrain_args, training_args = parse_pretrain_args([
        "--tokenizer", str(out / "tokenizer"), "--data_files", str(out / "train.jsonl"), "--preset", "1m",
        "--block_size", "128", "--output_dir", str(out / "base-run"), "--per_device_train_batch_size", "16",
        "--learning_rate", "3e-3", "--lr_scheduler_type", "cosine", "--warmup_steps", "20", "--max_steps",
        str(args.steps), "--logging_steps", "50", "--save_steps", "100", "--save_total_limit", "1", "--seed", "0",
        "--use_cpu", "true", "--dataloader_pin_memory", "false", "--overwrite_output_dir", "true",
    ])
    base_dir = run_pretrain(pretrain_args, training_args)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    result = evaluate_causal_lm(model, tokenizer, held_out, block_size=128)
    lines = [f"base Llama ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, {args.steps} steps): "
             f"held-out perplexity {result.perplexity:.1f}, {result.bits_per_byte:.3f} bits/byte -> {base_dir}"]
    print(lines[0])

    for family in args.families:
        demo_path = EXAMPLES / f"demo_{family}.py"
        if not demo_path.exists():
            continue
        spec = importlib.util.spec_from_file_location(f"demo_{family}", demo_path)
        demo = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = demo
        spec.loader.exec_module(demo)
        family_started = time.perf_counter()
        line = demo.run_demo(str(base_dir), train_docs)
        lines.append(f"{line}  [{time.perf_counter() - family_started:.0f} s]")
        print(lines[-1])

    print("\n== hf-efficient-lm quickstart ==")
    for line in lines:
        print(" -", line)
    print(f"total {time.perf_counter() - started:.0f} s; outputs in {out}/")


if __name__ == "__main__":
    main()
