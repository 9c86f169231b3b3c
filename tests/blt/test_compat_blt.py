"""Transformers' own Blt: loading its folders (weights converted, logits equal), exporting back, hash config errors,
hash ids equal to Transformers' hashing, generation equal to the argmax of its teacher-forced forward."""

import json
import shutil

import pytest
import torch
from transformers import BltForCausalLM as TransformersBlt
from transformers.models.blt.modeling_blt import byte_group_hash_function

from hf_efficient_lm import BLTForCausalLM
from hf_efficient_lm.blt import BLTModel, byte_ngram_hash_ids
from hf_efficient_lm.tools.blt_testing import random_bytes

from .conftest import make_transformers_blt


def _bytes(batch=2, length=40, seed=0):
    return random_bytes(batch, length, torch.Generator().manual_seed(seed))


def test_hash_ids_equal_transformers_hashing():
    ids = torch.randint(0, 260, (3, 50), generator=torch.Generator().manual_seed(0))
    sizes, buckets = [3, 4, 5, 6, 7, 8], 500002
    ours = byte_ngram_hash_ids(ids, sizes, 2, buckets)
    primes = [1000000007, 5915587277]
    col = 0
    for f in range(2):
        for n in sizes:
            ref = byte_group_hash_function(ids, n, primes[f], buckets) + col * buckets
            assert torch.equal(ours[..., col], ref)
            col += 1


@torch.no_grad()
def test_logits_equal_transformers_with_entropy_patching(transformers_blt, transformers_blt_dir):
    ours = BLTForCausalLM.from_pretrained(transformers_blt_dir)
    assert ours.config.model_type == "hfelm_blt" and ours.config.patching_mode == "entropy"
    x = _bytes()
    starts = ours.model(x).patch_starts
    lengths = starts.sum(dim=1)
    assert int(lengths.min()) > 4 and int(lengths.max()) < 38, "patches must be of mixed sizes"
    ref = transformers_blt(x, use_cache=False).logits
    torch.testing.assert_close(ours(x).logits, ref, atol=1e-4, rtol=0)
    base = BLTModel.from_pretrained(transformers_blt_dir)
    torch.testing.assert_close(base(x).last_hidden_state, ours.model(x).last_hidden_state, atol=1e-6, rtol=0)


