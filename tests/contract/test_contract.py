"""The table-driven contract: every model class of the package (and Llama, the reference) passes every check.

Cases come from ``tests/contract/case_*.py`` modules (a module-level ``CASES`` list of ``ContractCase``).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig,
                          PreTrainedModel, Trainer, TrainingArguments, pipeline)
from transformers.generation.continuous_batching.requests import RequestStatus

import hf_efficient_lm  # noqa: F401  (registers the families)
from hf_efficient_lm.compat import CACHE_NAME
from hf_efficient_lm.eval.speed import saved_for_backward_bytes
from tests.contract.common import CHECKS, PEFT_CACHE_NAME, ContractCase
from tests.helpers import forced_thread_switches, only_adapter, two_lora_adapters


def _discover_cases() -> list[ContractCase]:
    cases = []
    for path in sorted(Path(__file__).parent.glob("case_*.py")):
        module = importlib.import_module(f"tests.contract.{path.stem}")
        cases.extend(module.CASES)
    names = [case.name for case in cases]
    if len(names) != len(set(names)):
        raise ValueError(f"duplicate contract case names: {names}")
    return cases


CASES = _discover_cases()
parametrize_cases = pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])


def _skip_if_declared(case: ContractCase, check: str) -> None:
    assert check in CHECKS
    if check in case.skips:
        pytest.skip(f"{case.name} does not apply {check}: {case.skips[check]}")


def _ids(case: ContractCase, batch: int = 2, length: int = 12, seed: int = 0) -> torch.LongTensor:
    return case.make_input_ids(batch, length, torch.Generator().manual_seed(seed))


@torch.no_grad()
def _logits(model, input_ids, **kwargs) -> torch.Tensor:
    return model(input_ids=input_ids, **kwargs).logits.float()


def _base_model(model) -> PreTrainedModel | None:
    """The head model's own base model (``AutoModel``'s class), None where it has none."""
    base = model.base_model
    return base if base is not model and isinstance(base, PreTrainedModel) else None


def _pad_id(model) -> int:
    pad = model.config.pad_token_id
    return 0 if pad is None else int(pad)


def _load(case: ContractCase, path: Path):
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=case.trust_remote_code).eval()


@parametrize_cases
def test_save_load_round_trip(case, tmp_path):
    _skip_if_declared(case, "save_load")
    model = case.make_model()
    case.save(model, tmp_path)
    assert list(tmp_path.glob("*.safetensors")), "weights must be saved as safetensors"
    assert not list(tmp_path.glob("*.bin")), "no pickle weights"
    loaded = _load(case, tmp_path)
    assert type(loaded).__name__ == type(model).__name__
    ids = _ids(case)
    expected = _logits(model, ids)
    torch.testing.assert_close(_logits(loaded, ids), expected, atol=case.atol, rtol=0)
    # device_map builds the model on the meta device first, then places the weights (accelerate's path)
    placed = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto", trust_remote_code=case.trust_remote_code)
    torch.testing.assert_close(_logits(placed.eval(), ids), expected, atol=case.atol, rtol=0)
    # a large model is saved in shards (model-0000k-of-0000n.safetensors and an index), beside the family's own files
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    assert len(list(sharded.glob("model-*.safetensors"))) > 1 and (sharded / "model.safetensors.index.json").exists()
    torch.testing.assert_close(_logits(_load(case, sharded), ids), expected, atol=case.atol, rtol=0)


@parametrize_cases
def test_auto_classes_resolve_after_import(case, tmp_path):
    _skip_if_declared(case, "auto_classes")
    model = case.make_model()
    case.save(model, tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is type(model.config)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # no trust_remote_code: the registered class
    assert type(loaded) is type(model)
    base = _base_model(model)
    if base is not None:
        assert type(AutoModel.from_pretrained(tmp_path)) is type(base)
    if case.trust_remote_code:
        saved = json.loads((tmp_path / "config.json").read_text())
        assert "AutoConfig" in saved["auto_map"] and "AutoModelForCausalLM" in saved["auto_map"]
        assert saved["auto_map"].get("AutoModel", "").split(".")[-1] == (type(base).__name__ if base else ""), saved
        for reference in saved["auto_map"].values():
            module_file = reference.split(".")[0] + ".py"
            assert (tmp_path / module_file).exists(), f"{module_file} was not copied into the checkpoint"


_REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_efficient_lm"] = None  # the package must not be needed
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoModelForCausalLM

    folder, io_dir, trust, has_base = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust).eval()
    ids = load_file(io_dir + "/inputs.safetensors")["input_ids"]
    with torch.no_grad():
        outputs = {"logits": model(input_ids=ids).logits.float()}
    outputs["generated"] = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                          pad_token_id=model.config.pad_token_id or 0)
    info = {"class": type(model).__name__, "module": type(model).__module__}
    if has_base:  # the base model through AutoModel, from the same folder
        base = AutoModel.from_pretrained(folder, trust_remote_code=trust).eval()
        with torch.no_grad():
            outputs["hidden"] = base(input_ids=ids).last_hidden_state.float()
        info |= {"base_class": type(base).__name__, "base_module": type(base).__module__}
    model.save_pretrained(io_dir + "/resaved")  # the loaded classes keep the folder's Auto map
    info["resaved_auto_map"] = json.load(open(io_dir + "/resaved/config.json")).get("auto_map")
    if sys.argv[5] != "-":  # the Trainer knows the loaded class as a causal LM: label smoothing shifts the labels
        from transformers import Trainer, TrainingArguments
        rows = [{"input_ids": row, "labels": row} for row in ids.tolist()]
        args = TrainingArguments(output_dir=io_dir + "/trainer", per_device_eval_batch_size=len(rows),
                                 label_smoothing_factor=float(sys.argv[5]), report_to=[], use_cpu=True)
        info["smoothed_eval_loss"] = Trainer(model=model, args=args, eval_dataset=rows).evaluate()["eval_loss"]
    save_file({k: v.contiguous() for k, v in outputs.items()}, io_dir + "/outputs.safetensors")
    print(json.dumps(info))
    """
)


