"""Continual pre-training pipeline (EP full fine-tune with resume, AC with LoRA) on a tiny base."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, TrainingArguments

from hf_efficient_lm.compat import cache_of
from hf_efficient_lm.tools.anchor_continual import AnchorTrainArguments, run_anchor_training
from hf_efficient_lm.testing_utils import save_tiny_llama

TEXTS = [
    "The cat sat on the mat. The dog ran! Did it rain?\nYes it did.",
    "A tiny model reads short sentences. Each one ends with a period. It learns.",
] * 4


@pytest.fixture()
def base_and_data(tmp_path, tiny_bpe_tokenizer):
    base = save_tiny_llama(tmp_path / "base", vocab_size=len(tiny_bpe_tokenizer))
    tiny_bpe_tokenizer.save_pretrained(base)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return base, data


def _training_args(out, steps):
    return TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=2, learning_rate=1e-3, save_steps=2,
        logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True,
    )


def test_ep_training_saves_and_resumes(tmp_path, base_and_data):
    base, data = base_and_data
    args = AnchorTrainArguments(base_model=str(base), data_files=[str(data)], anchor_mode="ep", max_length=64)
    final = run_anchor_training(args, _training_args(tmp_path / "run", 2))
    metrics = json.loads((final / "anchor_train_metrics.json").read_text())
    assert metrics["steps"] == 2 and len(metrics["anchor_token_ids"]) == 1  # the paper's EP anchor: the bare "."
    assert 0 < metrics["train_tokens"] <= 2 * 2 * 64  # the real tokens of 2 steps of 2 documents (<= 64 tokens each)
    # a second call with a larger budget resumes from checkpoint-2 instead of starting over
    final = run_anchor_training(args, _training_args(tmp_path / "run", 3))
    metrics = json.loads((final / "anchor_train_metrics.json").read_text())
    assert metrics["steps"] == 3
    history = json.loads((tmp_path / "run" / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    # step 2's learning rate is the 2-step schedule's (5e-4), not a fresh 3-step run's (6.7e-4): it was resumed; step
    # 3's is the 3-step schedule's at step 3 (3.3e-4), not the rate the 2-step schedule ended on (0: a step that
    # changed nothing)
    assert [h["learning_rate"] for h in history if "loss" in h] == pytest.approx([1e-3, 5e-4, 1e-3 / 3])
    model = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True)
    assert model.config.model_type == "hfelm_anchor_llama" and model.config.anchor_mode == "ep"
    # another base model of the same config and tokenizer: another run (it continued the old one, "fingerprint matches")
    other = tmp_path / "other_base"
    shutil.copytree(base, other)
    weights = load_file(other / "model.safetensors")
    save_file({name: tensor + 0.01 for name, tensor in weights.items()}, other / "model.safetensors")
    other_args = AnchorTrainArguments(base_model=str(other), data_files=[str(data)], anchor_mode="ep", max_length=64)
    with pytest.raises(ValueError, match="different run .*base_weights"):
        run_anchor_training(other_args, _training_args(tmp_path / "run", 4))


def test_ac_training_with_lora_merges_and_keeps_the_new_token(tmp_path, base_and_data):
    base, data = base_and_data
    args = AnchorTrainArguments(base_model=str(base), data_files=[str(data)], anchor_mode="ac", max_length=64,
                                lora_r=4)
    final = run_anchor_training(args, _training_args(tmp_path / "run", 2))
    model = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(final)
    ac_id = tok.convert_tokens_to_ids("<AC>")
    assert model.config.anchor_token_ids == [ac_id] and model.config.vocab_size == len(tok)
    assert not any("lora" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        cache = cache_of(model(torch.tensor([[1, 50, 60, ac_id, 70, 80]]), use_cache=True))
    assert cache.cached_tokens() == 3  # <AC> + the two tokens after it


def test_ac_lora_on_a_tied_base_trains_one_matrix_and_stays_tied(tmp_path, tiny_bpe_tokenizer):
    """A base whose input and output embeddings are tied (Llama 3.2 1B), trained in AC mode with LoRA. PEFT trained
    two copies of the matrix; with PEFT 0.18 the merged model still said tie_word_embeddings, so a later
    resize_token_embeddings re-tied the two and dropped the trained head (logits moved by ~0.8). Now the one matrix
    trains and the final model stays tied, so resizing keeps its logits."""
    base = save_tiny_llama(tmp_path / "base", vocab_size=len(tiny_bpe_tokenizer), tie_word_embeddings=True)
    tiny_bpe_tokenizer.save_pretrained(base)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    args = AnchorTrainArguments(base_model=str(base), data_files=[str(data)], anchor_mode="ac", max_length=64,
                                lora_r=4)
    final = run_anchor_training(args, _training_args(tmp_path / "run", 2))
    model = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True).eval()
    embedding = model.get_input_embeddings().weight
    assert model.config.tie_word_embeddings and embedding is model.get_output_embeddings().weight
    base_embedding = AutoModelForCausalLM.from_pretrained(base).get_input_embeddings().weight
    assert not torch.equal(embedding[: len(base_embedding)], base_embedding)  # the matrix trained
    ids = torch.tensor([[1, 50, 60, model.config.anchor_token_ids[0], 70, 80]])
    with torch.no_grad():
        before = model(ids).logits
        model.resize_token_embeddings(model.config.vocab_size + 8)
        torch.testing.assert_close(model(ids).logits[..., : before.shape[-1]], before, atol=1e-6, rtol=0)


def test_another_runs_dir_is_refused_and_overwrite_starts_fresh(tmp_path, base_and_data):
    base, data = base_and_data
    args = AnchorTrainArguments(base_model=str(base), data_files=[str(data)], anchor_mode="ep", max_length=64)
    run_anchor_training(args, _training_args(tmp_path / "run", 2))
    other_data = tmp_path / "other.jsonl"
    other_data.write_text("".join(json.dumps({"text": t.upper()}) + "\n" for t in TEXTS))
    other = AnchorTrainArguments(base_model=str(base), data_files=[str(other_data)], anchor_mode="ep", max_length=64)
    with pytest.raises(ValueError, match="different run .*data_files"):
        run_anchor_training(other, _training_args(tmp_path / "run", 2))
    ac = AnchorTrainArguments(base_model=str(base), data_files=[str(data)], anchor_mode="ac", max_length=64)
    with pytest.raises(ValueError, match="different run .*anchor_mode"):
        run_anchor_training(ac, _training_args(tmp_path / "run", 2))
    other.overwrite_output_dir = True
    final = run_anchor_training(other, _training_args(tmp_path / "run", 2))
    metrics = json.loads((final / "anchor_train_metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["data_files"] == ["other.jsonl"] and metrics["resumed_from"] is None


def test_validation_perplexity_is_token_weighted_over_documents_of_different_lengths(tmp_path, base_and_data):
    """eval_perplexity_ansan (published on the model card as "perplexity") was exp of Trainer's eval_loss, which
    weights each batch's mean by its rows: not the per-token figure once documents differ in length."""
    from hf_efficient_lm.tools.anchor_data import tokenize_function

    base, data = base_and_data
    valid = tmp_path / "valid.jsonl"
    texts = ["Short one. Yes.", "A much longer validation document. It has several sentences. Each ends here. And "
             "one more sentence follows it. Done.", "Medium length text here. Two sentences."]
    valid.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    args = AnchorTrainArguments(base_model=str(base), data_files=[str(data)], validation_files=[str(valid)],
                                anchor_mode="ep", max_length=64)
    training_args = _training_args(tmp_path / "run", 1)
    training_args.per_device_eval_batch_size = 2
    final = run_anchor_training(args, training_args)
    metrics = json.loads((final / "anchor_train_metrics.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(final)
    rows = tokenize_function(tok, "ep", None, 64, "text")({"text": texts})["input_ids"]
    nats = tokens = 0
    with torch.no_grad():
        for row in rows:  # each document alone: its own per-token NLL
            ids = torch.tensor([row])
            nats += torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="sum").item()
            tokens += len(row) - 1
    assert len({len(row) for row in rows}) == 3
    assert metrics["eval_perplexity_ansan"] == pytest.approx(float(torch.tensor(nats / tokens).exp()), rel=1e-4)


def test_endpoint_options_choose_the_ep_anchor_tokens(base_and_data):
    """--endpoints and --endpoint_match reach find_endpoint_token_ids: on this tokenizer the default is the bare "."
    (one id), "! ?" are two other ids, and suffix matching adds "!", "?" and the newline to "."."""
    from transformers import AutoTokenizer

    from hf_efficient_lm.anchor import find_endpoint_token_ids
    from hf_efficient_lm.tools.anchor_continual import build_anchor_model

    base, _ = base_and_data
    tok = AutoTokenizer.from_pretrained(base)
    default = find_endpoint_token_ids(tok)
    chosen = {
        "endpoints": (dict(endpoints=["!", "?"]), find_endpoint_token_ids(tok, ("!", "?"))),
        "suffix": (dict(endpoint_match="suffix"), find_endpoint_token_ids(tok, match="suffix")),
    }
    for name, (options, expected) in chosen.items():
        assert expected != default, name  # (else the option would not show)
        model, _ = build_anchor_model(AnchorTrainArguments(base_model=str(base), anchor_mode="ep", **options))
        assert model.config.anchor_token_ids == expected, name
    assert len(chosen["suffix"][1]) == 4 and set(chosen["endpoints"][1]) < set(chosen["suffix"][1])


def test_ac_options_name_and_initialise_the_new_anchor_token(base_and_data):
    """--anchor_token names the added token; --ac_init mean sets its rows to the mean of the existing rows (the
    default copies "."'s)."""
    from hf_efficient_lm.tools.anchor_continual import build_anchor_model

    base, _ = base_and_data
    old = AutoModelForCausalLM.from_pretrained(base)
    args = AnchorTrainArguments(base_model=str(base), anchor_mode="ac", anchor_token="<ANC>", ac_init="mean")
    model, tok = build_anchor_model(args)
    anchor = tok.convert_tokens_to_ids("<ANC>")
    assert anchor != tok.unk_token_id and model.config.anchor_token_ids == [anchor]
    assert tok.convert_tokens_to_ids("<AC>") in (None, tok.unk_token_id)  # the default token was not added
    for new, before in ((model.get_input_embeddings(), old.get_input_embeddings()),
                        (model.get_output_embeddings(), old.get_output_embeddings())):
        torch.testing.assert_close(new.weight[anchor], before.weight.mean(dim=0))
    period = tok.convert_tokens_to_ids(".")
    assert not torch.allclose(old.get_input_embeddings().weight[period], new.weight[anchor])


def test_no_anchor_mode_is_plain_causal_training_on_the_chosen_column_and_documents(tmp_path, base_and_data):
    """--anchor_mode none (the baseline of the anchor runs) keeps no anchor: the trained model's logits are those
    of a LlamaForCausalLM with its weights. --text_column and --max_documents choose what it trains on (the
    validation files are read whole)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from hf_efficient_lm.tools.anchor_data import tokenize_function
    from tests.helpers import write_jsonl

    base, _ = base_and_data
    data = write_jsonl(tmp_path / "body.jsonl", TEXTS, column="body")
    valid_texts = ["Short one. Yes.", "Medium length text here. Two sentences.", "A third. It is here!", "Four."]
    valid = write_jsonl(tmp_path / "valid.jsonl", valid_texts, column="body")
    args = AnchorTrainArguments(base_model=str(base), data_files=[str(data)], validation_files=[str(valid)],
                                anchor_mode="none", max_length=64, text_column="body", max_documents=3)
    final = run_anchor_training(args, _training_args(tmp_path / "run", 1))
    metrics = json.loads((final / "anchor_train_metrics.json").read_text())
    assert metrics["documents"] == 3 and metrics["anchor_token_ids"] == [] and metrics["train_tokens"] > 2 * 10
    model = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True).eval()
    assert model.config.model_type == "hfelm_anchor_llama" and model.config.anchor_token_ids == []
    llama = LlamaForCausalLM.from_pretrained(final).eval()
    ids = torch.tensor([[1, 50, 16, 60, 16, 70, 80]])  # (16 is "." here: an anchor in EP mode)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, llama(ids).logits)
        assert cache_of(model(ids, use_cache=True)).get_seq_length() == ids.shape[1]
        tok = AutoTokenizer.from_pretrained(final)
        rows = tokenize_function(tok, "ep", None, 64, "body")({"body": valid_texts})["input_ids"]
        nats = sum(llama(torch.tensor([row]), labels=torch.tensor([row])).loss.item() * (len(row) - 1) for row in rows)
    tokens = sum(len(row) - 1 for row in rows)
    assert metrics["eval_perplexity_ansan"] == pytest.approx(math.exp(nats / tokens), rel=1e-4)


def test_lora_options_choose_the_adapted_modules_and_their_scale(tmp_path, base_and_data):
    """--lora_target_modules: only those weights of the merged model move. --lora_alpha: after one step B is the
    same for every alpha (Adam's first step is lr * sign(grad), and alpha only scales the gradient), so the merged
    change (alpha / r) * B @ A doubles with alpha."""
    base, data = base_and_data
    weights = load_file(base / "model.safetensors")
    deltas = {}
    for alpha in (16, 32):
        args = AnchorTrainArguments(base_model=str(base), data_files=[str(data)], anchor_mode="ep", max_length=64,
                                    lora_r=4, lora_alpha=alpha, lora_target_modules=["v_proj"])
        final = run_anchor_training(args, _training_args(tmp_path / f"alpha{alpha}", 1))
        trained = load_file(final / "model.safetensors")
        moved = {name for name, tensor in weights.items() if not torch.equal(trained[name], tensor)}
        assert moved and all("v_proj" in name for name in moved), moved
        assert len(moved) == sum("v_proj" in name for name in weights)  # every layer's v_proj
        deltas[alpha] = torch.cat([(trained[name] - weights[name]).flatten() for name in sorted(moved)])
    torch.testing.assert_close(deltas[32], 2 * deltas[16], atol=1e-6, rtol=1e-3)
