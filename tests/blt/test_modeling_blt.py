"""BLTForCausalLM semantics: incremental (cached) generation equals full recompute for every patching mode, left
padding, beam search and sampling with the cache, BLTCache row surgery (beam reordering), right padding for
training, precomputed patch lengths, entropy model save/load (alone and inside BLT), loss, bad input."""

import math

import pytest
import torch

from hf_efficient_lm import BLTConfig, BLTEntropyModel, BLTForCausalLM
from hf_efficient_lm.blt import BLTEntropyConfig
from hf_efficient_lm.blt.compat_blt import CACHE_NAME, cache_of
from hf_efficient_lm.blt.modeling_blt_lm import BLTCrossAttention
from hf_efficient_lm.eval.speed import saved_for_backward_bytes
from hf_efficient_lm.tools.blt_testing import make_tiny_blt, random_bytes, tiny_blt_config


def _bytes(batch=2, length=30, seed=0):
    return random_bytes(batch, length, torch.Generator().manual_seed(seed))


MODES = [
    dict(patching_mode="entropy"),
    dict(patching_mode="entropy", max_patch_length=3),
    dict(patching_mode="entropy_monotonic"),
    dict(patching_mode="space"),
    dict(patching_mode="static", patch_size=3),
    dict(patching_mode="byte"),
]


@pytest.mark.parametrize("overrides", MODES, ids=lambda o: "-".join(f"{v}" for v in o.values()))
@torch.no_grad()
def test_incremental_steps_equal_full_forward(overrides):
    model = make_tiny_blt(seed=0, **overrides)
    x = _bytes(length=22)
    full = model(x)
    starts = model.model(x).patch_starts
    num = starts.sum(dim=1)
    assert (3 < int(num.min()) and int(num.max()) < 20) or overrides["patching_mode"] == "byte", num
    out = model(x[:, :12], use_cache=True)
    torch.testing.assert_close(out.logits, full.logits[:, :12], atol=1e-5, rtol=0)
    cache = cache_of(out)
    for t in range(12, 22):
        step = model(x[:, t : t + 1], past_key_values=cache, use_cache=True)
        torch.testing.assert_close(step.logits[:, 0], full.logits[:, t], atol=1e-5, rtol=0)
    assert cache.get_seq_length() == 22
    # the latent transformer ran once per closed patch, not once per byte
    assert cache.latent_mask.shape[1] <= int(starts[:, 12:].any(dim=0).sum()) + int(starts[:, :12].sum(dim=1).max())


@pytest.mark.parametrize("overrides", MODES, ids=lambda o: "-".join(f"{v}" for v in o.values()))
@torch.no_grad()
def test_cache_decides_boundaries_like_the_batched_patcher(overrides):
    # One rule (patcher_blt.boundary_rule): the cache's per-byte decisions after a left-padded prompt equal the start
    # mask of the full forward, slot by slot, across rows whose positions differ by their padding.
    model = make_tiny_blt(seed=0, **overrides)
    x = _bytes(length=26, seed=3)
    mask = torch.ones_like(x)
    mask[1, :5] = 0
    full = model.model(x, attention_mask=mask).patch_starts  # [B, 27]
    cache = model.model(x[:, :10], attention_mask=mask[:, :10], use_cache=True).cache
    steps = [model.model(x[:, t : t + 1], cache=cache).patch_starts[:, 0] for t in range(10, 26)]
    assert torch.equal(torch.stack(steps, dim=1), full[:, 11:])
    assert 0 < int(full[:, 11:].sum()) < full[:, 11:].numel() or overrides["patching_mode"] == "byte"


@torch.no_grad()
def test_multi_byte_extension_equals_full_forward():
    model = make_tiny_blt(seed=2)
    x = _bytes(length=20, seed=4)
    cache = cache_of(model(x[:, :10], use_cache=True))
    chunk = model(x[:, 10:20], past_key_values=cache, use_cache=True)
    torch.testing.assert_close(chunk.logits, model(x).logits[:, 10:], atol=1e-5, rtol=0)