@parametrize_cases
def test_remote_code_load_without_package(case, tmp_path):
    _skip_if_declared(case, "remote_code")
    model = case.make_model()
    folder, io_dir = tmp_path / "model", tmp_path / "io"
    io_dir.mkdir()
    case.save(model, folder)
    ids = _ids(case)
    save_file({"input_ids": ids.contiguous()}, str(io_dir / "inputs.safetensors"))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    base = _base_model(model)
    epsilon = None if "trainer" in case.skips else 0.1  # label smoothing in the Trainer, without the package
    result = subprocess.run(
        [sys.executable, "-c", _REMOTE_SCRIPT, str(folder), str(io_dir), "1" if case.trust_remote_code else "0",
         "1" if base is not None else "0", "-" if epsilon is None else str(epsilon)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["class"] == type(model).__name__
    if case.trust_remote_code:
        assert info["module"].startswith("transformers_modules"), info
    outputs = load_file(str(io_dir / "outputs.safetensors"))
    torch.testing.assert_close(outputs["logits"], _logits(model, ids), atol=case.atol, rtol=0)
    if base is not None:
        assert info["base_class"] == type(base).__name__, info
        assert info["base_module"].startswith("transformers_modules") or not case.trust_remote_code, info
        with torch.no_grad():
            expected_hidden = base(input_ids=ids).last_hidden_state.float()
        torch.testing.assert_close(outputs["hidden"], expected_hidden, atol=case.atol, rtol=0)
    if case.trust_remote_code:
        assert info["resaved_auto_map"] == json.loads((folder / "config.json").read_text())["auto_map"], info
    if epsilon is not None:
        logits = _logits(model, ids)
        shifted, unshifted = _smoothed_loss(logits[:, :-1], ids[:, 1:], epsilon), _smoothed_loss(logits, ids, epsilon)
        assert abs(shifted - unshifted) > 20 * 1e-5 * shifted  # the two differ by far more than the tolerance
        assert info["smoothed_eval_loss"] == pytest.approx(shifted, rel=1e-5)
    assert outputs["generated"].shape == (ids.shape[0], ids.shape[1] + 4)
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                              pad_token_id=_pad_id(model))
    assert torch.equal(outputs["generated"], expected)


@parametrize_cases
def test_greedy_generate_cache_equals_recompute(case):
    _skip_if_declared(case, "generate_cache")
    model = case.make_model()
    ids = _ids(case, length=10)
    common = dict(attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=_pad_id(model))
    cached = model.generate(ids, use_cache=True, **common)
    recomputed = model.generate(ids, use_cache=False, **common)
    assert torch.equal(cached, recomputed)


@parametrize_cases
def test_assisted_decoding_equals_greedy(case):
    """Transformers' assisted decoding (prompt lookup, and an assistant model: here a perturbed copy, so
    drafts are rejected) verifies drafts with the model and must give greedy decoding's tokens; a class whose cache
    cannot drop rejected drafts raises its named error up front on every release instead."""
    _skip_if_declared(case, "assisted_decoding")
    model = case.make_model()
    ids = _ids(case, batch=1, length=10)
    ids = torch.cat([ids, ids[:, :6]], dim=1)  # a repeat, so prompt lookup proposes drafts
    common = dict(attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False, pad_token_id=_pad_id(model))
    greedy = model.generate(ids, **common)
    assistant = _perturbed(model)
    assert not torch.equal(assistant.generate(ids, **common), greedy)  # its drafts differ: some are rejected
    for assisted in ({"prompt_lookup_num_tokens": 3}, {"assistant_model": assistant}):
        if case.assisted_decoding_error is not None:
            with pytest.raises(ValueError, match=case.assisted_decoding_error):
                model.generate(ids, **common, **assisted)
        else:
            assert torch.equal(model.generate(ids, **common, **assisted), greedy), assisted


@parametrize_cases
def test_continuous_batching_equals_generate_per_prompt(case):
    """Transformers' continuous batching (``generate_batch``, what ``transformers serve`` schedules) gives each prompt
    of unequal length the tokens ``generate()`` gives it alone; a class whose state has no paged form is refused
    with its named error (raised, or as every request's ``error``) instead of decoding from a cache without it."""
    _skip_if_declared(case, "continuous_batching")
    model = case.make_model().eval()
    ids = _ids(case, batch=2, length=12)
    prompts = [ids[0], ids[1, :9]]  # unequal lengths: each request has its own paged slots, no padding
    config = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=_pad_id(model),
                              eos_token_id=model.generation_config.eos_token_id)
    # a cache of 8 pages of 16 tokens: sized for the test, not from the machine's free memory (seconds on a CPU)
    generate_batch = partial(model.generate_batch, [p.tolist() for p in prompts], generation_config=config,
                             continuous_batching_config=ContinuousBatchingConfig(page_size=16, num_blocks=8,
                                                                                 max_batch_tokens=64), warmup=False)
    if case.continuous_batching_error is not None:
        try:
            outputs = generate_batch()
        except (TypeError, ValueError, NotImplementedError) as error:
            assert re.search(case.continuous_batching_error, str(error)), error
            return
        assert len(outputs) == 2 and all(o.status == RequestStatus.FAILED and not o.generated_tokens
                                         and re.search(case.continuous_batching_error, o.error or "")
                                         for o in outputs.values()), outputs
        return
    outputs = list(generate_batch().values())
    assert sorted(o.prompt_ids for o in outputs) == sorted(p.tolist() for p in prompts), outputs  # every request
    for output in outputs:  # (matched by its own prompt, not by the order or naming of request ids)
        prompt = torch.tensor([output.prompt_ids])
        alone = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)
        assert output.generated_tokens == alone[0, prompt.shape[1]:].tolist(), (output, alone)


