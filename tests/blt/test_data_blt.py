"""BLT data pipeline: packing, precomputed patch-length column == in-forward patching, unpacked documents right-padded
by the collator, threshold calibration, FLOPs accounting."""

import pytest
import torch

from hf_efficient_lm import BLTConfig
from hf_efficient_lm.tools.blt_data import (
    BLTDataCollator,
    add_patch_lengths_column,
    byte_dataset,
    calibrate_threshold,
    mean_patch_size,
    pack_texts,
    rows_bits_per_byte,
    text_to_ids,
)
from hf_efficient_lm.tools.blt_flops import blt_flops_per_byte, mean_context
from hf_efficient_lm.tools.blt_testing import make_tiny_blt

TEXTS = ["Hello world, this is a byte model. " * 3, "def f(x):\n    return x + 1\n" * 4, "é ü 😀 " * 5]


def test_pack_texts_rows():
    rows = pack_texts(TEXTS, 32)
    assert all(len(r) == 32 and r[0] == 1 for r in rows)
    flat = [i for r in rows for i in r[1:]]
    expected = [i for t in TEXTS for i in text_to_ids(t, add_bos=False)]
    assert flat == expected[: len(flat)]
    kept = pack_texts(TEXTS, 32, drop_remainder=False)  # the tail is a shorter last row: every byte is kept
    assert kept[:-1] == rows and kept[-1][0] == 1 and 1 < len(kept[-1]) < 32
    assert [i for r in kept for i in r[1:]] == expected
    with pytest.raises(ValueError, match="seq_len"):
        pack_texts(TEXTS, 1)


@torch.no_grad()
def test_patch_length_column_equals_in_forward_patching():
    model = make_tiny_blt(seed=0)
    ds = add_patch_lengths_column(byte_dataset(TEXTS, 32), model.model.entropy_model, "entropy",
                                  model.config.patching_threshold, batch_size=3)
    batch = BLTDataCollator()([ds[i] for i in range(len(ds))])
    assert (batch["patch_lengths"].sum(dim=1) == 33).all()
    with_column = model(batch["input_ids"], patch_lengths=batch["patch_lengths"], labels=batch["labels"])
    in_forward = model(batch["input_ids"], labels=batch["labels"])
    torch.testing.assert_close(with_column.logits, in_forward.logits, atol=0, rtol=0)
    torch.testing.assert_close(with_column.loss, in_forward.loss)


@torch.no_grad()
def test_unpacked_documents_are_right_padded_and_keep_their_patches():
    # examples/train_blt.py --no-pack: one document per row, patch lengths computed on ragged rows, the collator
    # right-pads; the loss and every real byte's logits equal those of the rows alone.
    model = make_tiny_blt(seed=0)
    ds = add_patch_lengths_column(byte_dataset(TEXTS + ["short"], 48, pack=False), model.model.entropy_model,
                                  "entropy", model.config.patching_threshold, batch_size=3)
    lengths = [len(r) for r in ds["input_ids"]]
    assert len(set(lengths)) > 1 and [sum(p) for p in ds["patch_lengths"]] == [n + 1 for n in lengths]
    batch = BLTDataCollator()([ds[i] for i in range(len(ds))])
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    out = model(**batch)
    in_forward = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    torch.testing.assert_close(out.loss, in_forward.loss)
    weighted, patches_alone = 0.0, 0
    for i, n in enumerate(lengths):
        row = torch.tensor([ds[i]["input_ids"]])
        alone = model(row, labels=row)
        torch.testing.assert_close(out.logits[i, :n], alone.logits[0], atol=1e-5, rtol=0)
        weighted += alone.loss * (n - 1)
        patches_alone += int(model.model(row).patch_starts[0, :-1].sum())
    torch.testing.assert_close(out.loss, weighted / (sum(lengths) - len(lengths)))
    # the threshold calibration of train_blt.py measures patch sizes over real bytes only
    entropies, _ = model.model.entropy_model.entropies(batch["input_ids"], batch["attention_mask"])
    measured = mean_patch_size(entropies, model.config.patching_threshold, attention_mask=batch["attention_mask"])
    assert measured == pytest.approx(sum(lengths) / patches_alone)


def test_calibrate_threshold_hits_target_patch_size():
    entropies = torch.rand(4, 400, generator=torch.Generator().manual_seed(0)) * 3
    for target in (2.0, 4.5, 8.0):
        thr = calibrate_threshold(entropies, target)
        assert abs(mean_patch_size(entropies, thr) - target) / target < 0.1