@torch.no_grad()
def test_cached_greedy_generation_equals_recompute_and_left_padding():
    model = make_tiny_blt(seed=3)
    prompts = [_bytes(1, 20, seed=5)[0], _bytes(1, 13, seed=6)[0]]
    cached = model.generate(prompts[0][None], max_new_tokens=12, do_sample=False, use_cache=True)
    recompute = model.generate(prompts[0][None], max_new_tokens=12, do_sample=False, use_cache=False)
    assert cached.shape[1] > 26 and torch.equal(cached, recompute)
    # batched with left padding == each row alone
    ids = torch.zeros(2, 20, dtype=torch.long)
    mask = torch.zeros(2, 20, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, 20 - len(p):] = p
        mask[row, 20 - len(p):] = 1
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    for row, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=8, do_sample=False)
        n = alone.shape[1] - len(p)
        assert torch.equal(batched[row, 20 : 20 + n], alone[0, len(p):])


def _left_padded(prompts, length):
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, length - len(p):] = p
        mask[row, length - len(p):] = 1
    return ids, mask


@pytest.mark.parametrize(
    "prompt_lengths, kwargs",
    [
        ((20,), dict(do_sample=False, num_beams=3)),
        ((20,), dict(do_sample=False, num_beams=3, num_return_sequences=2)),
        ((20, 13), dict(do_sample=False, num_beams=3, num_return_sequences=2)),
        ((20, 13), dict(do_sample=True, top_k=0, num_return_sequences=2)),
    ],
    ids=["beam", "beam-return2", "beam-left-padded-batch", "sampling-left-padded-batch"],
)
@torch.no_grad()
def test_beam_search_and_sampling_with_cache_equal_recompute(prompt_lengths, kwargs):
    # Beams of one prompt close patches at different bytes, so beam search reorders rows whose patch state differs
    # (open patch start and bytes, latent slots, last entropy, decoder patch): every piece must follow its row.
    model = make_tiny_blt(seed=3)
    prompts = [_bytes(1, n, seed=5 + i)[0] for i, n in enumerate(prompt_lengths)]
    ids, mask = _left_padded(prompts, max(prompt_lengths))
    outputs = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        outputs.append(
            model.generate(ids, attention_mask=mask, max_new_tokens=16, use_cache=use_cache, pad_token_id=0, **kwargs)
        )
    cached, recompute = outputs
    rows = len(prompts) * kwargs.get("num_return_sequences", 1)
    assert cached.shape == (rows, ids.shape[1] + 16) and torch.equal(cached, recompute)
    generated_patches = model.model(cached[:, ids.shape[1] - 1 :]).patch_starts.sum(dim=1)
    assert len(set(generated_patches.tolist())) > 1 or rows == 1, generated_patches


@pytest.mark.parametrize(
    "overrides",
    [dict(patching_mode="entropy"), dict(patching_mode="entropy", max_patch_length=3),
     dict(patching_mode="entropy_monotonic"), dict(patching_mode="space")],
    ids=lambda o: "-".join(f"{v}" for v in o.values()),
)
@torch.no_grad()
def test_cache_row_surgery_equals_fresh_rows(overrides):
    # reorder_cache (beam search), batch_select_indices and batch_repeat_interleave on a left-padded batch whose rows
    # differ in padding, positions and open patches; continuing with different bytes per row must equal the full
    # forward of the rearranged rows.
    model = make_tiny_blt(seed=1, **overrides)
    prompts = [_bytes(1, n, seed=20 + n)[0] for n in (15, 9, 12)]
    ids, mask = _left_padded(prompts, 15)
    surgeries = [
        ("reorder_cache", torch.tensor([2, 0, 0]), torch.tensor([2, 0, 0])),
        ("batch_select_indices", torch.tensor([2, 0]), torch.tensor([2, 0])),
        ("batch_repeat_interleave", 2, torch.arange(3).repeat_interleave(2)),
    ]
    for method, arg, rows in surgeries:
        cache = cache_of(model(ids, attention_mask=mask, use_cache=True))
        getattr(cache, method)(arg)
        new = _bytes(len(rows), 9, seed=40)[:, 1:]
        steps = [model(new[:, t : t + 1], past_key_values=cache, use_cache=True).logits[:, 0] for t in range(8)]
        full = model(torch.cat([ids[rows], new], 1), attention_mask=torch.cat([mask[rows], torch.ones_like(new)], 1))
        torch.testing.assert_close(torch.stack(steps, 1), full.logits[:, 15:], atol=1e-5, rtol=0, msg=method)
        assert cache.get_seq_length() == 23