@parametrize_cases
def test_text_generation_pipeline_equals_generate(case, tmp_path):
    """``pipeline("text-generation", model=<saved folder>)`` finds the class and the tokenizer saved beside it and gives
    each prompt the tokens ``generate()`` gives it alone, one prompt at a time and batched (prompts of unequal length,
    left-padded by the pipeline). The prompts' lengths are chosen so that, batched, every class's tokens change if the
    padding is attended (checked by passing the pipeline a mask of ones)."""
    _skip_if_declared(case, "pipeline")
    model = case.make_model().eval()
    tokenizer = case.make_tokenizer(model)
    case.save(model, tmp_path)
    tokenizer.save_pretrained(tmp_path)
    texts = [tokenizer.decode(_ids(case, batch=1, length=n, seed=n)[0], skip_special_tokens=True) for n in (13, 8, 4)]
    common = dict(max_new_tokens=5, do_sample=False)
    expected = [model.generate(**tokenizer(text, return_tensors="pt"), pad_token_id=tokenizer.pad_token_id,
                               **common)[0].tolist() for text in texts]
    generator = pipeline("text-generation", model=str(tmp_path), trust_remote_code=case.trust_remote_code)
    for batch_size in (1, 3):
        outputs = generator(texts, batch_size=batch_size, return_tensors=True, **common)
        generated = [output[0]["generated_token_ids"] for output in outputs]
        # a batched row carries the batch's left padding, and padding after its EOS where another row runs longer
        kept = [[i for i, id_ in enumerate(ids) if id_ != tokenizer.pad_token_id] for ids in generated]
        unpadded = [ids[positions[0]:positions[-1] + 1] for ids, positions in zip(generated, kept)]
        assert unpadded == expected, (batch_size, generated)


def _perturbed(model):
    """A copy of ``model`` with seeded noise on every weight: an assistant whose drafts the model partly rejects."""
    assistant = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in assistant.parameters():
            noise = torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
            parameter.add_(noise * parameter.float().std().nan_to_num().clamp(min=0.02).to(parameter.dtype))
    return assistant


@parametrize_cases
def test_generate_continues_from_a_returned_cache(case):
    """A second ``generate()`` given the first's cache (under the release's own argument name, ``past_key_values``
    before Transformers 5.24) and its sequences equals one started from scratch on those sequences."""
    _skip_if_declared(case, "generate_cache")
    model = case.make_model()
    ids = _ids(case, length=10)
    common = dict(max_new_tokens=4, do_sample=False, pad_token_id=_pad_id(model))
    first = model.generate(ids, attention_mask=torch.ones_like(ids), return_dict_in_generate=True, **common)
    sequences, cache = first.sequences, first[CACHE_NAME]
    assert cache is not None and cache.get_seq_length() > ids.shape[1]
    continued = model.generate(sequences, attention_mask=torch.ones_like(sequences), **{CACHE_NAME: cache}, **common)
    scratch = model.generate(sequences, attention_mask=torch.ones_like(sequences), **common)
    assert torch.equal(continued, scratch)


@parametrize_cases
def test_an_attention_mask_of_another_shape_is_refused(case):
    """A 2-D padding mask narrower than the ids, or with one row for a batch of two, is refused by name. (Llama's forward
    pads the first with zeros, silently hiding the newest token, and the specialists inherited it.)"""
    _skip_if_declared(case, "mask_shape")
    model = case.make_model()
    ids = _ids(case, batch=2, length=10)
    for mask in (torch.ones(2, 9, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)):
        with pytest.raises(ValueError, match="mask"):
            model(input_ids=ids, attention_mask=mask)