@torch.no_grad()
def test_sharded_transformers_blt_folder_converts_like_a_single_file(transformers_blt, tmp_path):
    """Large Blt checkpoints come as ``model-0000k-of-0000n.safetensors`` shards with an index: the converter reads every
    shard the index names (logits equal to Transformers' own model, as for a one-file folder), and a folder with neither
    form of safetensors weights is refused naming both."""
    transformers_blt.save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    shards = sorted(path.name for path in (tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "sharded" / "model.safetensors.index.json").exists(), shards
    x = _bytes()
    converted = BLTForCausalLM.from_pretrained(tmp_path / "sharded")
    torch.testing.assert_close(converted(x).logits, transformers_blt(x, use_cache=False).logits, atol=1e-4, rtol=0)

    (tmp_path / "sharded" / "model.safetensors.index.json").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors or model.safetensors.index.json"):
        BLTForCausalLM.from_pretrained(tmp_path / "sharded")


@pytest.mark.parametrize(
    "overrides",
    [
        # 7B-style latent input projection (k * h_E != h_G), GQA, 2-layer encoder with all-layer cross-attention,
        # max_patch_length splitting
        dict(global_config=dict(hidden_size=48, num_attention_heads=4, num_key_value_heads=2),
             encoder_config=dict(num_hidden_layers=2, cross_attn_all_layers=True, hidden_size_global=48,
                                 num_key_value_heads=2),
             decoder_config=dict(hidden_size_global=48, num_key_value_heads=2), max_patch_length=3),
        # no entropy model: one patch per byte
        dict(patch_in_forward=False),
    ],
    ids=["projection_gqa_maxlen", "byte_patches"],
)
@torch.no_grad()
def test_logits_equal_transformers_other_layouts(tmp_path, overrides):
    hf = make_transformers_blt(seed=1, **overrides)
    hf.save_pretrained(tmp_path)
    ours = BLTForCausalLM.from_pretrained(tmp_path)
    x = _bytes(seed=1)
    ref = hf(x, use_cache=False).logits
    got = ours(x).logits
    if overrides.get("max_patch_length"):
        # Transformers splits only the patches inside the N given bytes, so at the last position its decoder may
        # read a patch that a longer prefix would not (non-causal); ours decides byte N's patch causally.
        ref, got = ref[:, :-1], got[:, :-1]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


@torch.no_grad()
def test_export_back_to_transformers(transformers_blt, transformers_blt_dir, tmp_path):
    ours = BLTForCausalLM.from_pretrained(transformers_blt_dir)
    ours.save_pretrained_transformers(tmp_path / "exported")
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["model_type"] == "blt"
    back = TransformersBlt.from_pretrained(tmp_path / "exported").eval()
    x = _bytes(seed=2)
    torch.testing.assert_close(back(x, use_cache=False).logits, transformers_blt(x, use_cache=False).logits, atol=1e-6, rtol=0)
    src = dict(transformers_blt.state_dict())
    for key, value in back.state_dict().items():
        assert torch.equal(value, src[key]), key
    # and our own save/load of the converted model keeps the logits
    ours.save_pretrained(tmp_path / "ours")
    again = BLTForCausalLM.from_pretrained(tmp_path / "ours")
    torch.testing.assert_close(again(x).logits, ours(x).logits, atol=0, rtol=0)


def test_generation_defaults_travel_through_conversion_and_export(transformers_blt_dir, tmp_path):
    """A Blt folder's generation_config.json (eos ids, lengths, penalties) is what generate() uses after conversion,
    and an export writes the model's own (both were replaced by defaults made from the config)."""
    import shutil

    from transformers import GenerationConfig

    folder = tmp_path / "blt"
    shutil.copytree(transformers_blt_dir, folder)
    GenerationConfig(eos_token_id=[2, 50], max_new_tokens=5, repetition_penalty=1.3).save_pretrained(folder)
    ours = BLTForCausalLM.from_pretrained(folder)
    assert ours.generation_config.eos_token_id == [2, 50] and ours.generation_config.max_new_tokens == 5
    ours.generation_config.repetition_penalty = 1.2
    ours.save_pretrained_transformers(tmp_path / "exported")
    exported = GenerationConfig.from_pretrained(tmp_path / "exported")
    assert (exported.eos_token_id, exported.max_new_tokens, exported.repetition_penalty) == ([2, 50], 5, 1.2)


def test_different_hash_configuration_is_a_clear_error(transformers_blt_dir, tmp_path):
    with pytest.raises(ValueError, match="different hash configuration"):
        BLTForCausalLM.from_pretrained(transformers_blt_dir, encoder_hash_byte_group_size=[3, 4])
    with pytest.raises(ValueError, match="different hash configuration"):
        BLTForCausalLM.from_pretrained(transformers_blt_dir, encoder_hash_byte_group_vocab=500002)
    bad = tmp_path / "bad"
    shutil.copytree(transformers_blt_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["encoder_hash_byte_group_size"] = [3, 4]  # config no longer matches the saved 3-table hash embedding
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="hash n-gram table has 291 rows"):
        BLTForCausalLM.from_pretrained(bad)


def test_transformers_blt_folder_under_fsdp_cpu_ram_efficient_loading_is_a_clear_error(transformers_blt_dir, monkeypatch):
    """Conversion builds the full model on every process: under accelerate's FSDP cpu_ram_efficient_loading (which
    expects from_pretrained to cope with meta-device loading) it is refused with the fix, not silently done N times."""
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "is_fsdp_enabled", lambda: True)
    with pytest.raises(ValueError, match="cpu_ram_efficient_loading.*Convert it once first"):
        BLTForCausalLM.from_pretrained(transformers_blt_dir)
    monkeypatch.setattr(transformers.integrations, "is_fsdp_enabled", lambda: False)
    assert BLTForCausalLM.from_pretrained(transformers_blt_dir).config.model_type == "hfelm_blt"