@pytest.mark.parametrize("overrides", MODES, ids=lambda o: "-".join(f"{v}" for v in o.values()))
def test_right_padded_rows_equal_rows_alone(overrides):
    # Training batches of unpacked documents are right-padded: every real byte must get the logits it gets alone
    # (whatever the padding ids), and the loss must be the token-weighted loss of the rows alone.
    model = make_tiny_blt(seed=1, **overrides)
    prompts = [_bytes(1, n, seed=30 + n)[0] for n in (24, 11, 17)]
    ids = torch.full((3, 24), 77)  # padding ids must not matter
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, : len(p)] = p
        mask[row, : len(p)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    batched = model(ids, attention_mask=mask, labels=labels)
    weighted, count = 0.0, 0
    for row, p in enumerate(prompts):
        alone = model(p[None], labels=p[None])
        torch.testing.assert_close(batched.logits[row, : len(p)], alone.logits[0], atol=1e-5, rtol=0)
        weighted, count = weighted + alone.loss * (len(p) - 1), count + len(p) - 1
    torch.testing.assert_close(batched.loss, weighted / count)
    batched.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@torch.no_grad()
def test_precomputed_patch_lengths_equal_in_forward_patching():
    model = make_tiny_blt(seed=4)
    x = _bytes(seed=7)
    out = model.model(x)
    from hf_efficient_lm.blt import patch_lengths_from_starts

    for include_next in (False, True):
        lengths = patch_lengths_from_starts(out.patch_starts, include_next=include_next)
        got = model(x, patch_lengths=lengths).logits
        ref = model(x).logits
        if include_next:
            torch.testing.assert_close(got, ref, atol=0, rtol=0)
        else:  # without the next-byte decision, only the last position may differ
            torch.testing.assert_close(got[:, :-1], ref[:, :-1], atol=0, rtol=0)
    # Transformers' convention (its patcher's output) carries the next-byte decision in a row of its own: the lengths
    # sum to the row's bytes, and an empty patch after the last one says that the next byte opens a patch. With it the
    # last position is exact too; without it, it differs where the decision was "opens".
    x = _bytes(batch=6, seed=7)
    starts = model.model(x).patch_starts
    assert set(starts[:, -1].tolist()) == {True, False}  # the state is not degenerate
    for row, opens in enumerate(starts[:, -1].tolist()):
        lengths = patch_lengths_from_starts(starts[row : row + 1])[0]
        patches = lengths[lengths > 0].tolist()
        ref = model(x[row : row + 1]).logits
        got = model(x[row : row + 1], patch_lengths=torch.tensor([patches + [0] * opens])).logits
        torch.testing.assert_close(got, ref, atol=0, rtol=0)
        if opens:
            unmarked = model(x[row : row + 1], patch_lengths=torch.tensor([patches])).logits
            assert (unmarked[:, -1] - ref[:, -1]).abs().max() > 1e-3


def test_entropy_model_save_load_alone_and_inside(tmp_path):
    model = make_tiny_blt(seed=5)
    x = _bytes(seed=8)
    entropy_model = model.model.entropy_model
    entropy_model.save_pretrained(tmp_path / "entropy")
    alone = BLTEntropyModel.from_pretrained(tmp_path / "entropy")
    torch.testing.assert_close(alone.entropies(x)[0], entropy_model.entropies(x)[0], atol=0, rtol=0)
    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "entropy")).__name__ == "BLTEntropyModel"
    # a trained entropy model can be dropped into a BLT, which saves and reloads it with its weights
    fresh = BLTForCausalLM(model.config)
    fresh.model.entropy_model.load_state_dict(alone.state_dict())
    fresh.save_pretrained(tmp_path / "blt")
    reloaded = BLTForCausalLM.from_pretrained(tmp_path / "blt")
    torch.testing.assert_close(reloaded.model.entropy_model.entropies(x)[0], alone.entropies(x)[0], atol=0, rtol=0)
    assert not any(p.requires_grad for p in reloaded.model.entropy_model.parameters())
    # the entropy model trains as an ordinary causal LM
    alone.train()
    loss = alone(x, labels=x).loss
    loss.backward()
    assert alone.lm_head.weight.grad is not None