@parametrize_cases
def test_threads_sharing_a_model_get_what_each_call_gets_alone(case):
    """Threads sharing one model (a server's worker threads) get what each call gets alone: a forward or ``generate()``
    keeps its per-call state in its arguments and its cache, never on a module, and what a model builds on first use
    (lookup structures) is published only once built. Thread switches are forced every microsecond so calls interleave;
    each round shares a fresh copy (a copy rebuilds those structures, so the threads race to build them)."""
    _skip_if_declared(case, "threads")
    model = case.make_model().eval()
    prompts = [_ids(case, batch=b, length=n, seed=i) for i, (b, n) in enumerate([(1, 9), (2, 12), (3, 7), (1, 14)])]
    common = dict(max_new_tokens=5, do_sample=False, pad_token_id=_pad_id(model))

    @torch.no_grad()
    def call(shared, ids):
        return shared(input_ids=ids).logits, shared.generate(ids, attention_mask=torch.ones_like(ids), **common)

    alone = [call(copy.deepcopy(model), ids) for ids in prompts]
    for _ in range(3):
        with forced_thread_switches(), ThreadPoolExecutor(len(prompts)) as pool:
            together = list(pool.map(partial(call, copy.deepcopy(model)), prompts))
        for (logits, tokens), (alone_logits, alone_tokens) in zip(together, alone):
            torch.testing.assert_close(logits, alone_logits, atol=case.atol, rtol=0)
            assert torch.equal(tokens, alone_tokens)


@parametrize_cases
def test_left_padded_batch_equals_rows_alone(case):
    _skip_if_declared(case, "left_padding")
    model = case.make_model()
    pad = _pad_id(model)
    long_row, short_row = _ids(case, batch=1, length=10, seed=1)[0], _ids(case, batch=1, length=6, seed=2)[0]
    batch = torch.full((2, 10), pad, dtype=torch.long)
    batch[0], batch[1, 4:] = long_row, short_row
    mask = (torch.arange(10) >= torch.tensor([[0], [4]])).long()
    common = dict(max_new_tokens=6, do_sample=False, pad_token_id=pad, return_dict_in_generate=True, output_logits=True)
    together = model.generate(batch, attention_mask=mask, **common)
    for row, alone_ids in enumerate((long_row, short_row)):
        alone = model.generate(alone_ids[None], attention_mask=torch.ones_like(alone_ids[None]), **common)
        assert torch.equal(together.sequences[row, 10:], alone.sequences[0, alone_ids.numel():])
        for step_batch, step_alone in zip(together.logits, alone.logits):
            torch.testing.assert_close(step_batch[row].float(), step_alone[0].float(), atol=1e-4, rtol=0)


@parametrize_cases
def test_generate_from_inputs_embeds_equals_from_ids(case):
    """``generate(inputs_embeds=embed(ids))`` (soft prompts, multimodal front ends) continues exactly as
    ``generate(ids)``: left-padded batch, greedy and 2-beam search; a class that needs the ids names that instead."""
    _skip_if_declared(case, "inputs_embeds")
    model = case.make_model()
    pad = _pad_id(model)
    ids = _ids(case, batch=2, length=10, seed=3)
    ids[1, :3] = pad
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
    extra = case.inputs_embeds_kwargs(model, ids)
    for search in (dict(do_sample=False), dict(do_sample=False, num_beams=2)):
        common = dict(attention_mask=mask, max_new_tokens=6, pad_token_id=pad, **search)
        if case.inputs_embeds_error is not None:
            with pytest.raises(ValueError, match=case.inputs_embeds_error):
                model.generate(inputs_embeds=embeds, **common, **extra)
            return
        from_ids = model.generate(ids, **common)
        from_embeds = model.generate(inputs_embeds=embeds, **common, **extra)
        assert torch.equal(from_embeds, from_ids[:, ids.shape[1]:]), search


