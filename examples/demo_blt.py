"""BLT demo: train a tiny entropy model and a tiny BLT on a few texts, then generate with the byte- and patch-level
caches and compare with full recomputation.

``run_demo(base_dir, train_texts)`` ignores ``base_dir`` (BLT needs no tokenizer or token model) and returns one line
with the headline figures: bytes per patch, how often the latent transformer ran, and the cached-generation speedup
with identical output. Standalone: ``python examples/demo_blt.py``.
"""

from __future__ import annotations

import time

import torch

from hf_efficient_lm.blt import BLTConfig, BLTEntropyConfig, BLTEntropyModel, BLTForCausalLM
from hf_efficient_lm.tools.blt_data import calibrate_threshold, pack_texts, text_to_ids


def _train(model, rows, steps, lr, **forward_kwargs):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    data = torch.tensor(rows)
    for step in range(steps):
        batch = data[(step * 4) % len(data) :][:4]
        loss = model(batch, labels=batch, **forward_kwargs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return float(loss.detach())


def run_demo(base_dir: str | None, train_texts: list[str], seconds: float = 30.0) -> str:
    torch.manual_seed(0)
    rows = pack_texts(train_texts, 128)
    if len(rows) < 4:
        raise ValueError("run_demo needs at least ~512 bytes of training text")
    deadline = time.perf_counter() + seconds
    # 1. entropy model: a tiny byte LM
    entropy = BLTEntropyModel(BLTEntropyConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=128, sliding_window=64))
    _train(entropy, rows, 60, 3e-3)
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
    steps = 0
    while steps < 40 and time.perf_counter() < deadline - 10:
        _train(model, rows[steps % len(rows):] + rows, 10, 3e-3)
        steps += 10
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


if __name__ == "__main__":
    from hf_efficient_lm.data import corpus_texts

    try:
        texts = corpus_texts("pydocs", "train", limit=20)
    except FileNotFoundError:
        texts = ["The quick brown fox jumps over the lazy dog. " * 40]
    torch.set_num_threads(1)
    print(run_demo(None, texts))
