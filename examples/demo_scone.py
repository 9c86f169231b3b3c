"""SconeLlama in one minute: mine f-grams, wrap a Llama, train a few steps, export the off-accelerator table.

    python examples/demo_scone.py            # builds its own tiny tokenizer + Llama first

``run_demo(base_dir, train_texts)`` is what the package's combined demo calls with a tiny trained Llama.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from hf_efficient_lm.data import pack_ids
from hf_efficient_lm.scone import SconeLlamaForCausalLM, export_fgram_table, mine_fgrams


def _blocks(tokenizer, texts: list[str], block_size: int) -> torch.LongTensor:
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return torch.from_numpy(pack_ids(encoded, block_size, separator=tokenizer.eos_token_id))


def run_demo(base_dir: str, train_texts: list[str], *, steps: int = 30, num_fgrams: int = 2000,
             time_budget_s: float = 20.0) -> str:
    """Wrap the Llama in ``base_dir`` with SCONE (gated fusion), train briefly, export the table, compare.

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
    train_blocks, eval_blocks = _blocks(tokenizer, train, 64), _blocks(tokenizer, held_out, 64)[:16]
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


def _standalone() -> str:
    from hf_efficient_lm.data import corpus_dir, corpus_texts, train_tokenizer
    from hf_efficient_lm.testing_utils import save_tiny_llama

    if (corpus_dir() / "fortunes.train.jsonl.gz").exists():
        texts = corpus_texts("fortunes", "train", 300)
    else:
        words = "the cat sat on a mat while the dog ran to the park and the bird sang".split()
        texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(40)) for i in range(300)]
    tokenizer = train_tokenizer([texts], 512, show_progress=False)
    base_dir = Path(tempfile.mkdtemp(prefix="scone_demo_base_"))
    save_tiny_llama(base_dir, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128)
    tokenizer.save_pretrained(base_dir)
    return run_demo(str(base_dir), texts)


if __name__ == "__main__":
    print(_standalone())
