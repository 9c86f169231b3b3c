"""SconeLlama semantics: wrapping Llama, fusion modes, dedupe, table export/load equivalence, generation, errors."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from hf_efficient_lm.compat import cache_of
from hf_efficient_lm.scone import (
    CorruptTableError,
    SconeLlamaForCausalLM,
    TokenizerMismatchError,
    add_fgram_columns,
    export_fgram_table,
    mine_fgrams,
)
from hf_efficient_lm.testing_utils import save_tiny_llama
from tests.scone.conftest import make_word_tokenizer


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture
def batch(docs):
    return torch.tensor([d[:14] for d in docs if len(d) >= 14][:3])


def wrap(llama_dir, vocab, fusion, seed=0):
    torch.manual_seed(seed)
    model = SconeLlamaForCausalLM.from_pretrained(llama_dir, fgram_vocab=vocab, fgram_fusion=fusion,
                                                  fgram_num_layers=1).eval()
    if fusion == "gated":
        with torch.no_grad():
            model.model.fgram_gate.normal_()  # a trained-looking gate so the f-grams matter
    return model


@torch.no_grad()
def test_gated_wrap_is_exactly_the_base_llama_at_step_zero(llama_dir, vocab, batch):
    torch.manual_seed(0)
    model = SconeLlamaForCausalLM.from_pretrained(llama_dir, fgram_vocab=vocab, fgram_fusion="gated").eval()
    base = LlamaForCausalLM.from_pretrained(llama_dir).eval()
    assert model.config.num_fgrams == vocab.num_fgrams and model.config.max_fgram_len == vocab.max_len
    assert (model.match_fgrams(batch)[1] > 0).any()
    assert torch.equal(model(batch).logits, base(batch).logits)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(batch, **kwargs), base.generate(batch, **kwargs))


@torch.no_grad()
def test_replace_mode_uses_fgram_vectors_with_embedding_scale(llama_dir, vocab, batch):
    model = wrap(llama_dir, vocab, "replace")
    base = LlamaForCausalLM.from_pretrained(llama_dir).eval()
    rms = base.model.embed_tokens.weight.pow(2).mean().sqrt()
    torch.testing.assert_close(model.model.fgram_model.output_scale, torch.full_like(model.model.fgram_model.output_scale, float(rms)))
    rows, lengths = model.match_fgrams(batch)
    embeds = model.model.scone_embeddings(batch, rows, lengths)
    token_embeds = base.model.embed_tokens(batch)
    unmatched = lengths == 0
    assert torch.equal(embeds[unmatched], token_embeds[unmatched])
    assert not torch.allclose(embeds[~unmatched], token_embeds[~unmatched])
    assert not torch.allclose(model(batch).logits, base(batch).logits)


@pytest.mark.parametrize("fusion", ["replace", "gated"])
def test_dedupe_equals_per_position_reference(llama_dir, vocab, batch, fusion):
    """Each distinct f-gram is computed once per batch; the result (and gradients) equal running A_f per position."""
    model = wrap(llama_dir, vocab, fusion).train()
    rows, lengths = model.match_fgrams(batch)
    assert rows[lengths > 0].unique().numel() < (lengths > 0).sum()  # the batch repeats f-grams
    embeds = model.model.scone_embeddings(batch, rows, lengths)
    token_embeds = model.model.embed_tokens(batch)
    expected = token_embeds.clone()
    for b, t in (lengths >= 2).nonzero().tolist():
        n = int(lengths[b, t])
        vector = model.model.fgram_model(token_embeds[b, t - n + 1:t + 1][None], torch.tensor([n]))[0]
        expected[b, t] = vector if fusion == "replace" else token_embeds[b, t] + model.model.fgram_gate * vector
    torch.testing.assert_close(embeds, expected, atol=1e-6, rtol=1e-5)
    grad_dedupe = torch.autograd.grad(embeds.square().sum(), model.model.fgram_model.position_embedding.weight)[0]
    grad_ref = torch.autograd.grad(expected.square().sum(), model.model.fgram_model.position_embedding.weight)[0]
    torch.testing.assert_close(grad_dedupe, grad_ref, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("fusion", ["replace", "gated"])
def test_table_mode_equals_training_path(tmp_path, llama_dir, vocab, batch, fusion):
    from safetensors import safe_open

    model = wrap(llama_dir, vocab, fusion).train()  # (exported mid-training, e.g. from a callback)
    out = export_fgram_table(model, tmp_path / "table", batch_size=16, show_progress=False)
    assert model.training and model.model.fgram_model.training  # exporting evaluates, then gives the mode back
    model.eval()
    files = sorted(p.name for p in out.iterdir())
    assert "fgram_table.safetensors" in files and "fgram_index.safetensors" in files
    assert not [f for f in files if f.endswith(".tmp")]
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert not [k for k in handle.keys() if "fgram_model" in k or "table" in k]
    # rows of the table are A_f of each f-gram's tokens (read back with the safetensors library)
    with safe_open(str(out / "fgram_table.safetensors"), "pt") as handle:
        table = handle.get_slice("table")
        picked = table[[0, 5, vocab.num_fgrams - 1]]
    tokens, lens = vocab.fgram_tokens(torch.tensor([0, 5, vocab.num_fgrams - 1]))
    with torch.no_grad():
        for i in range(3):
            window = model.model.embed_tokens(tokens[i, :lens[i]])[None]
            torch.testing.assert_close(picked[i], model.model.fgram_model(window, lens[i:i + 1])[0], atol=1e-6, rtol=0)

    loaded = SconeLlamaForCausalLM.from_pretrained(out).eval()
    assert loaded.config.fgram_mode == "table" and loaded.model.fgram_model is None
    assert not any("fgram_model" in name for name, _ in loaded.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logits, model(batch).logits, atol=1e-5, rtol=0)
    # Auto class and save_pretrained carry the table as a file
    auto = AutoModelForCausalLM.from_pretrained(out).eval()
    auto.save_pretrained(tmp_path / "copy")
    copy = SconeLlamaForCausalLM.from_pretrained(tmp_path / "copy").eval()
    assert (tmp_path / "copy" / "fgram_table.safetensors").stat().st_size == (out / "fgram_table.safetensors").stat().st_size
    with torch.no_grad():
        torch.testing.assert_close(copy(batch).logits, model(batch).logits, atol=1e-5, rtol=0)


@torch.no_grad()
def test_bf16_table_is_close(tmp_path, llama_dir, vocab, batch):
    model = wrap(llama_dir, vocab, "gated")
    out = export_fgram_table(model, tmp_path / "bf16", dtype=torch.bfloat16, show_progress=False)
    loaded = SconeLlamaForCausalLM.from_pretrained(out).eval()
    assert loaded.fgram_table.dtype == torch.bfloat16
    torch.testing.assert_close(loaded(batch).logits, model(batch).logits, atol=5e-2, rtol=0)
    # without dtype=, the table takes the model's dtype
    from safetensors import safe_open

    out = export_fgram_table(model.to(torch.bfloat16), tmp_path / "model_dtype", show_progress=False)
    with safe_open(str(out / "fgram_table.safetensors"), "pt") as handle:
        assert handle.get_slice("table").get_dtype() == "BF16"


@torch.no_grad()
def test_table_generation_with_cache_and_left_padding(tmp_path, llama_dir, vocab, docs):
    model = wrap(llama_dir, vocab, "replace")
    table = SconeLlamaForCausalLM.from_pretrained(export_fgram_table(model, tmp_path / "t", show_progress=False)).eval()
    long_docs = [d for d in docs if len(d) >= 10]
    long_row, short_row = torch.tensor(long_docs[1][:10]), torch.tensor(long_docs[2][:6])
    padded = torch.zeros(2, 10, dtype=torch.long)
    padded[0], padded[1, 4:] = long_row, short_row
    mask = (torch.arange(10) >= torch.tensor([[0], [4]])).long()
    common = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    cached = table.generate(padded, attention_mask=mask, use_cache=True, **common)
    assert torch.equal(cached, table.generate(padded, attention_mask=mask, use_cache=False, **common))
    assert torch.equal(cached, model.generate(padded, attention_mask=mask, **common))  # training path agrees
    for row, alone in enumerate((long_row, short_row)):
        expected = table.generate(alone[None], **common)[0, alone.numel():]
        assert torch.equal(cached[row, 10:], expected)
    # one decode step by hand: matches of the new token reach back into the history
    full = cached[:1]
    rows, lengths = table.match_fgrams(full)
    prefix = table(full[:, :-1], use_cache=True)
    step = table(full[:, -1:], past_key_values=cache_of(prefix), fgram_row=rows[:, -1:], fgram_len=lengths[:, -1:])
    torch.testing.assert_close(step.logits[:, -1], table(full).logits[:, -1], atol=1e-5, rtol=0)


def test_trainer_uses_precomputed_fgram_columns(tmp_path, llama_dir, vocab, docs):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    blocks = [d[:12] for d in docs if len(d) >= 12][:8]
    dataset = add_fgram_columns(Dataset.from_dict({"input_ids": blocks, "labels": blocks}), vocab)
    ids = torch.tensor(blocks)
    rows, lengths = vocab.match(ids)
    assert torch.equal(torch.tensor(dataset["fgram_row"]), rows)
    assert torch.equal(torch.tensor(dataset["fgram_len"]), lengths)
    model = wrap(llama_dir, vocab, "replace")
    with torch.no_grad():
        on_the_fly = model(ids, labels=ids).loss
        precomputed = model(ids, labels=ids, fgram_row=rows, fgram_len=lengths).loss
    torch.testing.assert_close(on_the_fly, precomputed)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2,
                             save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    fgram_weight_before = model.model.fgram_model.layers[0].mlp.up_proj.weight.detach().clone()
    seen_columns = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen_columns.append(kwargs.get("fgram_row") is not None), with_kwargs=True
    )
    Trainer(model=model, args=args, train_dataset=dataset).train()
    hook.remove()
    assert seen_columns and all(seen_columns), "Trainer must keep the precomputed fgram columns"
    with torch.no_grad():
        assert model(ids, labels=ids).loss < on_the_fly - 0.05
    assert not torch.equal(model.model.fgram_model.layers[0].mlp.up_proj.weight, fgram_weight_before)


# ---------------------------------------------------------------------------------------------------------- errors
def test_inputs_embeds_without_ids_is_rejected(llama_dir, vocab):
    model = wrap(llama_dir, vocab, "gated")
    with pytest.raises(ValueError, match="needs input_ids"):
        model(inputs_embeds=torch.zeros(1, 3, model.config.hidden_size))
    with pytest.raises(ValueError, match="inputs_embeds"):
        model.generate(inputs_embeds=torch.zeros(1, 3, model.config.hidden_size), max_new_tokens=2)


def test_a_4d_mask_or_a_mask_of_another_width_is_refused_for_matching(llama_dir, vocab, batch):
    """A 4-D mask reached the Llama layers but f-gram matching ignored it (padding joined f-grams with real tokens: 0.38
    off the row alone); match_last cut a mask of another width to fit."""
    model = wrap(llama_dir, vocab, "gated")
    four_d = torch.zeros(batch.shape[0], 1, batch.shape[1], batch.shape[1])
    with pytest.raises(ValueError, match="2-D padding mask"):
        model(batch, attention_mask=four_d)
    with pytest.raises(ValueError, match="attention_mask shape"):
        vocab.match_last(batch, 1, torch.ones(batch.shape[0], batch.shape[1] + 5, dtype=torch.long))


def test_float_fgram_matches_are_refused(llama_dir, vocab, batch):
    """Float fgram_row / fgram_len (a collator that casts columns) were cast with .long(): row 2.7 read as row 2."""
    model = wrap(llama_dir, vocab, "gated")
    rows, lengths = model.match_fgrams(batch)
    assert bool((lengths >= 2).any())  # the rows name real f-grams, so a truncation would change the output
    for bad in ({"fgram_row": rows.float() + 0.7, "fgram_len": lengths}, {"fgram_row": rows, "fgram_len": lengths.float()}):
        with pytest.raises(ValueError, match="must be integer ids with the shape of input_ids"):
            model(batch, **bad)


def test_cache_without_fgram_matches_is_rejected(llama_dir, vocab, batch):
    model = wrap(llama_dir, vocab, "gated")
    prefix = model(batch[:, :-1], use_cache=True)
    with pytest.raises(ValueError, match="fgram_row/fgram_len"):
        model(batch[:, -1:], past_key_values=cache_of(prefix))


def test_a_cache_without_token_history_is_named(llama_dir, vocab, batch):
    """Continuous batching (generate_batch) hands the model a PagedAttentionCache, which has no sequence length and
    no per-sequence history: named instead of an AttributeError from deep inside the forward."""

    class PagedAttentionCache:  # stands in for transformers' paged cache (no get_seq_length)
        pass

    model = wrap(llama_dir, vocab, "gated")
    with pytest.raises(TypeError, match="cannot decode over a PagedAttentionCache"):
        model(batch, past_key_values=PagedAttentionCache())


@pytest.fixture(scope="module")
def exported(tmp_path_factory, llama_dir, vocab):
    out = tmp_path_factory.mktemp("exported") / "model"
    export_fgram_table(wrap(llama_dir, vocab, "gated"), out, show_progress=False)
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@torch.no_grad()
def test_from_pretrained_reads_side_files_from_a_local_subfolder(tmp_path, llama_dir, vocab, batch, exported):
    """``subfolder=`` reaches the f-gram index, the table and a wrapped Llama's files, as it does the weights."""
    trained = wrap(llama_dir, vocab, "gated")
    trained.save_pretrained(tmp_path / "model_mode" / "model")
    _copy(exported, tmp_path / "table_mode" / "model")
    _copy(llama_dir, tmp_path / "llama" / "model")
    for parent, reference in (("model_mode", trained), ("table_mode", SconeLlamaForCausalLM.from_pretrained(exported))):
        loaded = SconeLlamaForCausalLM.from_pretrained(tmp_path / parent, subfolder="model").eval()
        assert torch.equal(loaded(batch).logits, reference.eval()(batch).logits), parent
    torch.manual_seed(0)
    wrapped = SconeLlamaForCausalLM.from_pretrained(tmp_path / "llama", subfolder="model", fgram_vocab=vocab,
                                                    fgram_num_layers=1)
    rms = LlamaForCausalLM.from_pretrained(llama_dir).model.embed_tokens.weight.pow(2).mean().sqrt()
    # a wrapped Llama's output scale is set from its embeddings; a SconeLlama folder's (model_mode above) is kept
    torch.testing.assert_close(wrapped.model.fgram_model.output_scale, torch.full_like(wrapped.model.fgram_model.output_scale, float(rms)))