def test_transformers_blt_folder_loads_with_a_device_map(transformers_blt_dir, tmp_path, monkeypatch):
    """``device_map`` that puts the whole converted model on one device moves it there (same logits as without); a map
    that splits or offloads it (given, or what ``"auto"`` infers under ``max_memory``) dispatches it with accelerate's
    hooks, as Transformers does for our own folders (same logits and greedy generation, ``hf_device_map`` set, the
    offloaded weights on disk); the meta device, a map that leaves weights out or disk without ``offload_folder`` is
    refused naming the problem."""
    reference = BLTForCausalLM.from_pretrained(transformers_blt_dir)
    ids = _bytes()
    expected = reference(ids).logits
    moved_to = []
    move = torch.nn.Module.to
    monkeypatch.setattr(BLTForCausalLM, "to", lambda self, *a, **k: moved_to.append(a[0]) or move(self, *a, **k))
    one_device = ("cpu", "auto", "sequential", "balanced_low_0", {"": "cpu"}, torch.device("cpu"),
                  {"model": "cpu", "lm_head": torch.device("cpu")})  # one device spelled two ways is still one
    for device_map in one_device:
        moved_to.clear()
        model = BLTForCausalLM.from_pretrained(transformers_blt_dir, device_map=device_map)
        assert moved_to == [torch.device("cpu")], (device_map, moved_to)  # the map is read, not ignored
        assert not hasattr(model, "hf_device_map")
        torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)
    monkeypatch.undo()
    split = {**{f"model.{name}": "cpu" for name, _ in reference.model.named_children()},
             "model.global_transformer": "disk", "lm_head": "cpu"}
    common = dict(max_new_tokens=6, do_sample=False, pad_token_id=reference.config.pad_token_id)
    expected_generated = reference.generate(ids, **common)
    half = sum(p.numel() * p.element_size() for p in reference.parameters()) // 2
    for i, (device_map, extra) in enumerate([(split, {}), ("auto", {"max_memory": {"cpu": half}})]):  # "auto": the rest
        # goes to disk
        with pytest.raises(ValueError, match="offloads part of the converted model to disk: pass offload_folder="):
            BLTForCausalLM.from_pretrained(transformers_blt_dir, device_map=device_map, **extra)
        offload = tmp_path / f"offload_{i}"
        dispatched = BLTForCausalLM.from_pretrained(transformers_blt_dir, device_map=device_map, offload_folder=offload,
                                                    **extra)
        placed = set(dispatched.hf_device_map.values())
        assert placed == {"cpu", "disk"} and any(offload.iterdir()), dispatched.hf_device_map
        assert dispatched.model.global_transformer.layers[0].mlp.up_proj.weight.device.type == "meta"  # on disk
        torch.testing.assert_close(dispatched(ids).logits, expected)
        assert torch.equal(dispatched.generate(ids, **common), expected_generated)
    for device_map, extra in (({"": "disk"}, {}), ("auto", {"max_memory": {"cpu": 1}})):
        with pytest.raises(ValueError, match="offloads the whole converted model to disk; keep at least one module"):
            BLTForCausalLM.from_pretrained(transformers_blt_dir, device_map=device_map, offload_folder=tmp_path, **extra)
    with pytest.raises(ValueError, match="on the meta device: its weights were converted in memory"):
        BLTForCausalLM.from_pretrained(transformers_blt_dir, device_map={"": torch.device("meta")})
    with pytest.raises(ValueError, match="does not give any device for the following parameters: lm_head.weight"):
        BLTForCausalLM.from_pretrained(transformers_blt_dir, device_map={"model": "cpu"})
    if torch.accelerator.current_accelerator() is None:
        with pytest.raises(ValueError, match="names accelerator 0, but this machine has none"):
            BLTForCausalLM.from_pretrained(transformers_blt_dir, device_map=0)
    reference.save_pretrained(tmp_path / "ours")  # our own folder takes the same map through Transformers' dispatch
    offloaded = BLTForCausalLM.from_pretrained(tmp_path / "ours", device_map=split, offload_folder=tmp_path / "offload")
    torch.testing.assert_close(offloaded(ids).logits, expected)


def test_a_copy_without_the_package_cannot_convert(transformers_blt_dir, tmp_path, monkeypatch):
    """The converter is a tool outside the checkpoint: the model class alone (as trust_remote_code loads it) has none
    and says what is missing instead of failing inside the conversion."""
    from hf_efficient_lm.blt import BLTPreTrainedModel

    model = BLTForCausalLM.from_pretrained(transformers_blt_dir)
    monkeypatch.setattr(BLTPreTrainedModel, "transformers_blt_converter", None)
    with pytest.raises(ImportError, match="needs the hf_efficient_lm package"):
        model.save_pretrained_transformers(tmp_path / "out")


@torch.no_grad()
def test_cached_greedy_equals_transformers_teacher_forced_argmax(tmp_path):
    """Each generated byte == argmax of Transformers' teacher-forced forward (its training computation) at the
    position before it, on a model whose patches vary: the entropy model is sharpened (lm_head x8) and the threshold
    sits in a gap of the entropies, so boundaries fall at clear bytes, patches of 1 to >10 bytes close during
    generation, several of them right after the newest byte (a boundary pending)."""
    hf = make_transformers_blt(seed=0)
    hf.model.patcher.lm_head.weight.mul_(8)
    entropies, _, _ = hf.model.patcher(random_bytes(4, 64, torch.Generator().manual_seed(99)))
    e = entropies[:, 1:].flatten().sort().values
    lo, hi = int(len(e) * 0.75), int(len(e) * 0.9)
    i = int((e[lo + 1:hi] - e[lo:hi - 1]).argmax()) + lo
    hf.config.patching_threshold = float((e[i] + e[i + 1]) / 2)
    hf.save_pretrained(tmp_path)
    ours = BLTForCausalLM.from_pretrained(tmp_path)
    prompt, new = _bytes(batch=1, length=16, seed=3), 48
    got = ours.generate(prompt, max_new_tokens=new, do_sample=False, use_cache=True)
    assert got.shape[1] == 16 + new
    starts = ours.model(got).patch_starts[0]  # N + 1 slots: the last one is the boundary pending after byte N
    bounds = torch.cat([torch.nonzero(starts[: got.shape[1]]).flatten(), torch.tensor([got.shape[1]])])
    lengths = torch.diff(bounds)
    assert int(lengths.min()) == 1 and int(lengths.max()) >= 10, lengths.tolist()
    pending = [t for t in range(16, got.shape[1]) if starts[t]]  # a patch closed right after byte t - 1
    assert len(pending) >= 3, pending
    teacher = hf(got, use_cache=False).logits[0, 15:-1].argmax(-1)
    assert torch.equal(teacher, got[0, 16:])