def test_flops_per_byte_of_blt_1b_match_the_spec():
    flops = blt_flops_per_byte(BLTConfig(), mean_patch_size=4.5, context_bytes=2048)
    # spec: patcher 0.20 G, encoder 0.04 G, decoder 0.31 G per byte, global 2.57 G per patch (0.57 G/byte at 4.5)
    assert 0.18e9 < flops["entropy_model"] < 0.24e9
    assert 0.02e9 < flops["local_encoder"] < 0.05e9
    assert 0.28e9 < flops["local_decoder"] < 0.34e9
    assert 0.52e9 < flops["latent"] < 0.62e9
    assert blt_flops_per_byte(BLTConfig(), 9.0, 2048)["latent"] < flops["latent"] / 1.9


@torch.no_grad()
def test_rows_bits_per_byte_divides_every_prediction_by_the_utf8_bytes():
    """train-blt / train-entropy report bits per byte: the NLL of every predicted id (EOS included) over the texts'
    UTF-8 bytes (they reported bits per predicted id, counting each EOS as a byte)."""
    import math

    model = make_tiny_blt(seed=0)
    rows = pack_texts(TEXTS, 48, drop_remainder=False)  # every byte and EOS predicted once
    nats = 0.0
    for row in rows:
        ids = torch.tensor([row])
        nats += torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="sum").item()
    num_bytes = sum(len(text.encode()) for text in TEXTS)
    assert rows_bits_per_byte(model, rows, batch_size=3) == pytest.approx(nats / math.log(2) / num_bytes, rel=1e-5)


def test_mean_context_counts_the_keys_a_causal_or_sliding_window_query_sees():
    """The attention term's context, against a literal count (the formula took min(N / 2, W): 256 keys per query for
    a 256-byte window over 512 bytes, which see 192.25 on average; +33% on every published local-attention term)."""
    for length, window in ((512, 256), (512, None), (100, 256), (7, 3), (1, None)):
        keys = sum(min(t + 1, window) if window else t + 1 for t in range(length))
        assert mean_context(length, window) == pytest.approx(keys / length)


def test_flops_per_byte_count_the_projections_torch_measures():
    """The formula's projection FLOPs equal every nn.Linear FLOP torch's FlopCounterMode counts in a forward with
    static patches (no padding inside a patch). Its attention terms (self-attention over ``mean_context`` keys, the
    cross-attention scores) are taken out first. The encoder's cross-attention k/v projections run on every byte
    (the formula had counted them once per patch: k / patch size of the real cost)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = make_tiny_blt(seed=0, patching_mode="static", patch_size=4, patching_threshold=None)
    n = 64
    ids = torch.randint(4, 260, (1, n), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        patches = int(model.model(ids, use_cache=False).patch_starts[:, :n].sum())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(ids, use_cache=False)
    measured = sum(v for name, ops in counter.get_flop_counts().items()
                   if name.endswith(("_proj", "lm_head", "projection")) for v in ops.values())
    cfg, k = model.config, model.config.cross_attn_k
    enc, dec, glob = cfg.encoder_config, cfg.decoder_config, cfg.global_config
    window = cfg.local_attention_window_len
    n_cross = dec.num_hidden_layers if dec.cross_attn_all_layers else 1
    attention_per_byte = 4 * (enc.hidden_size * enc.num_hidden_layers * mean_context(n, window)
                              + dec.hidden_size * dec.num_hidden_layers * mean_context(n, window)
                              + glob.hidden_size * glob.num_hidden_layers * mean_context(patches) * patches / n
                              + enc.hidden_size * k + n_cross * dec.hidden_size * k)
    flops = blt_flops_per_byte(cfg, n / patches, n, include_entropy_model=False)
    assert (flops["total"] - attention_per_byte) * n == pytest.approx(measured, rel=0.01)


def test_llama_flops_follow_head_dim_where_it_differs_from_hidden_over_heads():
    """The attention width is heads x head_dim; the formula read head_dim as hidden / heads (-27% on this config).
    Reference: FlopCounterMode's matmuls, the attention scaled from the full T x T it counts to the causal context."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_efficient_lm.tools.blt_flops import llama_flops_per_token

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, attn_implementation="eager")
    model, length = LlamaForCausalLM(config).eval(), 10
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randint(0, 64, (1, length)))
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    linear = sum(v for name, v in counts.items() if name.endswith(("_proj", "lm_head")))
    layer = "LlamaForCausalLM.model.layers.{}.self_attn"
    attention = sum(counts[layer.format(i)] - sum(counts[f"{layer.format(i)}.{p}_proj"] for p in "qkvo")
                    for i in range(config.num_hidden_layers))
    expected = linear + attention * mean_context(length) / length
    assert llama_flops_per_token(config, length) * length == pytest.approx(expected, rel=1e-9)