@torch.no_grad()
def test_table_mode_model_deep_copies_and_pickles_by_reopening_its_table(tmp_path, exported, batch):
    """copy.deepcopy / torch.save (TRL reference models, merge_and_unload on a copy, quantize_dynamic) reopen the
    memory-mapped table from its file instead of failing on the map or copying the table into memory. After a
    generate() too, whose decode-step matcher keeps memoryviews in the vocabulary (they failed to pickle)."""
    import copy
    import io
    import pickle

    model = SconeLlamaForCausalLM.from_pretrained(exported).eval()
    expected = model(batch).logits
    generated = model.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=4, do_sample=False)
    assert model.fgram_vocab._python_levels is not None  # the decode-step matcher's state exists now
    assert len(pickle.dumps(model.fgram_table)) < 1024  # its path, not its rows
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for twin in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        assert twin.fgram_table is not model.fgram_table and twin.fgram_table.path == model.fgram_table.path
        assert torch.equal(twin(batch).logits, expected)
        assert torch.equal(twin.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=4,
                                         do_sample=False), generated)


def test_export_refuses_a_peft_wrapper_and_names_the_merge(tmp_path, llama_dir, vocab):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(wrap(llama_dir, vocab, "gated"), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="merge_and_unload"):
        export_fgram_table(peft_model, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_truncated_or_corrupt_table_is_rejected(tmp_path, exported):
    folder = _copy(exported, tmp_path / "m")
    table = folder / "fgram_table.safetensors"
    data = table.read_bytes()
    table.write_bytes(data[:-100])
    with pytest.raises(CorruptTableError, match="truncated"):
        SconeLlamaForCausalLM.from_pretrained(folder)
    table.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(CorruptTableError, match="header length"):
        SconeLlamaForCausalLM.from_pretrained(folder)
    table.unlink()
    with pytest.raises(FileNotFoundError, match="fgram_table.safetensors"):
        SconeLlamaForCausalLM.from_pretrained(folder)


def test_num_fgrams_and_hidden_size_mismatch_are_rejected(tmp_path, exported, llama_dir, docs):
    # a table with other S: vocabulary and table from a differently mined set
    folder = _copy(exported, tmp_path / "s")
    config = json.loads((folder / "config.json").read_text())
    config["num_fgrams"] += 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="num_fgrams"):
        SconeLlamaForCausalLM.from_pretrained(folder)
    # a table of another width next to the weights
    wide_llama = save_tiny_llama(tmp_path / "wide_llama", hidden_size=48, num_attention_heads=4)
    small = mine_fgrams(docs, num_fgrams=150, max_len=4, min_count=3, barrier_ids=(0, 1, 2), vocab_size=128,
                        show_progress=False)
    wide = SconeLlamaForCausalLM.from_pretrained(wide_llama, fgram_vocab=small, fgram_num_layers=1)
    wide_out = export_fgram_table(wide, tmp_path / "wide", show_progress=False)
    folder = _copy(exported, tmp_path / "h")
    (folder / "fgram_table.safetensors").write_bytes((wide_out / "fgram_table.safetensors").read_bytes())
    with pytest.raises(ValueError, match="hidden_size"):
        SconeLlamaForCausalLM.from_pretrained(folder)
    # a vocabulary of another size than the config
    other = mine_fgrams(docs, num_fgrams=20, max_len=4, min_count=3, vocab_size=128, show_progress=False)
    model = SconeLlamaForCausalLM.from_pretrained(exported)
    with pytest.raises(ValueError, match="S=20"):
        model.set_fgram_vocab(other)


