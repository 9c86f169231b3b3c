"""The demos of the main quickstart (``hf-efficient-lm quickstart`` / ``python examples/quickstart.py``): from nothing
to a trained base Llama and each model family, offline, in a few minutes on a CPU. Each ``demo_<family>(base_dir,
train_texts)`` converts the base into the family, trains briefly and returns one line with the family's headline
figure (or says plainly that at this size there is none, and where the benchmark that shows it lives).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoTokenizer, LlamaForCausalLM, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from ..anchor import AnchorLlamaForCausalLM
from ..blt import BLTConfig, BLTEntropyConfig, BLTEntropyModel, BLTForCausalLM
from ..cli import positive_int
from ..compat import cache_of
from ..data import pack_ids, train_tokenizer
from ..eval import evaluate_causal_lm
from ..io_utils import atomic_dir, atomic_file
from ..scone import SconeLlamaForCausalLM, export_fgram_table, mine_fgrams
from ..testing_utils import save_tiny_llama
from ..train import parse_pretrain_args, run_pretrain
from .anchor_continual import AnchorTrainArguments, run_anchor_training
from .blt_data import calibrate_threshold, pack_texts, text_to_ids
from .cluster_index import ClusterIndex, HashedNgramEmbedder
from .specialists_build import mixture_from_experts
from .specialists_training import SpecialistCollator, train_mixture_experts
from .specialize import specialize, token_blocks

BLOCK_SIZE = 32  # the specialists demo's windows
NUM_CLUSTERS = 2
MIN_DOCUMENTS = 21  # the quickstart holds out every 20th document: 20 to train on, at least one held out
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


def demo_anchor(base_dir: str, train_texts: list[str], max_steps: int = 8) -> str:
    """AnchorLlama: convert the Llama in ``base_dir`` (EP anchors), continually pre-train ``max_steps`` with the AnSAN
    mask, read a held-out many-sentence text; returns one line: KV-cache entries kept, held-out AnSAN loss."""
    if len(train_texts) < 2:
        raise ValueError("demo_anchor needs at least 2 training texts (the last one is held out)")
    held_out = train_texts[-1]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in train_texts[:-1]))
        args = AnchorTrainArguments(base_model=str(base_dir), data_files=[str(data)], anchor_mode="ep",
                                    max_length=128, max_documents=64)
        training_args = TrainingArguments(
            output_dir=str(Path(tmp) / "run"), max_steps=max_steps, per_device_train_batch_size=2,
            learning_rate=5e-4, warmup_steps=2, logging_steps=max_steps, save_strategy="no", report_to=[],
            use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
        )
        final = run_anchor_training(args, training_args)
        model = AnchorLlamaForCausalLM.from_pretrained(final).eval()
        tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer(held_out, return_tensors="pt", truncation=True, max_length=1024).input_ids
    with torch.no_grad():
        out = model(ids, labels=ids, use_cache=True)
    cache = cache_of(out)
    seen, kept = cache.get_seq_length(), cache.cached_tokens()
    return (f"AnchorLlama: KV cache {kept} of {seen} tokens kept ({1 - kept / seen:.0%} saved), "
            f"held-out AnSAN loss {out.loss.item():.2f} after {max_steps} EP steps")


def _token_blocks(tokenizer, texts: list[str], block_size: int) -> torch.LongTensor:
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return torch.from_numpy(pack_ids(encoded, block_size, separator=tokenizer.eos_token_id))


def demo_scone(base_dir: str, train_texts: list[str], *, steps: int = 30, num_fgrams: int = 2000,
             time_budget_s: float = 20.0) -> str:
    """SconeLlama: wrap the Llama in ``base_dir`` with SCONE (gated fusion), train briefly, export the table, compare.

    Returns one line: f-gram coverage of held-out text, held-out loss of the table-mode SconeLlama vs the same
    Llama trained on the same batches without f-grams, and accelerator parameters vs the off-accelerator table.
    """
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    split = max(1, len(train_texts) // 10)
    train, held_out = train_texts[split:], train_texts[:split]
    barriers = [t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None]
    docs = tokenizer(train, add_special_tokens=False)["input_ids"]
    vocab = mine_fgrams(docs, num_fgrams=num_fgrams, max_len=5, min_count=2, barrier_ids=barriers,
                        tokenizer=tokenizer, show_progress=False)
    model = SconeLlamaForCausalLM.from_pretrained(base_dir, fgram_vocab=vocab, fgram_num_layers=1,
                                                  fgram_fusion="gated")
    train_blocks, eval_blocks = _token_blocks(tokenizer, train, 64), _token_blocks(tokenizer, held_out, 64)[:16]
    # Fair baseline: the same Llama weights trained on the same batches for the same steps, without f-grams.
    plain = LlamaForCausalLM.from_pretrained(base_dir)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=2e-3) for m in (model, plain)]
    model.train()
    plain.train()
    start = time.perf_counter()
    for step in range(steps):
        batch = train_blocks[torch.randint(0, train_blocks.shape[0], (8,))]
        for trained, optimizer in zip((model, plain), optimizers):
            trained(batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        if time.perf_counter() - start > time_budget_s:
            break
    model.eval()
    plain.eval()
    with tempfile.TemporaryDirectory() as tmp:
        table_dir = export_fgram_table(model, Path(tmp) / "scone-table", show_progress=False)
        table_model = SconeLlamaForCausalLM.from_pretrained(table_dir).eval()
        table_bytes = (table_dir / "fgram_table.safetensors").stat().st_size
        with torch.no_grad():
            plain_loss = plain(eval_blocks, labels=eval_blocks).loss.item()
            scone_loss = table_model(eval_blocks, labels=eval_blocks).loss.item()
        _, lengths = table_model.match_fgrams(eval_blocks)
        accelerator = sum(p.numel() for p in table_model.parameters())
    coverage = (lengths > 0).float().mean().item()
    change = (scone_loss - plain_loss) / plain_loss
    if abs(change) < 0.005:  # below what one short seeded run can tell apart
        quality = (f"no measurable held-out effect at this size ({step + 1} steps: loss {scone_loss:.3f} vs "
                   f"{plain_loss:.3f} for the same Llama trained alike); the trained comparison is "
                   f"benchmarks/scone/bench_quality_scone.py, figures in docs/scone.md")
    else:
        quality = (f"held-out loss after {step + 1} steps {scone_loss:.3f} vs {plain_loss:.3f} for the same Llama "
                   f"trained alike ({change:+.1%})")
    return (f"SconeLlama: {vocab.num_fgrams:,} f-grams cover {coverage:.0%} of held-out tokens; {quality}; "
            f"accelerator params {accelerator:,} (Llama {sum(p.numel() for p in plain.parameters()):,} + gate), "
            f"{table_bytes / 1e6:.1f} MB f-gram table off-accelerator")


def _train_steps(model, rows: list[list[int]], steps: int, lr: float, deadline: float | None = None) -> int:
    """Train ``model`` on ``rows`` (4 rows a step, cycling through them) with one AdamW for ``steps`` steps, or until
    ``time.perf_counter()`` passes ``deadline``; returns the steps taken."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    data = torch.tensor(rows)
    taken = 0
    while taken < steps and (deadline is None or time.perf_counter() < deadline):
        batch = data[(taken * 4) % len(data) :][:4]
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        taken += 1
    model.eval()
    return taken


