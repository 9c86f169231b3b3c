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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hf_efficient_lm.testing_utils import save_tiny_llama

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", clean_up_tokenization_spaces=False)
    save_tiny_llama(path, vocab_size=len(tokenizer), max_position_embeddings=2048)
    tokenizer.save_pretrained(path)
    return path


def _demo_texts() -> list[str]:
    import gzip

    corpus = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "fortunes.valid.jsonl.gz"
    if corpus.exists():
        with gzip.open(corpus, "rt", encoding="utf-8") as handle:
            return [json.loads(line)["text"][:1500] for line in handle][:64]
    sentences = ["The cat sat on the mat.", "A dog ran past!", "Was it raining?", "Nobody knew.",
                 "Small models learn slowly.", "Every sentence ends here."]
    return [" ".join(sentences[i:] + sentences[:i]) * 3 for i in range(6)] * 4


if __name__ == "__main__":
    torch.set_num_threads(1)
    texts = _demo_texts()
    with tempfile.TemporaryDirectory() as tmp:
        print(run_demo(str(_tiny_base(Path(tmp) / "base", texts)), texts))