def test_tokenizer_fingerprint_mismatch_is_rejected(tmp_path):
    words = [f"w{i}" for i in range(40)]
    tokenizer, other = make_word_tokenizer(words), make_word_tokenizer(words[::-1])
    llama_dir = save_tiny_llama(tmp_path / "llama", vocab_size=64)
    tokenizer.save_pretrained(llama_dir)
    texts = ["w1 w2 w3 w4 w5 w1 w2 w3"] * 6
    good = mine_fgrams([tokenizer(t)["input_ids"] for t in texts], num_fgrams=8, tokenizer=tokenizer,
                       show_progress=False)
    bad = mine_fgrams([other(t)["input_ids"] for t in texts], num_fgrams=8, tokenizer=other, show_progress=False)
    SconeLlamaForCausalLM.from_pretrained(llama_dir, fgram_vocab=good)
    with pytest.raises(TokenizerMismatchError, match="fingerprint mismatch"):
        SconeLlamaForCausalLM.from_pretrained(llama_dir, fgram_vocab=bad)


def test_wrapping_without_vocabulary_is_rejected(llama_dir):
    with pytest.raises(ValueError, match="fgram_vocab"):
        SconeLlamaForCausalLM.from_pretrained(llama_dir)


def test_paper_recipe_is_replace_fusion_with_the_raw_last_position_output(tmp_path, llama_dir, vocab, batch):
    """FGRAM_RECIPES["paper"]: no final norm, no output scale (neither parameter exists), the matched position's input
    vector is A_f's last-layer hidden state at the window's last token; table mode equals it and the fields reload."""
    from hf_efficient_lm.scone import FGRAM_RECIPES

    torch.manual_seed(0)
    model = SconeLlamaForCausalLM.from_pretrained(llama_dir, fgram_vocab=vocab, fgram_num_layers=1,
                                                  **FGRAM_RECIPES["paper"]).eval()
    names = [name for name, _ in model.named_parameters()]
    assert not [n for n in names if "fgram_model.norm" in n or "output_scale" in n or "fgram_gate" in n], names
    fgram_model = model.model.fgram_model
    captured = {}
    fgram_model.layers[-1].register_forward_hook(lambda module, args, output: captured.update(hidden=output))
    rows, lengths = model.match_fgrams(batch)
    assert (lengths > 0).any()
    with torch.no_grad():
        embeds = model.model.scone_embeddings(batch, rows, lengths)
        b, t = (lengths >= 2).nonzero()[0].tolist()
        n = int(lengths[b, t])
        vector = fgram_model(model.model.embed_tokens(batch[b, t - n + 1:t + 1])[None], torch.tensor([n]))[0]
    hidden = captured["hidden"][0] if isinstance(captured["hidden"], tuple) else captured["hidden"]
    assert torch.equal(vector, hidden[0, n - 1])
    torch.testing.assert_close(embeds[b, t], vector, atol=1e-6, rtol=1e-5)
    out = export_fgram_table(model, tmp_path / "paper", batch_size=16, show_progress=False)
    loaded = SconeLlamaForCausalLM.from_pretrained(out).eval()
    assert (loaded.config.fgram_final_norm, loaded.config.fgram_output_scale) == (False, False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logits, model(batch).logits, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="fgram_final_norm must be True or False"):
        SconeLlamaForCausalLM.from_pretrained(llama_dir, fgram_vocab=vocab, fgram_final_norm="no")