@parametrize_cases
def test_padding_free_packed_row_equals_documents_alone(case):
    """The shape DataCollatorWithFlattening / TRL's padding-free mode make: one row holding several documents,
    position ids restarting at each, no attention mask. Every document must be computed as if alone. (Without a KV
    cache, as in training: Llama itself reads the documents from position ids only when no cache is built.)"""
    _skip_if_declared(case, "padding_free")
    model = case.make_model()
    lengths = (7, 5, 6)
    documents = [_ids(case, batch=1, length=n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    packed = torch.cat(documents)[None]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    together = _logits(model, packed, position_ids=position_ids, use_cache=False)[0]
    start = 0
    for document in documents:
        alone = _logits(model, document[None])[0]
        torch.testing.assert_close(together[start : start + document.numel()], alone, atol=case.atol, rtol=0)
        start += document.numel()


@parametrize_cases
def test_sdpa_equals_eager(case):
    _skip_if_declared(case, "sdpa_eager")
    sdpa, eager = case.make_model(attn_implementation="sdpa"), case.make_model(attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    ids = _ids(case)
    torch.testing.assert_close(_logits(sdpa, ids), _logits(eager, ids), atol=1e-5, rtol=0)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in row 1
    torch.testing.assert_close(
        _logits(sdpa, ids, attention_mask=mask)[1, 3:], _logits(eager, ids, attention_mask=mask)[1, 3:],
        atol=1e-5, rtol=0,
    )


def _train(model, dataset, output_dir, resume_from_checkpoint=None, **arguments):
    """``model`` after ``Trainer.train`` on ``dataset`` (CPU, no logging; ``arguments``: TrainingArguments)."""
    args = TrainingArguments(output_dir=str(output_dir), report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
                             **arguments)
    Trainer(model=model, args=args, train_dataset=dataset).train(resume_from_checkpoint=resume_from_checkpoint)
    return model


@parametrize_cases
def test_trainer_lowers_loss_on_repeated_batch(case, tmp_path):
    _skip_if_declared(case, "trainer")
    from datasets import Dataset

    model = case.make_model()
    ids = _ids(case, batch=4, length=16)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})

    def loss_now() -> float:
        model.eval()
        with torch.no_grad():
            return model(input_ids=ids, labels=ids).loss.item()

    before = loss_now()
    _train(model, dataset, tmp_path, max_steps=8, per_device_train_batch_size=4, learning_rate=1e-2,
           lr_scheduler_type="constant", save_strategy="no", logging_steps=4)
    assert loss_now() < before - 0.05


def _smoothed_loss(logits, labels, epsilon) -> float:
    """LabelSmoother's formula: (1 - eps) * NLL + eps * mean(-log p) over the vocabulary."""
    log_probs = -torch.log_softmax(logits.float(), dim=-1)
    nll = log_probs.gather(-1, labels[..., None]).mean()
    return ((1 - epsilon) * nll + epsilon * log_probs.mean()).item()


@parametrize_cases
def test_trainer_label_smoothing_targets_the_next_token(case, tmp_path):
    """``label_smoothing_factor`` makes the Trainer compute the loss itself (``LabelSmoother``), shifting the labels
    only for classes it knows as causal LMs: the eval loss must be the next-token smoothed loss, by hand."""
    _skip_if_declared(case, "trainer")
    from datasets import Dataset

    model = case.make_model().eval()
    ids = _ids(case, batch=4, length=16)
    epsilon = 0.1
    logits = _logits(model, ids)
    shifted, unshifted = _smoothed_loss(logits[:, :-1], ids[:, 1:], epsilon), _smoothed_loss(logits, ids, epsilon)
    assert abs(shifted - unshifted) > 20 * 1e-5 * shifted  # the two differ by far more than the tolerance below
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, label_smoothing_factor=epsilon,
                             report_to=[], use_cpu=True, disable_tqdm=True)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    evaluated = Trainer(model=model, args=args, eval_dataset=dataset).evaluate()
    assert evaluated["eval_loss"] == pytest.approx(shifted, rel=1e-5)


def _flat_parameters(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@parametrize_cases
def test_gradient_accumulation_equals_one_large_batch(case, tmp_path):
    """One SGD step over 2 accumulated micro-batches of 2 rows equals one over a batch of those 4 rows. The Trainer
    divides the summed loss by the label tokens of the whole accumulated batch (``num_items_in_batch``) for a model
    whose forward takes loss kwargs, and by the accumulation steps otherwise; a forward that took the kwargs but
    averaged per micro-batch would step wrongly without a sign. Rows mask 1, 9, 3 and 12 labels, so micro-batches
    hold different numbers of label tokens (a per-micro-batch mean then differs from the token mean)."""
    _skip_if_declared(case, "gradient_accumulation")
    from datasets import Dataset

    model = case.make_model()
    ids = _ids(case, batch=4, length=16)
    labels = ids.clone()
    for row, masked in enumerate((1, 9, 3, 12)):
        labels[row, :masked] = -100
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    start = _flat_parameters(model)
    # plain SGD, lr 1, no clipping or decay: the update is exactly minus the gradient
    sgd = dict(max_steps=1, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
               max_grad_norm=0, save_strategy="no")
    one_batch = _flat_parameters(_train(copy.deepcopy(model), dataset, tmp_path / "one", per_device_train_batch_size=4,
                                        **sgd)) - start
    accumulated = _flat_parameters(_train(copy.deepcopy(model), dataset, tmp_path / "two",
                                          per_device_train_batch_size=2, gradient_accumulation_steps=2, **sgd)) - start
    assert one_batch.norm() > 0
    assert (accumulated - one_batch).norm() <= 1e-5 * one_batch.norm()


@parametrize_cases
def test_trainer_resume_equals_uninterrupted_training(case, tmp_path):
    """``trainer.train(resume_from_checkpoint=...)`` from step 2 of 4 ends with the weights of the run that was never
    interrupted: the checkpoint folder (``save_pretrained`` plus optimizer, scheduler and RNG state) holds everything
    training depends on. AdamW and a linear schedule make the optimizer and scheduler state matter."""
    _skip_if_declared(case, "trainer_resume")
    from datasets import Dataset

    model = case.make_model()
    ids = _ids(case, batch=8, length=16)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    schedule = dict(max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2, lr_scheduler_type="linear",
                    save_strategy="steps", save_steps=2)
    uninterrupted = _flat_parameters(_train(copy.deepcopy(model), dataset, tmp_path / "whole", **schedule))
    _train(copy.deepcopy(model), dataset, tmp_path / "resumed", **schedule)  # writes checkpoint-2 (and -4)
    resumed = _flat_parameters(_train(copy.deepcopy(model), dataset, tmp_path / "resumed",
                                      resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"), **schedule))
    assert not torch.equal(uninterrupted, _flat_parameters(model))  # training moved the weights
    torch.testing.assert_close(resumed, uninterrupted, atol=1e-6, rtol=0)


@parametrize_cases
def test_outputs_like_transformers_models(case):
    """What Transformers' common tests ask of every causal LM: hidden states on request (a tuple, the last one the
    final layer's output), ``return_dict=False`` gives a plain tuple whose first items are (loss,) logits, and
    ``generate(return_dict_in_generate=True, output_hidden_states=True)`` carries them per step."""
    _skip_if_declared(case, "outputs")
    model = case.make_model()
    ids = _ids(case)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        assert isinstance(out.hidden_states, tuple) and len(out.hidden_states) >= 2
        assert out.hidden_states[-1].shape[:2] == ids.shape  # the last: states of the input tokens (bytes for BLT)
        plain = model(input_ids=ids, labels=ids, return_dict=False)
    assert isinstance(plain, tuple) and not hasattr(plain, "keys")
    torch.testing.assert_close(plain[1].float(), out.logits.float(), atol=case.atol, rtol=0)
    generated = model.generate(ids[:1], attention_mask=torch.ones_like(ids[:1]), max_new_tokens=2, do_sample=False,
                               return_dict_in_generate=True, output_hidden_states=True,
                               pad_token_id=_pad_id(model))
    assert len(generated.hidden_states) == 2 and all(step is not None for step in generated.hidden_states)


BF16_LOSS_RTOL = 0.02  # bf16 keeps ~3 significant digits; 4 AdamW steps stay within 2% of fp32


@parametrize_cases
def test_bf16_autocast_training_tracks_fp32(case):
    """Mixed precision the way accelerate / Trainer do it (fp32 weights, bf16 autocast): finite losses within
    BF16_LOSS_RTOL of the same steps in fp32. Integer paths (BLT hashes, SCONE matching) never see a float."""
    _skip_if_declared(case, "bf16_autocast")
    ids = _ids(case, batch=4, length=16)
    losses = {}
    for bf16 in (False, True):
        model = case.make_model().train()
        device_type = next(model.parameters()).device.type
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        losses[bf16] = []
        for _ in range(4):
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[bf16].append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses[True])))
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=BF16_LOSS_RTOL, atol=0)
    assert losses[True][-1] < losses[True][0]