@pytest.mark.parametrize("which", ["entropy_model", "blt"])
def test_trainer_counts_the_shifted_labels_of_every_byte_model(which, tmp_path):
    """Trainer normalises the loss by num_items_in_batch, counted over labels[:, 1:] only for models whose loss_type
    is a causal LM's. The entropy model's class name (BLTEntropyModel) set none, so train-entropy optimised and logged
    the loss times (T-1)/T (0.39% low at its default 256 bytes)."""
    from transformers import Trainer, TrainingArguments

    blt = make_tiny_blt(seed=1)
    model = blt.model.entropy_model.requires_grad_(True) if which == "entropy_model" else blt
    x = _bytes(batch=3, length=16, seed=2)
    batch = {"input_ids": x, "labels": x}
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))
    num_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    assert int(num_items) == 3 * 15
    with torch.no_grad():
        torch.testing.assert_close(trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items),
                                   model(**batch).loss)


def test_loss_is_next_byte_cross_entropy():
    model = make_tiny_blt(seed=6)
    x = _bytes(seed=9)
    labels = x.clone()
    labels[0, :5] = -100
    out = model(x, labels=labels)
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 260), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)
    out.loss.backward()
    assert model.model.global_transformer.layers[0].self_attn.q_proj.weight.grad is not None
    assert model.model.encoder_hash_tok_embedding.weight.grad is not None
    # rows have different patch counts, so some patch slots are empty: no NaN may leak into the gradients
    assert len(set(model.model(x).patch_starts.sum(dim=1).tolist())) > 1
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_input_errors():
    model = make_tiny_blt(seed=0)
    with pytest.raises(ValueError, match=r"byte ids in \[0, 260\)"):
        model(torch.tensor([[1, 300]]))
    with pytest.raises(ValueError, match=r"byte ids in \[0, 260\)"):
        model(torch.tensor([[1, -3]]))
    with pytest.raises(ValueError, match="inputs_embeds is not supported"):
        model(inputs_embeds=torch.zeros(1, 3, 32))
    with pytest.raises(ValueError, match=r"row 0 has padding between real bytes \(zeros at slots \[1\]\)"):
        model(torch.tensor([[1, 50, 60]]), attention_mask=torch.tensor([[1, 0, 1]]))
    with pytest.raises(ValueError, match=r"use_cache=True needs left padding: row\(s\) \[1\]"):
        model(torch.tensor([[1, 50, 60], [1, 50, 0]]), attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]), use_cache=True)
    with pytest.raises(ValueError, match="sum to 9 but the row has 3 bytes"):
        model(torch.tensor([[1, 50, 60]]), patch_lengths=torch.tensor([[1, 8]]))
    for bad in (math.nan, math.inf, "1.3"):
        with pytest.raises(ValueError, match="patching_threshold must be a finite number"):
            BLTConfig(patching_threshold=bad)
    with pytest.raises(ValueError, match="patching_mode must be one of"):
        BLTConfig(patching_mode="bpe")
    right_padded = dict(input_ids=torch.tensor([[1, 50, 60], [1, 50, 0]]), attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))
    for use_cache in (True, False):
        with pytest.raises(ValueError, match=r"generate needs left-padded prompts: row\(s\) \[1\] end with padding"):
            model.generate(**right_padded, max_new_tokens=2, use_cache=use_cache, pad_token_id=0)
    with pytest.raises(ValueError, match="BLTCache cannot be cropped"):
        cache_of(model(torch.tensor([[1, 50, 60]]), use_cache=True)).crop(-1)