def demo_blt(base_dir: str | None, train_texts: list[str], seconds: float = 30.0) -> str:
    """BLT: a tiny entropy model and a tiny BLT trained on ``train_texts`` (``base_dir`` is ignored: no tokenizer),
    then cached generation vs full recompute; returns one line: bytes per patch, latent steps, cached speed-up."""
    torch.manual_seed(0)
    rows = pack_texts(train_texts, 128)
    if len(rows) < 4:
        raise ValueError("demo_blt needs at least ~512 bytes of training text")
    deadline = time.perf_counter() + seconds
    # 1. entropy model: a tiny byte LM
    entropy = BLTEntropyModel(BLTEntropyConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=128, sliding_window=64))
    _train_steps(entropy, rows, 60, 3e-3)
    # 2. BLT whose threshold gives ~4 bytes per patch on the training text
    sample = torch.tensor(rows[:8])
    threshold = calibrate_threshold(entropy.entropies(sample)[0], 4.0)
    loc = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128)
    config = BLTConfig(
        encoder_config=dict(loc, num_hidden_layers=1), decoder_config=dict(loc, num_hidden_layers=2),
        global_config=dict(hidden_size=128, num_attention_heads=4, intermediate_size=256, num_hidden_layers=2),
        entropy_config=entropy.config.to_dict(), encoder_hash_byte_group_vocab=1021, local_attention_window_len=64,
        patching_threshold=threshold,
    )
    model = BLTForCausalLM(config)
    model.model.entropy_model.load_state_dict(entropy.state_dict())
    _train_steps(model, rows, 40, 3e-3, deadline=deadline - 10)  # (the last 10 s are for generation)
    # 3. generation: caches vs full recompute
    prompt = torch.tensor([text_to_ids(train_texts[0][:120], add_eos=False)])
    gen = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False)
    with torch.no_grad():
        start = time.perf_counter()
        cached = model.generate(prompt, use_cache=True, **gen)
        t_cached = time.perf_counter() - start
        start = time.perf_counter()
        full = model.generate(prompt, use_cache=False, **gen)
        t_full = time.perf_counter() - start
        out = model.model(cached)
    num_bytes = cached.shape[1]
    num_patches = int(out.patch_starts[0, :-1].sum())
    same = "identical" if torch.equal(cached, full) else "DIFFERENT"
    return (f"BLT: {num_bytes} bytes ({prompt.shape[1]} prompt + 64 generated) in {num_patches} patches "
            f"({num_bytes / num_patches:.1f} bytes/patch), so the latent transformer ran {num_patches} times instead of "
            f"{num_bytes}; cached generation {t_full / t_cached:.1f}x faster than full recompute ({same} output)")