def _grads(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@parametrize_cases
def test_gradient_checkpointing_same_gradients(case):
    """Activation checkpointing (Transformers 5's name; ``gradient_checkpointing_enable`` is its deprecated alias)
    gives the same gradients and really keeps less for the backward: 16-23% of the plain forward's saved bytes on
    the tiny cases, so a flag that never reaches the layers fails here, and so did BLT's cross-attentions (36%)."""
    _skip_if_declared(case, "gradient_checkpointing")
    model = case.make_model().train()
    ids = _ids(case)
    training_forward = dict(input_ids=ids, labels=ids, use_cache=False)
    plain, plain_saved = _grads(model, ids), saved_for_backward_bytes(model, **training_forward)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_activation_checkpointing
    checkpointed, checkpointed_saved = _grads(model, ids), saved_for_backward_bytes(model, **training_forward)
    assert checkpointed_saved < 0.3 * plain_saved
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


@parametrize_cases
def test_torch_compile_same_loss_and_gradients(case):
    """``torch.compile(model)`` with graph breaks allowed (what ``TrainingArguments(torch_compile=True)`` does; no
    class claims fullgraph): the same logits, loss and gradients as eager. Backend ``eager`` runs dynamo's tracing
    and guards (where python state captured at trace time would go stale) without needing a compiler."""
    _skip_if_declared(case, "torch_compile")
    model = case.make_model().train()
    ids = _ids(case, batch=2, length=8)
    eager = model(input_ids=ids, labels=ids, use_cache=False)
    plain = _grads(model, ids)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    out = compiled(input_ids=ids, labels=ids, use_cache=False)
    torch.testing.assert_close(out.logits, eager.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.loss, eager.loss, atol=1e-6, rtol=0)
    model.zero_grad()
    out.loss.backward()
    parameters = dict(model.named_parameters())
    for name, grad in plain.items():
        torch.testing.assert_close(parameters[name].grad, grad, atol=1e-6, rtol=1e-5, msg=name)
    # the traced graphs again (same shapes and grad mode, so no retrace), on other ids: nothing stale was kept
    other = _ids(case, batch=2, length=8, seed=1)
    torch.testing.assert_close(compiled(input_ids=other, labels=other, use_cache=False).logits,
                               model(input_ids=other, labels=other, use_cache=False).logits, atol=1e-6, rtol=0)


@parametrize_cases
def test_peft_lora_trains_saves_reloads_merges(case, tmp_path):
    _skip_if_declared(case, "lora")
    from peft import LoraConfig, PeftModel, get_peft_model

    ids = _ids(case)
    model = get_peft_model(case.make_model(), LoraConfig(r=4, lora_alpha=8, target_modules=case.lora_target_modules))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(
        "lora_" in name for name, p in model.named_parameters() if p.requires_grad
    ), "only LoRA weights train"
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    trained = _logits(model, ids)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(case.make_model(), tmp_path / "adapter").eval()
    torch.testing.assert_close(_logits(reloaded, ids), trained, atol=1e-5, rtol=0)
    merged = reloaded.merge_and_unload()
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, ids), trained, atol=1e-4, rtol=0)