@torch.no_grad()
def test_output_hidden_states_return_dict_and_flags():
    """Issue 11: hidden states per stage, return_dict=False gives tuples, output_attentions is a clear error."""
    model = make_tiny_blt(seed=0)
    x = _bytes()
    out = model(x, output_hidden_states=True)
    enc, latent, dec = out.hidden_states
    assert enc.shape[:2] == x.shape and dec.shape[:2] == x.shape
    assert latent.shape[1] == int(model.model(x).patch_starts[:, : x.shape[1]].sum(1).max())
    torch.testing.assert_close(dec, model.model(x).last_hidden_state, atol=0, rtol=0)
    assert model(x).hidden_states is None
    base = model.model(x, output_hidden_states=True)
    assert len(base.hidden_states) == 3
    as_tuple = model(x, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], model(x).logits)
    base_tuple = model.model(x, return_dict=False)
    assert isinstance(base_tuple, tuple) and torch.equal(base_tuple[0], model.model(x).last_hidden_state)
    with pytest.raises(ValueError, match="does not return attention weights"):
        model(x, output_attentions=True)
    cache = cache_of(model(x, use_cache=True))
    with pytest.raises(ValueError, match="full forward only"):
        model(x[:, :1], use_cache=True, output_hidden_states=True, **{CACHE_NAME: cache})


@torch.no_grad()
def test_prepare_inputs_passes_extra_kwargs_through():
    model = make_tiny_blt(seed=0)
    inputs = model.prepare_inputs_for_generation(_bytes(), logits_to_keep=1, output_hidden_states=True,
                                                 patch_lengths=torch.tensor([[30], [30]]), some_flag=7)
    assert inputs["logits_to_keep"] == 1 and inputs["output_hidden_states"] is True and inputs["some_flag"] == 7
    assert "patch_lengths" not in inputs


def test_from_pretrained_output_loading_info(tmp_path):
    from hf_efficient_lm.blt import BLTModel

    model = make_tiny_blt(seed=0)
    model.save_pretrained(tmp_path)
    loaded, info = BLTForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(info, dict) and not info["missing_keys"]
    assert not any(p.requires_grad for p in loaded.model.entropy_model.parameters())
    base, info = BLTModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(p.requires_grad for p in base.entropy_model.parameters())


def test_entropy_model_declares_no_tied_head(tmp_path):
    from transformers.models.mistral.modeling_mistral import MistralForCausalLM

    from hf_efficient_lm.blt import BLTEntropyConfig

    assert MistralForCausalLM._tied_weights_keys  # the parent declares lm_head <-> embed_tokens
    model = BLTEntropyModel(BLTEntropyConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4))
    assert not model._tied_weights_keys and not model.config.tie_word_embeddings
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    model.save_pretrained(tmp_path)
    again = BLTEntropyModel.from_pretrained(tmp_path)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    assert again.lm_head.weight.data_ptr() != again.model.embed_tokens.weight.data_ptr()