def demo_specialists(base_dir: str, train_texts: list[str]) -> str:
    """Cluster the texts' windows, train a 2-expert mixture branched from the base Llama with cluster-routed
    batches, hold out one cluster's documents as the "domain" and specialise; returns one summary line."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the Trainers' notes would bury the line; the caller's verbosity comes back
    try:
        return _specialists_line(base_dir, train_texts)
    finally:
        hf_logging.set_verbosity(verbosity)


def _specialists_line(base_dir: str, train_texts: list[str]) -> str:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = LlamaForCausalLM.from_pretrained(base_dir)
    if len(train_texts) < 4:
        raise ValueError("demo_specialists needs at least 4 training texts")
    half = len(train_texts) // 2
    generic_texts, domain_pool = train_texts[:half], train_texts[half:]
    blocks = token_blocks(generic_texts, tokenizer, BLOCK_SIZE)
    windows = [tokenizer.decode(block) for block in blocks]
    index = ClusterIndex.fit(windows, min(NUM_CLUSTERS, len(windows)), embedder=HashedNgramEmbedder(dim=256),
                             progress=False)
    cluster_ids = index.assign(windows, progress=False)
    mixture = mixture_from_experts([base] * index.k)  # each expert starts from the base
    # The paper's baseline at equal training cost: the generic small model trained the same number of steps on all
    # the generic windows (the mixture's steps are shared among its experts).
    generic = LlamaForCausalLM.from_pretrained(base_dir)
    pad_id = tokenizer.pad_token_id or 0
    with tempfile.TemporaryDirectory() as workdir:
        args = TrainingArguments(output_dir=workdir, max_steps=20, per_device_train_batch_size=8, learning_rate=1e-3,
                                 report_to=[], save_strategy="no", disable_tqdm=True, logging_strategy="no")
        train_mixture_experts(mixture, Dataset.from_dict({"input_ids": blocks, "cluster_ids": cluster_ids.tolist()}),
                              args, pad_token_id=pad_id)
        Trainer(model=generic, args=args, train_dataset=Dataset.from_dict({"input_ids": blocks}),
                data_collator=SpecialistCollator(pad_id)).train()
    # the "domain": held-out documents whose windows fall mostly in the rarer cluster
    rare = int(torch.bincount(torch.as_tensor(cluster_ids), minlength=index.k).argmin())
    domain_texts = [t for t in domain_pool if int(index.assign([t[:400]], progress=False)[0]) == rare]
    if len(domain_texts) < 4:
        domain_texts = domain_pool
    result = specialize(mixture, domain_texts, index, tokenizer=tokenizer, block_size=BLOCK_SIZE, max_steps=12,
                        eval_steps=4, batch_size=8, learning_rate=1e-3)
    # The paper's comparison: the specialist against the generic small model fine-tuned alike on the same domain.
    generic = specialize(generic, domain_texts, None, tokenizer=tokenizer, block_size=BLOCK_SIZE, max_steps=12,
                         eval_steps=4, batch_size=8, learning_rate=1e-3).report
    report = result.report
    total = sum(p.numel() for p in mixture.parameters())
    change = (report["ppl_after"] - generic["ppl_after"]) / generic["ppl_after"]
    if abs(change) < 0.01:  # below what one short seeded run can tell apart
        quality = (f"no measurable domain effect at this size (held-out domain PPL {report['ppl_after']:.1f} vs "
                   f"{generic['ppl_after']:.1f} for the generic Llama trained and fine-tuned alike); the paper-protocol "
                   f"comparison is benchmarks/specialists/bench_specialists_protocol.py, figures in docs/specialists.md")
    else:
        verdict = "better" if change < 0 else "worse at this size; the paper-protocol comparison is " \
            "benchmarks/specialists/bench_specialists_protocol.py"
        quality = (f"held-out domain PPL {report['ppl_after']:.1f} vs {generic['ppl_after']:.1f} for the generic "
                   f"Llama trained and fine-tuned alike ({change:+.1%}: {verdict})")
    return (
        f"Specialists: {index.k}-expert mixture ({total / 1e3:.0f}k params) -> stock LlamaForCausalLM of "
        f"{report['inference_params'] / 1e3:.0f}k params ({report['inference_params'] / total:.0%} of it) via cluster "
        f"{report['selected_cluster']}; {quality}"
    )


FAMILY_DEMOS = {"anchor": demo_anchor, "scone": demo_scone, "blt": demo_blt, "specialists": demo_specialists}


def standalone_texts(family: str) -> list[str]:
    """Texts for a demo run on its own (``hf-efficient-lm demo FAMILY``): the shared corpus when present, else a
    small synthetic text."""
    from ..data import corpus_dir, corpus_texts

    domain = {"anchor": ("fortunes", "valid", 64), "scone": ("fortunes", "train", 300),
              "blt": ("pydocs", "train", 20), "specialists": None}[family]
    if domain and (corpus_dir() / f"{domain[0]}.{domain[1]}.jsonl.gz").exists():
        texts = corpus_texts(*domain)
        return [text[:1500] for text in texts] if family == "anchor" else texts
    rng = torch.Generator().manual_seed(0)
    animals = "the cat and the dog ran over the hill while the cow slept in the barn .".split()
    code = "def return import class self lambda yield for while if else print len range".split()

    def text(words):  # "." ends its sentence as in prose: "barn." ("barn ." would give no bare "." anchor token)
        return " ".join(words[int(i)] for i in torch.randint(0, len(words), (120,), generator=rng)).replace(" .", ".")

    return [text(animals if i % 3 else code) for i in range(48)]


def run_standalone(family: str) -> str:
    """One family's demo on its own: a tiny random Llama with a tokenizer trained on :func:`standalone_texts`."""
    texts = standalone_texts(family)
    with tempfile.TemporaryDirectory(prefix=f"demo-{family}-") as tmp:
        tokenizer = train_tokenizer([texts], 512, min_frequency=0, show_progress=False)
        base = save_tiny_llama(Path(tmp) / "base", vocab_size=len(tokenizer), max_position_embeddings=2048)
        tokenizer.save_pretrained(base)
        return FAMILY_DEMOS[family](str(base), texts)