@parametrize_cases
def test_peft_mixed_adapter_batch_equals_each_row_with_its_adapter(case):
    """PEFT's mixed adapter batches (``generate(adapter_names=[...])``: one LoRA adapter per row, or ``"__base__"``,
    as a server holding several fine-tunes batches their requests) give each row, at every step, the logits its adapter
    gives it alone; a class whose LoRA layers also run on rows other than the batch's raises its named error instead."""
    _skip_if_declared(case, "lora_mixed_batch")
    model = two_lora_adapters(case.make_model(), case.lora_target_modules)
    ids, names = _ids(case, batch=3, length=10, seed=3), ["second", "__base__", "first"]
    common = dict(max_new_tokens=5, do_sample=False, pad_token_id=_pad_id(model), return_dict_in_generate=True,
                  output_logits=True)
    if case.mixed_adapter_batch_error is not None:
        with pytest.raises(ValueError, match=case.mixed_adapter_batch_error):
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=names, **common)
        return
    mixed = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=names, **common)
    alone = {}
    for name in ("first", "second", "__base__"):
        with only_adapter(model, name):
            alone[name] = [model.generate(input_ids=row[None], attention_mask=torch.ones_like(row[None]), **common)
                           for row in ids]
    assert (alone["first"][0].logits[0] - alone["second"][0].logits[0]).abs().max() > 1e-2  # the adapters differ
    for row, name in enumerate(names):
        assert torch.equal(mixed.sequences[row], alone[name][row].sequences[0]), (row, name)
        for step_mixed, step_alone in zip(mixed.logits, alone[name][row].logits):
            torch.testing.assert_close(step_mixed[row], step_alone[0], atol=case.atol, rtol=0)


@parametrize_cases
def test_peft_prefix_tuning_generates_what_its_forward_predicts(case):
    """PEFT prefix tuning puts trained keys/values in the cache ahead of the prompt; greedy ``generate()`` must emit
    what the prefix-tuned forward predicts at every step, and the prefix must change that."""
    _skip_if_declared(case, "prefix_tuning")
    _check_prefix_tuning(case)


@parametrize_cases
def test_peft_prefix_tuning_keeps_a_prefix_passed_as_past_key_values(case, monkeypatch):
    """PEFT before 0.22 passes its prefix as ``past_key_values`` on every Transformers release; on 5.24+ generate()
    passes its own empty ``cache`` beside it, and the prefix must not be dropped. Replayed on PEFT 0.22+ by making
    PEFT's name lookup answer the old name (the only change 0.22 made to prefix tuning's forward and generate)."""
    _skip_if_declared(case, "prefix_tuning")
    _skip_if_declared(case, "prefix_tuning_past_key_values")
    if CACHE_NAME == "past_key_values" or PEFT_CACHE_NAME == "past_key_values":
        pytest.skip(f"Transformers' cache argument is {CACHE_NAME!r} and PEFT passes {PEFT_CACHE_NAME!r}: "
                    "test_peft_prefix_tuning_generates_what_its_forward_predicts runs this combination")
    import peft.peft_model

    asked = []
    monkeypatch.setattr(peft.peft_model, "get_transformers_cache_name", lambda: asked.append(1) or "past_key_values")
    _check_prefix_tuning(case)
    assert asked, "PEFT no longer looks the cache name up in peft.peft_model: this check would replay nothing"


def _check_prefix_tuning(case: ContractCase) -> None:
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    model = case.make_model().eval()
    ids = _ids(case, length=8)
    common = dict(attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False, pad_token_id=_pad_id(model))
    config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4, **case.prompt_learning_config)
    if case.prefix_tuning_error is not None:
        with pytest.raises((TypeError, ValueError), match=case.prefix_tuning_error):
            get_peft_model(model, config).generate(input_ids=ids, **common)
        return
    plain = model.generate(ids, **common)
    peft = get_peft_model(model, config)
    with torch.no_grad():  # a trained-looking prefix (PEFT initialises it small), so it changes the continuation
        for parameter in peft.prompt_encoder.parameters():
            parameter.normal_(generator=torch.Generator().manual_seed(0))
    generated = peft.generate(input_ids=ids, **common)
    assert not torch.equal(generated, plain)
    context, new = generated[:, :-1], generated[:, ids.shape[1]:]
    predicted = _logits(peft, context, **case.prefix_tuning_kwargs(model, context))[:, ids.shape[1] - 1:].argmax(-1)
    _assert_emits_predictions(model, new, predicted)