def test_identity_init_makes_the_paper_replace_wrap_the_base_llama_and_survives_reload(tmp_path, llama_dir, vocab,
                                                                                       batch):
    """fgram_init="identity": A_f's output starts as the token embedding it replaces, so the paper's replace fusion
    wrapping a Llama gives the base's logits at step 0 (the default random init does not); the zeroed weights are
    then trained like any other, and loading a trained SconeLlama must not zero them again."""
    from hf_efficient_lm.scone import FGRAM_RECIPES

    base = LlamaForCausalLM.from_pretrained(llama_dir).eval()
    rows, lengths = SconeLlamaForCausalLM.from_pretrained(llama_dir, fgram_vocab=vocab).match_fgrams(batch)
    assert (lengths >= 2).float().mean() > 0.3  # the replaced positions are a real share of the batch
    torch.manual_seed(0)
    random = SconeLlamaForCausalLM.from_pretrained(llama_dir, fgram_vocab=vocab, fgram_num_layers=2,
                                                   **FGRAM_RECIPES["paper"]).eval()
    torch.manual_seed(0)
    model = SconeLlamaForCausalLM.from_pretrained(llama_dir, fgram_vocab=vocab, fgram_num_layers=2,
                                                  fgram_init="identity", **FGRAM_RECIPES["paper"]).eval()
    with torch.no_grad():
        expected = base(batch).logits
        assert (random(batch).logits - expected).abs().max() > 1e-3  # random init: the wrap moves the logits
        torch.testing.assert_close(model(batch).logits, expected, atol=1e-5, rtol=1e-5)
        embeds = model.model.scone_embeddings(batch, rows, lengths)
        torch.testing.assert_close(embeds, base.model.embed_tokens(batch), atol=1e-6, rtol=1e-6)
        fgram = model.model.fgram_model
        assert fgram.layers[0].self_attn.q_proj.weight.std() > 0  # only the residual branches' outputs start at 0
        for layer in fgram.layers:  # stand-in for training: every parameter becomes non-zero
            layer.self_attn.o_proj.weight.normal_(0, 0.05)
            layer.mlp.down_proj.weight.normal_(0, 0.05)
        fgram.position_embedding.weight.normal_(0, 0.05)
        trained = model(batch).logits
    assert (trained - expected).abs().max() > 1e-3
    model.save_pretrained(tmp_path / "trained")
    loaded = SconeLlamaForCausalLM.from_pretrained(tmp_path / "trained").eval()
    assert loaded.config.fgram_init == "identity"
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logits, trained, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="fgram_init must be"):
        SconeLlamaForCausalLM.from_pretrained(llama_dir, fgram_vocab=vocab, fgram_init="zeros")
    with pytest.raises(ValueError, match="fgram_init must be"):
        SconeLlamaForCausalLM.from_pretrained(llama_dir, fgram_vocab=vocab, fgram_init="identity",
                                              fgram_hidden_size=16)