def demo_main(argv: list[str] | None = None) -> None:
    """``hf-efficient-lm demo FAMILY``: one family's demo on its own (:func:`run_standalone`)."""
    parser = argparse.ArgumentParser(
        prog="hf-efficient-lm demo", description="One family's demo on its own, offline: a tiny random Llama with a "
        "tokenizer trained on the shared corpus (or a small synthetic text without it), converted into the family; "
        "prints the family's headline line. The quickstart runs all four on the base Llama it trains.")
    parser.add_argument("family", choices=list(FAMILY_DEMOS), help="which family's demo to run")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads (default: 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(run_standalone(args.family))


def quickstart_main(argv: list[str] | None = None) -> None:
    """``hf-efficient-lm quickstart``: the main demo (README command 1)."""
    parser = argparse.ArgumentParser(prog="hf-efficient-lm quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="quickstart-output", help="where the tokenizer and models go")
    parser.add_argument("--steps", type=positive_int, default=300, help="pretraining steps of the tiny base Llama")
    parser.add_argument("--max-chars", type=positive_int, default=1_500_000,
                        help=f"characters of docstrings to collect (enough for {MIN_DOCUMENTS} documents: ~60,000)")
    # choices: a misspelt family stops here, not after minutes of pretraining
    parser.add_argument("--families", nargs="*", choices=list(FAMILY_DEMOS), default=list(FAMILY_DEMOS),
                        help="which family demos to run")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    out = Path(args.output_dir)
    started = time.perf_counter()

    documents = stdlib_docstrings(args.max_chars)
    if len(documents) < MIN_DOCUMENTS:
        raise ValueError(f"--max-chars {args.max_chars} collects {len(documents)} docstring documents; the demo needs "
                         f"at least {MIN_DOCUMENTS} (1 in 20 is held out): raise --max-chars (~60,000 is enough)")
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
        family_started = time.perf_counter()
        line = FAMILY_DEMOS[family](str(base_dir), train_docs)
        lines.append(f"{line}  [{time.perf_counter() - family_started:.0f} s]")
        print(lines[-1])

    print("\n== hf-efficient-lm quickstart ==")
    for line in lines:
        print(" -", line)
    print(f"total {time.perf_counter() - started:.0f} s; outputs in {out}/")