def test_conversion_keeps_special_ids_config_dtype_and_refuses_what_it_cannot_express(transformers_blt_dir, tmp_path):
    """The audit's silent cases: an export without special ids (Transformers' generate never stopped at EOS), a
    ``config=`` override kept only for its hash fields, ``dtype="auto"`` loading bf16 as fp32, a non-silu activation
    loaded as silu, and an export that emptied a folder holding other files."""
    ours = BLTForCausalLM.from_pretrained(transformers_blt_dir)
    ours.save_pretrained_transformers(tmp_path / "exported")
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    generation = json.loads((tmp_path / "exported" / "generation_config.json").read_text())
    for name, value in (("bos", 1), ("eos", 2), ("pad", 0)):
        assert exported[f"{name}_token_id"] == generation[f"{name}_token_id"] == value, name
    (tmp_path / "exported" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        ours.save_pretrained_transformers(tmp_path / "exported")
    assert (tmp_path / "exported" / "notes.txt").exists()

    config = ours.config
    config.patching_threshold, config.max_patch_length = 1.25, 2
    override = BLTForCausalLM.from_pretrained(transformers_blt_dir, config=config)
    assert (override.config.patching_threshold, override.config.max_patch_length) == (1.25, 2)

    bf16 = tmp_path / "bf16"
    TransformersBlt.from_pretrained(transformers_blt_dir, dtype=torch.bfloat16).save_pretrained(bf16)
    assert next(BLTForCausalLM.from_pretrained(bf16, dtype="auto").parameters()).dtype == torch.bfloat16

    gelu = tmp_path / "gelu"
    shutil.copytree(transformers_blt_dir, gelu)
    raw = json.loads((gelu / "config.json").read_text())
    raw["decoder_config"]["hidden_act"] = "gelu"
    (gelu / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="decoder_config.hidden_act='gelu'"):
        BLTForCausalLM.from_pretrained(gelu)
    raw["decoder_config"]["hidden_act"], raw["tie_word_embeddings"] = "silu", True
    (gelu / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="tie_word_embeddings=True"):
        BLTForCausalLM.from_pretrained(gelu)

    # what the checkpoint sets is kept both ways: the static stride, the init range and the longest patch
    from hf_efficient_lm.tools.blt_convert import blt_config_from_transformers

    raw.update(tie_word_embeddings=False, patch_size=6, initializer_range=0.05)
    converted = blt_config_from_transformers(raw)
    assert (converted.patch_size, converted.initializer_range) == (6, 0.05)
    override.save_pretrained_transformers(tmp_path / "max_patch_length")
    exported = json.loads((tmp_path / "max_patch_length" / "config.json").read_text())
    assert (exported["max_patch_length"], exported["patching_threshold"]) == (2, 1.25)


def test_fields_a_config_leaves_out_take_transformers_defaults():
    """A blt config.json without a field (hand-written, or from a release that did not write it) converts with the
    value BltConfig would give it: the converter's fallbacks equal Transformers' defaults, field by field (the
    RoPE thetas, the decoder's cross-attention in all layers, windows, hash vocabulary, threshold, ...)."""
    from transformers import BltConfig

    from hf_efficient_lm.tools.blt_convert import blt_config_from_transformers

    full = blt_config_from_transformers(BltConfig().to_dict()).to_dict()
    for sub in ("encoder_config", "decoder_config", "global_config", "patcher_config"):
        assert blt_config_from_transformers({sub: {}}).to_dict() == full, sub
    assert blt_config_from_transformers({}).to_dict() == full
    # (the fallbacks are not all alike: a mix-up between them shows)
    assert full["entropy_config"]["rope_parameters"]["rope_theta"] != full["encoder_config"]["rope_parameters"]["rope_theta"]
    assert full["decoder_config"]["cross_attn_all_layers"] != full["encoder_config"]["cross_attn_all_layers"]