def test_encoder_and_decoder_sub_configs_are_distinct(tmp_path):
    import json

    from hf_efficient_lm.blt import BLTLocalDecoderConfig, BLTLocalEncoderConfig

    local = dict(hidden_size=32, num_attention_heads=4)
    config = BLTConfig(encoder_config=dict(local), decoder_config=dict(local, num_hidden_layers=3))
    assert type(config.encoder_config) is BLTLocalEncoderConfig and type(config.decoder_config) is BLTLocalDecoderConfig
    config.save_pretrained(tmp_path)
    assert BLTLocalDecoderConfig.from_pretrained(tmp_path).num_hidden_layers == 3
    assert BLTLocalEncoderConfig.from_pretrained(tmp_path).num_hidden_layers == 1
    # a checkpoint saved before the split (both sub-configs of model type hfelm_blt_local) still loads
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["encoder_config"]["model_type"] = saved["decoder_config"]["model_type"] = "hfelm_blt_local"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = BLTConfig.from_pretrained(tmp_path)
    assert old.decoder_config.num_hidden_layers == 3 and old.decoder_config.cross_attn_all_layers
    assert old.encoder_config.num_hidden_layers == 1 and not old.encoder_config.cross_attn_all_layers


@torch.no_grad()
def test_static_cache_and_foreign_cache_are_clear_errors():
    from transformers import DynamicCache, GenerationConfig

    model = make_tiny_blt(seed=0)
    x = torch.tensor([[1, 50, 60, 70]])
    with pytest.raises(ValueError, match="does not support cache_implementation='static'"):
        model.generate(x, max_new_tokens=2, cache_implementation="static")
    with pytest.raises(ValueError, match="does not support cache_implementation='static'"):
        model.generate(x, generation_config=GenerationConfig(max_new_tokens=2, cache_implementation="static"))
    with pytest.raises(TypeError, match="the cache must be a BLTCache, got DynamicCache"):
        model(x, use_cache=True, **{CACHE_NAME: DynamicCache(config=model.config)})


PACKED_MODES = MODES + [dict(patching_mode="entropy_combined", patching_threshold_add=0.0),
                        dict(patching_mode="entropy_combined", patching_threshold_add=0.0, patching_meta_start=False),
                        dict(patching_mode="space", max_patch_length=3), dict(document_mask=True)]


@pytest.mark.parametrize("overrides", PACKED_MODES, ids=lambda o: "-".join(f"{v}" for v in o.values()))
@torch.no_grad()
def test_padding_free_rows_compute_each_document_alone(overrides):
    """DataCollatorWithFlattening's rows (no mask, position ids restarting at 0 per document): every byte has the
    logits it has alone. The hard slot is a document's last byte: the next slot opens a patch for the next document,
    while alone the rule may keep the last patch open, and the decoder must read the latent of that decision. Both
    decisions occur at the boundaries here (random lengths 1..8, spaces for the space rule)."""
    model = make_tiny_blt(seed=1, **overrides)
    generator, decisions = torch.Generator().manual_seed(5), []
    for _ in range(5):
        lengths = torch.randint(1, 9, (4,), generator=generator).tolist()
        documents = [random_bytes(1, n, generator)[0] for n in lengths]
        for document in documents:
            document[torch.rand(len(document), generator=generator) < 0.3] = 36  # " "
        position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
        packed = model(torch.cat(documents)[None], position_ids=position_ids).logits[0].split(lengths)
        for i, (document, logits) in enumerate(zip(documents, packed)):
            alone = model.model(document[None])
            torch.testing.assert_close(logits, model.lm_head(alone.last_hidden_state)[0].float(), atol=1e-5, rtol=0)
            decisions += [bool(alone.patch_starts[0, -1])] if i < len(documents) - 1 else []
    if overrides.get("patching_mode") != "byte":  # (every byte is a patch: the next one always opens)
        assert 0 < sum(decisions) < len(decisions), decisions