def test_peft_per_row_adapters_reach_the_backbone_only():
    """PEFT's mixed adapter batches (``adapter_names=[...]``) pair adapter i with row i in every LoRA layer, but the
    f-gram model's rows are the distinct matched f-grams. LoRA on ``q_proj`` / ``v_proj`` names its layers too, so PEFT
    paired adapters with the wrong f-grams: silently where their count equalled the batch's (these ids: one 2-gram per
    row, 0.22 off), else with its own shape error. That is refused by name; with LoRA on the backbone only, each row
    gets what its adapter gives it alone."""
    from tests.contract.case_scone import make_scone_input_ids, make_scone_model
    from tests.helpers import only_adapter, two_lora_adapters

    with pytest.raises(ValueError, match="per-row adapters .*cannot reach the f-gram model"):
        two_lora_adapters(make_scone_model(), ["q_proj", "v_proj"])(input_ids=torch.tensor([[61, 64], [82, 85]]),
                                                                     adapter_names=["first", "second"])

    # the message's remedy: LoRA on the backbone's projections only
    model = two_lora_adapters(make_scone_model(), r"model\.layers\.\d+\..*_proj")
    assert not any("lora_" in name for name, _ in model.base_model.model.model.fgram_model.named_parameters())
    ids = make_scone_input_ids(2, 10, torch.Generator().manual_seed(3))
    assert int((model.base_model.model.match_fgrams(ids)[1] > 0).sum()) == 14  # of 20 positions end an f-gram
    common = dict(max_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_logits=True)
    mixed = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=["second", "first"],
                           **common)
    for row, name in enumerate(["second", "first"]):
        with only_adapter(model, name):
            alone = model.generate(input_ids=ids[row:row + 1], attention_mask=torch.ones_like(ids[row:row + 1]),
                                   **common)
        assert torch.equal(mixed.sequences[row], alone.sequences[0])
        for step_mixed, step_alone in zip(mixed.logits, alone.logits):
            torch.testing.assert_close(step_mixed[row], step_alone[0], atol=1e-5, rtol=0)