def _assert_emits_predictions(model, new: torch.LongTensor, predicted: torch.LongTensor) -> None:
    """``new`` (generated tokens ``[batch, steps]``) equals ``predicted`` (the forward's argmax there) up to each row's
    EOS; after it generate() pads."""
    ended = torch.isin(new, torch.tensor(model.generation_config.eos_token_id)).cumsum(dim=1)
    running = torch.cat([torch.zeros_like(ended[:, :1]), ended[:, :-1]], dim=1) == 0
    assert torch.equal(new[running], predicted[running])


@parametrize_cases
@pytest.mark.parametrize("method", ["PromptTuningConfig", "PromptEncoderConfig"], ids=["prompt_tuning", "p_tuning"])
def test_peft_prompt_tuning_generates_what_its_forward_predicts(case, method):
    """PEFT prompt tuning and p-tuning put trained virtual-token embeddings ahead of the prompt and call the model with
    ``inputs_embeds`` alone (no ids); greedy ``generate()`` must emit what the prompt-tuned forward predicts, and the
    prompt must change that. A class that cannot read embeddings alone raises its named error in training and in
    ``generate()`` instead of running without what it reads from the ids."""
    _skip_if_declared(case, "prompt_tuning")
    import peft

    model = case.make_model().eval()
    ids = _ids(case, length=8)
    common = dict(attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False, pad_token_id=_pad_id(model))
    config = getattr(peft, method)(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=4, **case.prompt_learning_config)
    if case.prompt_tuning_error is not None:
        tuned = peft.get_peft_model(model, config)
        with pytest.raises(ValueError, match=case.prompt_tuning_error):
            tuned(input_ids=ids, labels=ids)
        with pytest.raises(ValueError, match=case.prompt_tuning_error):
            tuned.generate(input_ids=ids, **common)
        return
    if PEFT_CACHE_NAME != CACHE_NAME:
        pytest.skip(f"PEFT before 0.22 looks for generate()'s cache under {PEFT_CACHE_NAME!r}, Transformers passes "
                    f"{CACHE_NAME!r}: it takes every step for the first and prepends the prompt again (Llama too; upstream)")
    plain = model.generate(ids, **common)
    tuned = peft.get_peft_model(model, config)
    with torch.no_grad():  # a trained-looking prompt, so it changes the continuation
        for parameter in tuned.prompt_encoder.parameters():
            parameter.normal_(generator=torch.Generator().manual_seed(0))
    generated = tuned.generate(input_ids=ids, **common)
    assert not torch.equal(generated, plain)
    context, new = generated[:, :-1], generated[:, ids.shape[1]:]
    logits = _logits(tuned, context)  # (over the virtual tokens too: PEFT returns the base model's logits whole)
    assert logits.shape[1] == config.num_virtual_tokens + context.shape[1]
    predicted = logits[:, config.num_virtual_tokens + ids.shape[1] - 1:].argmax(-1)
    _assert_emits_predictions(model, new, predicted)


@parametrize_cases
def test_buffers_survive_from_pretrained(case, tmp_path):
    _skip_if_declared(case, "buffers")
    model = case.make_model()
    case.save(model, tmp_path)
    loaded = _load(case, tmp_path)
    original = dict(model.named_buffers())
    reloaded = dict(loaded.named_buffers())
    assert original.keys() == reloaded.keys()
    for name, buffer in original.items():
        assert reloaded[name].device.type != "meta", name
        torch.testing.assert_close(reloaded[name], buffer, msg=name)


@parametrize_cases
def test_resize_token_embeddings(case, tmp_path):
    _skip_if_declared(case, "resize_embeddings")
    model = case.make_model()
    ids = _ids(case)
    old_vocab = model.get_input_embeddings().weight.shape[0]
    before = _logits(model, ids)
    model.resize_token_embeddings(old_vocab + 8)
    assert model.config.vocab_size == old_vocab + 8
    after = _logits(model, ids)
    assert after.shape[-1] == old_vocab + 8
    torch.testing.assert_close(after[..., :old_vocab], before, atol=1e-5, rtol=0)
    new_token_ids = torch.cat([ids, torch.full((ids.shape[0], 1), old_vocab + 7)], dim=1)
    case.save(model, tmp_path)
    torch.testing.assert_close(
        _logits(_load(case, tmp_path), new_token_ids), _logits(model, new_token_ids), atol=case.atol, rtol=0
    )


@parametrize_cases
def test_invalid_config_is_never_saved(case, tmp_path):
    """A config edited into an invalid state after construction is refused with an error naming the problem, either
    on assignment or by ``save_pretrained`` before it writes anything: a folder that cannot be reloaded is never
    written (Transformers' ``save_pretrained`` runs ``config.validate()``, which must include the family's checks)."""
    _skip_if_declared(case, "invalid_config")
    name, value, message = case.invalid_config
    model = case.make_model()
    try:
        setattr(model.config, name, value)
    except ValueError as err:  # a config that validates assignments (BLT) refuses here and keeps the old value
        assert re.search(message, str(err)), err
        assert getattr(model.config, name) != value
        return
    with pytest.raises(Exception, match=message) as failure:
        case.save(model, tmp_path / "out")
    assert isinstance(failure.value, ValueError) or not case.trust_remote_code, repr(failure.value)  # ours: ValueError
    assert not list((tmp_path / "out").glob("*.json")) and not list((tmp_path / "out").glob("*.safetensors"))