def test_padding_free_training_loss_is_the_documents_loss():
    """Trainer-style batch from DataCollatorWithFlattening: its loss is the byte-weighted mean of the documents' own."""
    from transformers import DataCollatorWithFlattening

    model = make_tiny_blt(seed=2)
    documents = [_bytes(1, n, seed=n)[0].tolist() for n in (9, 4, 12)]
    batch = DataCollatorWithFlattening()([{"input_ids": ids} for ids in documents])
    assert batch["position_ids"].shape == batch["input_ids"].shape and "attention_mask" not in batch
    loss = model(**batch).loss
    alone = [model(torch.tensor([ids]), labels=torch.tensor([ids])).loss * (len(ids) - 1) for ids in documents]
    torch.testing.assert_close(loss, sum(alone) / sum(len(ids) - 1 for ids in documents), atol=1e-5, rtol=0)
    loss.backward()
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_padding_free_rows_that_are_not_documents_are_refused():
    model = make_tiny_blt()
    ids, documents = random_bytes(1, 12), torch.cat([torch.arange(7), torch.arange(5)])[None]
    for position_ids, extra in [(torch.cat([torch.arange(7), torch.arange(3, 8)])[None], {}),  # restarts at 3
                                (torch.cat([torch.arange(2, 9), torch.arange(5)])[None], {}),  # first not at 0
                                (documents, {"use_cache": True}),
                                (documents, {"patch_lengths": torch.ones(1, 12, dtype=torch.long)})]:
        with pytest.raises(ValueError, match="padding-free packed rows .* need position_ids counting 0, 1"):
            model(ids, position_ids=position_ids, **extra)
    model(ids, position_ids=torch.arange(12)[None] + 5)  # one document's own positions (any offset) are no packing


@torch.no_grad()
def test_compiled_forward_generates_like_eager():
    """``torch.compile`` of the forward (graph breaks allowed) generates the eager bytes. The padding-free check used
    ``find_packed_sequence_indices``, which never answers None while compiling, so every ``generate()`` (no mask,
    position ids given) was refused as packed rows."""
    model = make_tiny_blt(seed=3)
    prompt, packed = _bytes(1, 12, seed=5), torch.cat([torch.arange(7), torch.arange(5)])[None]
    eager = model.generate(prompt, max_new_tokens=2, do_sample=False)  # the prefill and one cached step
    eager_packed = model(prompt, position_ids=packed).logits  # padding-free: two documents
    assert (eager_packed - model(prompt).logits).abs().max() > 1e-2
    torch._dynamo.reset()
    model.forward = torch.compile(model.forward, backend="eager")  # dynamo's tracing only, no compiler needed
    assert torch.equal(model.generate(prompt, max_new_tokens=2, do_sample=False), eager)
    torch.testing.assert_close(model(prompt, position_ids=packed).logits, eager_packed, atol=1e-6, rtol=0)


@torch.no_grad()
def test_chunked_prefill_equals_one_prefill_and_padding_over_a_filled_cache_is_refused():
    """generate(prefill_chunk_size=c, cache=BLTCache(...)) hands over each chunk's bytes alone (the old code sliced
    them away: 'not enough values to unpack'); later chunks run as multi-byte cached steps. A byte fed over a filled
    cache must be real: the cached path never reads the mask, so padding there was taken as bytes."""
    from hf_efficient_lm.blt import BLTCache

    model = make_tiny_blt(seed=3)
    prompts = [_bytes(1, n, seed=5 + i)[0] for i, n in enumerate((20, 13))]
    ids, mask = _left_padded(prompts, 20)
    kwargs = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0, output_logits=True,
                  return_dict_in_generate=True)
    reference = model.generate(ids, **kwargs)
    for chunk in (8, 9):  # longer than the 7 bytes of padding: they stay in the first chunk
        chunked = model.generate(ids, prefill_chunk_size=chunk, **{CACHE_NAME: BLTCache(model.config)}, **kwargs)
        assert torch.equal(chunked.sequences, reference.sequences)
        assert (torch.stack(chunked.logits) - torch.stack(reference.logits)).abs().max() < 1e-5
    starts = model.model(ids, attention_mask=mask).patch_starts[:, :20]
    assert int(starts[:, 8:].sum()) >= 3 and bool((~starts[:, 8:]).any())  # later chunks open and continue patches
    with pytest.raises(ValueError, match="must all be real"):  # padding reaching into the second chunk
        model.generate(ids, prefill_chunk_size=4, **{CACHE_NAME: BLTCache(model.config)}, **kwargs)
    cache = cache_of(model(ids[:, :10], attention_mask=mask[:, :10], use_cache=True))
    with pytest.raises(ValueError, match="must all be real"):
        model(ids[:, 10:], attention_mask=torch.zeros_like(ids), **{CACHE_NAME: cache})


