"""AnchorLlama demo: turn a Llama checkpoint into an AnchorLlama (EP anchors . ! ?), continually pre-train it for a
few steps with the AnSAN mask, then read a held-out many-sentence prompt and report how much of the KV cache the
anchor cache keeps.

    python examples/demo_anchor.py            # builds its own tiny Llama + tokenizer
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from transformers import TrainingArguments

from hf_efficient_lm.tools.anchor_continual import AnchorTrainArguments, run_anchor_training
from hf_efficient_lm.anchor.modeling_anchor_llama import AnchorLlamaForCausalLM


def run_demo(base_dir: str, train_texts: list[str], max_steps: int = 8) -> str:
    """Convert + train for ``max_steps`` (a few seconds on 2 cores) and return the one-line headline."""
    if len(train_texts) < 2:
        raise ValueError("run_demo needs at least 2 training texts (the last one is held out)")
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
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer(held_out, return_tensors="pt", truncation=True, max_length=1024).input_ids
    with torch.no_grad():
        out = model(ids, labels=ids, use_cache=True)
    cache = out.past_key_values
    seen, kept = cache.get_seq_length(), cache.cached_tokens()
    return (f"AnchorLlama: KV cache {kept} of {seen} tokens kept ({1 - kept / seen:.0%} saved), "
            f"held-out AnSAN loss {out.loss.item():.2f} after {max_steps} EP steps")


def _tiny_base(path: Path, texts: list[str]) -> Path:
    from hf_efficient_lm.data import train_tokenizer
    from hf_efficient_lm.testing_utils import save_tiny_llama

    tokenizer = train_tokenizer(texts, 512, min_frequency=0, show_progress=False)
    save_tiny_llama(path, vocab_size=len(tokenizer), max_position_embeddings=2048)
    tokenizer.save_pretrained(path)
    return path


def _demo_texts() -> list[str]:
    from hf_efficient_lm.data import corpus_dir, corpus_texts

    if (corpus_dir() / "fortunes.valid.jsonl.gz").exists():
        return [text[:1500] for text in corpus_texts("fortunes", "valid", 64)]
    sentences = ["The cat sat on the mat.", "A dog ran past!", "Was it raining?", "Nobody knew.",
                 "Small models learn slowly.", "Every sentence ends here."]
    return [" ".join(sentences[i:] + sentences[:i]) * 3 for i in range(6)] * 4


if __name__ == "__main__":
    torch.set_num_threads(1)
    texts = _demo_texts()
    with tempfile.TemporaryDirectory() as tmp:
        print(run_demo(str(_tiny_base(Path(tmp) / "base", texts)), texts))