def test_tied_head_is_refused_not_silently_untied(tmp_path):
    # No BLT model declares the tie, so tie_word_embeddings=True built a model whose head stayed separate.
    for overrides in ({"tie_word_embeddings": True}, {"entropy_config": {"tie_word_embeddings": True}}):
        with pytest.raises(ValueError, match="tie_word_embeddings must be False"):
            tiny_blt_config(**overrides)
    with pytest.raises(ValueError, match="tie_word_embeddings must be False"):
        BLTEntropyConfig(tie_word_embeddings=True)
    BLTForCausalLM(tiny_blt_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="tie_word_embeddings must be False"):
        BLTForCausalLM.from_pretrained(tmp_path, tie_word_embeddings=True)


def test_attention_mask_values_other_than_0_and_1_are_refused():
    """The mask multiplies the ids (padding hashes as byte 0), and its 0/1 check only ran when it held a 0: a mask of
    2s doubled every byte id, and a float 0.9 mask became all padding (Llama gives the same logits for both)."""
    model = make_tiny_blt(seed=0).eval()
    ids = random_bytes(2, 12, torch.Generator().manual_seed(0))
    for mask in (torch.full_like(ids, 2), torch.full(ids.shape, 0.9)):
        with pytest.raises(ValueError, match="attention_mask must hold 0/1 values"):
            model(input_ids=ids, attention_mask=mask)
        with pytest.raises(ValueError, match="attention_mask must hold 0/1 values"):
            model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    torch.testing.assert_close(model(input_ids=ids, attention_mask=torch.ones(ids.shape, dtype=torch.bool)).logits,
                               model(input_ids=ids).logits)


def test_cross_attention_backward_recomputes_its_gathered_keys():
    """In training a cross-attention keeps neither the keys/values it gathers per query group nor its fp32
    probabilities: the backward recomputes that core (what the block would keep under whole-block checkpointing),
    with the same output and gradients as keeping them (GQA: 4 heads over 2 key/value heads)."""
    config = tiny_blt_config().decoder_config
    torch.manual_seed(0)
    layer = BLTCrossAttention(config).train()
    batch, groups, slots, length = 2, 48, 4, 8  # 48 x 4 gathered slots read 8 projected states
    queries = torch.randn(batch, groups, 1, config.hidden_size, requires_grad=True)
    kv_states = torch.randn(batch, 1, length, config.hidden_size, requires_grad=True)
    kv_index = torch.randint(0, length, (batch, groups, slots))
    key_valid = torch.rand(batch, groups, slots) > 0.2

    inputs = dict(queries=queries, kv_states=kv_states, key_valid=key_valid, kv_index=kv_index)

    def run():
        out = layer(**inputs)
        grads = torch.autograd.grad(out.square().sum(), [queries, kv_states, *layer.parameters()])
        return out, grads, saved_for_backward_bytes(layer, **inputs)

    out, grads, recomputed = run()
    # the reference keeps the core's tensors: the block "checkpointed" by a function that just runs it
    layer.gradient_checkpointing, layer._gradient_checkpointing_func = True, lambda forward, *args: forward(*args)
    ref_out, ref_grads, kept = run()
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=0, atol=0)
    gathered = 2 * batch * groups * slots * config.num_key_value_heads * config.head_dim * 4  # keys + values, fp32
    assert recomputed + gathered <= kept, (recomputed, kept, gathered)
    with torch.no_grad():  # inference runs the core as it is
        torch.testing.assert_close(layer(**inputs), ref_out, rtol=0, atol=0)
