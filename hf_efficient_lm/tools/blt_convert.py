"""Conversion between Transformers' own ``Blt`` checkpoints (model type ``blt``) and ours (``hfelm_blt``).

Differences handled here: our modules are Mistral/Llama blocks with half-split RoPE while ``Blt`` uses interleaved
RoPE, so the rows of every self-attention q/k projection are permuted per head (even dims first, then odd dims),
which leaves every attention score unchanged; the patcher is our ``entropy_model`` (a ``BLTEntropyModel``); all other
parameter names are the same.

Not carried by checkpoints: importing ``hf_efficient_lm.blt`` installs this module as
``BLTPreTrainedModel.transformers_blt_converter``, through which ``BLTForCausalLM.from_pretrained`` reads a ``blt``
folder (:func:`load`) and ``save_pretrained_transformers`` writes one (:func:`export`).
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import torch

from ..blt.configuration_blt_lm import BLTConfig
from ..io_utils import atomic_dir

HASH_FIELDS = ("encoder_hash_byte_group_size", "encoder_hash_byte_group_vocab", "encoder_hash_byte_group_nb_functions")
_SELF_ATTN_QK = re.compile(r"\.layers\.\d+\.self_attn\.(q|k)_proj\.weight$")


def _resolve(path, filename):
    if os.path.isdir(path):
        candidate = os.path.join(path, filename)
        return candidate if os.path.isfile(candidate) else None
    try:
        from transformers.utils import cached_file

        return cached_file(path, filename, _raise_exceptions_for_missing_entries=False)
    except Exception:
        return None


def _read_config(path) -> dict | None:
    cfg = _resolve(path, "config.json")
    if cfg is None:
        return None
    with open(cfg, encoding="utf-8") as f:
        return json.load(f)


def is_transformers_blt_folder(path) -> bool:
    """True for a folder / Hub id whose ``config.json`` says ``model_type: blt`` (Transformers' Blt)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    try:
        cfg = _read_config(os.fspath(path))
    except (OSError, ValueError):
        return False
    return cfg is not None and cfg.get("model_type") == "blt"


def _sub(d: dict | None) -> dict:
    return dict(d or {})


def _rope(sub: dict, default_theta: float) -> dict:
    rope = sub.get("rope_parameters") or {}
    if not rope and "rope_theta" in sub:
        rope = {"rope_type": "default", "rope_theta": sub["rope_theta"]}
    return rope or {"rope_type": "default", "rope_theta": default_theta}


def blt_config_from_transformers(hf: dict, **overrides) -> BLTConfig:
    """Our :class:`BLTConfig` from the ``config.json`` dict of a Transformers ``blt`` checkpoint."""
    patcher, enc, dec, glob = (_sub(hf.get(k)) for k in ("patcher_config", "encoder_config", "decoder_config", "global_config"))
    for name, sub in (("config", hf), ("patcher_config", patcher), ("encoder_config", enc), ("decoder_config", dec),
                      ("global_config", glob)):
        if sub.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{name}.hidden_act={sub['hidden_act']!r}: BLTForCausalLM's MLPs are SwiGLU (silu); "
                             "this checkpoint would load and compute something else")
    if hf.get("tie_word_embeddings"):
        raise ValueError("tie_word_embeddings=True: BLTForCausalLM keeps its byte embeddings and output head apart")
    patch_in_forward = hf.get("patch_in_forward", True)
    mode = hf.get("patching_mode", "entropy")
    if patch_in_forward and mode == "entropy":
        if hf.get("patch_size", 4) is None:
            raise ValueError("Transformers blt config with patch_size=None (byte patches summing to N) is not supported")
        patching_mode = "entropy"
    else:
        patching_mode = "byte"  # Transformers falls back to one patch per byte
    k = hf.get("cross_attn_k", 2)
    for name, sub in (("encoder_config", enc), ("decoder_config", dec)):
        if sub.get("cross_attn_k", k) != k:
            raise ValueError(f"{name}.cross_attn_k ({sub.get('cross_attn_k')}) differs from cross_attn_k ({k})")

    def local(sub, layers_default, all_default, inter_default):
        hidden = sub.get("hidden_size", 1024)
        heads = sub.get("num_attention_heads", 16)
        return dict(
            vocab_size=sub.get("vocab_size", 260), hidden_size=hidden, num_attention_heads=heads,
            num_key_value_heads=sub.get("num_key_value_heads") or heads,
            num_hidden_layers=sub.get("num_hidden_layers", layers_default),
            intermediate_size=sub.get("intermediate_size") or inter_default(hidden),
            rms_norm_eps=sub.get("rms_norm_eps", 1e-5), max_position_embeddings=sub.get("max_position_embeddings", 24576),
            rope_parameters=_rope(sub, 500000.0), cross_attn_all_layers=sub.get("cross_attn_all_layers", all_default),
        )

    heads_p = patcher.get("num_attention_heads", 12)
    cfg = dict(
        vocab_size=hf.get("vocab_size", 260),
        patching_mode=patching_mode,
        patching_threshold=hf.get("patching_threshold", 1.335442066192627),
        patch_size=hf.get("patch_size") or 4,
        max_patch_length=hf.get("max_patch_length"),
        cross_attn_k=k,
        local_attention_window_len=hf.get("local_attention_window_len", 512),
        encoder_hash_byte_group_size=hf.get("encoder_hash_byte_group_size") or [3, 4, 5, 6, 7, 8],
        encoder_hash_byte_group_vocab=hf.get("encoder_hash_byte_group_vocab", 500002),
        encoder_hash_byte_group_nb_functions=hf.get("encoder_hash_byte_group_nb_functions", 1),
        entropy_config=dict(
            vocab_size=patcher.get("vocab_size", 260), hidden_size=patcher.get("hidden_size", 768),
            num_hidden_layers=patcher.get("num_hidden_layers", 14), num_attention_heads=heads_p,
            num_key_value_heads=patcher.get("num_key_value_heads") or heads_p,
            intermediate_size=patcher.get("intermediate_size", 2048),
            max_position_embeddings=patcher.get("max_position_embeddings", 8192),
            rms_norm_eps=patcher.get("rms_norm_eps", 1e-5), rope_parameters=_rope(patcher, 10000.0),
            sliding_window=patcher.get("sliding_window", 512),
        ),
        encoder_config=local(enc, 1, False, lambda h: int(8 * h / 3)),
        decoder_config=local(dec, 9, True, lambda h: 2816),
        global_config=dict(
            hidden_size=glob.get("hidden_size", 2048), num_attention_heads=glob.get("num_attention_heads", 16),
            num_key_value_heads=glob.get("num_key_value_heads") or glob.get("num_attention_heads", 16),
            num_hidden_layers=glob.get("num_hidden_layers", 25), intermediate_size=glob.get("intermediate_size", 5632),
            rms_norm_eps=glob.get("rms_norm_eps", 1e-5), max_position_embeddings=glob.get("max_position_embeddings", 4096),
            rope_parameters=_rope(glob, 500000.0),
        ),
        # the byte tokenizer's ids, where the checkpoint names none (Transformers' BltConfig defaults them to None)
        **{f"{name}_token_id": default if hf.get(f"{name}_token_id") is None else hf[f"{name}_token_id"]
           for name, default in (("bos", 1), ("eos", 2), ("pad", 0))},
        initializer_range=hf.get("initializer_range", 0.02),
    )
    for key in HASH_FIELDS:
        if key in overrides and overrides[key] is not None:
            wanted, have = overrides.pop(key), cfg[key]
            if (list(wanted) if isinstance(wanted, (list, tuple)) else wanted) != have:
                raise ValueError(
                    f"the Transformers blt checkpoint was trained with {key}={have!r}; a different hash "
                    f"configuration ({key}={wanted!r}) would index its n-gram tables wrongly"
                )
    cfg.update(overrides)
    return BLTConfig(**cfg)


def _qk_permutation(head_dim: int) -> torch.Tensor:
    """Row order (per head) turning interleaved-RoPE q/k rows into half-split-RoPE rows."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def _permute_rows(weight: torch.Tensor, head_dim: int, inverse: bool) -> torch.Tensor:
    perm = _qk_permutation(head_dim)
    if inverse:
        perm = torch.argsort(perm)
    out_features = weight.shape[0]
    return weight.view(out_features // head_dim, head_dim, -1)[:, perm, :].reshape(weight.shape).contiguous()


def _head_dims(config: BLTConfig) -> dict[str, int]:
    return {
        "model.entropy_model.": config.entropy_config.hidden_size // config.entropy_config.num_attention_heads,
        "model.local_encoder.": config.encoder_config.hidden_size // config.encoder_config.num_attention_heads,
        "model.local_decoder.": config.decoder_config.hidden_size // config.decoder_config.num_attention_heads,
        "model.global_transformer.": config.global_config.hidden_size // config.global_config.num_attention_heads,
    }


def _head_dim_for(key: str, dims: dict[str, int]) -> int:
    for prefix, dim in dims.items():
        if key.startswith(prefix):
            return dim
    raise KeyError(key)


def _ours_from_transformers_key(key: str, config: BLTConfig) -> str | None:
    """Our name for a ``BltForCausalLM`` key (None: dropped, the patcher of a model that does not patch by entropy)."""
    if not key.startswith("model.patcher."):
        return key
    if config.patching_mode != "entropy":
        return None
    rest = key[len("model.patcher."):]
    return "model.entropy_model." + (rest if rest.startswith("lm_head.") else "model." + rest)


def _transformers_from_ours_key(key: str, config: BLTConfig) -> str:
    """The ``BltForCausalLM`` name of one of our keys (the inverse of :func:`_ours_from_transformers_key`)."""
    if not key.startswith("model.entropy_model."):
        return key
    rest = key[len("model.entropy_model."):]
    return "model.patcher." + (rest[len("model."):] if rest.startswith("model.") else rest)


def _convert_state_dict(state: dict[str, torch.Tensor], config: BLTConfig, to_transformers: bool) -> dict[str, torch.Tensor]:
    """Rename every key one way and permute the q/k rows between interleaved RoPE (Transformers' Blt) and
    half-split RoPE (ours); rotary buffers are dropped (both sides rebuild them)."""
    dims = _head_dims(config)
    rename = _transformers_from_ours_key if to_transformers else _ours_from_transformers_key
    out = {}
    for key, value in state.items():
        if "rotary_emb" in key:
            continue
        new = rename(key, config)
        if new is None:
            continue
        ours = key if to_transformers else new  # head dims are looked up by our prefixes
        if _SELF_ATTN_QK.search(ours):
            value = _permute_rows(value, _head_dim_for(ours, dims), inverse=to_transformers)
        out[new] = value.contiguous()
    return out


def state_dict_from_transformers(hf_state: dict[str, torch.Tensor], config: BLTConfig) -> dict[str, torch.Tensor]:
    """Rename/permute a ``BltForCausalLM`` state dict into our ``BLTForCausalLM`` layout."""
    return _convert_state_dict(hf_state, config, to_transformers=False)


def state_dict_to_transformers(state: dict[str, torch.Tensor], config: BLTConfig) -> dict[str, torch.Tensor]:
    """Inverse of :func:`state_dict_from_transformers`."""
    return _convert_state_dict(state, config, to_transformers=True)


def _check_hash_table(state: dict[str, torch.Tensor], config: BLTConfig) -> None:
    table = state.get("model.encoder_hash_tok_embedding.weight")
    need = (
        config.encoder_hash_byte_group_nb_functions * len(config.encoder_hash_byte_group_size)
        * config.encoder_hash_byte_group_vocab
    )
    have = 0 if table is None else table.shape[0]
    if have != need:
        raise ValueError(
            f"hash n-gram table has {have} rows but the hash configuration (encoder_hash_byte_group_size="
            f"{config.encoder_hash_byte_group_size}, encoder_hash_byte_group_nb_functions="
            f"{config.encoder_hash_byte_group_nb_functions}, encoder_hash_byte_group_vocab="
            f"{config.encoder_hash_byte_group_vocab}) needs {need}: the checkpoint uses a different hash configuration"
        )


def _load_weights(path) -> dict[str, torch.Tensor]:
    from transformers.modeling_utils import load_state_dict

    single = _resolve(path, "model.safetensors")
    if single is not None:
        return load_state_dict(single)
    index = _resolve(path, "model.safetensors.index.json")
    if index is None:
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json (only safetensors are read)")
    with open(index, encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    state = {}
    for shard in shards:
        state.update(load_state_dict(_resolve(path, shard)))
    return state


def _place(model, device_map, max_memory=None, offload_folder=None, offload_buffers=False):
    """Put the converted ``model`` where ``device_map`` says, read as Transformers reads it (a device, an accelerator
    index, ``"cuda"`` = this process's ``LOCAL_RANK``, ``"auto"`` / ``"balanced"`` / ``"sequential"`` inferred under
    ``max_memory``, or a ``{module: device}`` dict that must cover the model). One device: the model moves there. Several,
    or ``"disk"`` (weights written to ``offload_folder``): accelerate's hooks dispatch it, as ``from_pretrained`` does for
    our own folders (``hf_device_map`` set); the conversion itself runs in CPU memory first. Refused: the meta device
    (the converted weights would be dropped) and the whole model on disk."""
    from accelerate.utils import check_device_map
    from transformers.integrations.accelerate import _get_device_map, accelerate_dispatch, check_and_set_device_map

    placement = _get_device_map(model, check_and_set_device_map(device_map), max_memory, None)
    check_device_map(model, placement)  # every parameter placed, as Transformers checks a dict
    devices = set()
    for device in placement.values():
        if isinstance(device, int):  # accelerate's convention: an index of the current accelerator
            accelerator = torch.accelerator.current_accelerator()
            if accelerator is None:
                raise ValueError(f"device_map={device_map!r} names accelerator {device}, but this machine has none")
            device = torch.device(accelerator.type, device)
        devices.add(str(device) if device == "disk" else torch.device(device))
    if torch.device("meta") in devices:
        raise ValueError(f"device_map={device_map!r} places a converted Transformers 'blt' checkpoint on the meta device: "
                         "its weights were converted in memory and would be dropped; name a real device")
    if len(devices) == 1 and "disk" not in devices:
        return model.to(devices.pop())  # no hf_device_map: Transformers sets none for one device
    if devices == {"disk"}:  # (accelerate 1.10 refuses it; 1.16 offloads nothing, then fails reading it)
        raise ValueError(f"device_map={device_map!r} offloads the whole converted model to disk; keep at least one "
                         "module on a device (with \"auto\", give max_memory room for the largest layer)")
    if "disk" in devices and offload_folder is None:
        raise ValueError(f"device_map={device_map!r} offloads part of the converted model to disk: pass "
                         "offload_folder= (where the offloaded weights are written), as for any from_pretrained")
    accelerate_dispatch(model, None, placement, os.fspath(offload_folder) if offload_folder else None, None,
                        offload_buffers)
    return model


def load(cls, path, **kwargs):
    """Build ``cls`` (``BLTForCausalLM``, or ``BLTModel``) from a Transformers ``blt`` checkpoint (weights converted in
    memory, on every process: accelerate's FSDP ``cpu_ram_efficient_loading`` is refused, see below). ``device_map``,
    ``max_memory``, ``offload_folder`` and ``offload_buffers`` place it as :func:`_place` says."""
    from transformers.integrations import is_fsdp_enabled

    if is_fsdp_enabled():
        raise ValueError(
            f"{path} is a Transformers 'blt' checkpoint, converted on load by every process; FSDP "
            "cpu_ram_efficient_loading needs a folder that loads on the meta device. Convert it once first: "
            "BLTForCausalLM.from_pretrained(blt_dir).save_pretrained(our_dir), then load our_dir"
        )
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
    attn_implementation = kwargs.pop("attn_implementation", None)
    place_kwargs = {key: kwargs.pop(key) for key in ("device_map", "max_memory", "offload_folder", "offload_buffers")
                    if key in kwargs}
    kwargs.pop("trust_remote_code", None)
    config_override = kwargs.pop("config", None)
    unknown = [k for k in kwargs if k not in BLTConfig.__dataclass_fields__]
    if unknown:
        raise TypeError(f"unsupported arguments for loading a Transformers blt checkpoint: {unknown}")
    hf_config = _read_config(os.fspath(path))
    if config_override is None:
        config = blt_config_from_transformers(hf_config, **kwargs)
    else:  # the caller's config, as for our own folders, once its hash layout is the checkpoint's (checked there)
        blt_config_from_transformers(hf_config, **{key: getattr(config_override, key) for key in HASH_FIELDS})
        config = copy.deepcopy(config_override)
        for key, value in kwargs.items():
            setattr(config, key, value)
    if dtype == "auto":  # the checkpoint's own dtype, as Transformers reads it
        dtype = hf_config.get("dtype") or hf_config.get("torch_dtype")
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    state = state_dict_from_transformers(_load_weights(os.fspath(path)), config)
    _check_hash_table(state, config)
    model = cls(config)
    if not hasattr(model, "lm_head"):  # the base model: its keys have no "model." prefix
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"converting {path}: missing weights {missing[:8]}, unexpected weights {unexpected[:8]}")
    if dtype is not None:
        model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    if place_kwargs.get("device_map") is not None:
        model = _place(model, **place_kwargs)
    config.name_or_path = os.fspath(path)
    if getattr(model, "generation_config", None) is not None and _resolve(path, "generation_config.json"):
        from transformers import GenerationConfig  # the folder's generate() defaults (eos ids, lengths, penalties)

        model.generation_config = GenerationConfig.from_pretrained(os.fspath(path))
    return model.eval()


def transformers_config_dict(config: BLTConfig) -> dict:
    """The ``BltConfig`` keyword arguments equivalent to our config (errors for modes Blt cannot express)."""
    if config.patching_mode not in ("entropy", "byte"):
        raise ValueError(
            f"Transformers' Blt only supports entropy (global threshold) or byte patching, not {config.patching_mode!r}"
        )
    if config.document_mask:
        raise ValueError("Transformers' Blt has no document masking: export a config with document_mask=False "
                         "(its logits differ wherever a row holds an EOS)")
    e, enc, dec, g = config.entropy_config, config.encoder_config, config.decoder_config, config.global_config

    def local(c, hidden_global):
        return dict(
            vocab_size=c.vocab_size, cross_attn_all_layers=c.cross_attn_all_layers, cross_attn_k=config.cross_attn_k,
            hidden_size_global=hidden_global, hidden_size=c.hidden_size, num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads, num_hidden_layers=c.num_hidden_layers,
            rms_norm_eps=c.rms_norm_eps, max_position_embeddings=c.max_position_embeddings,
            rope_parameters=dict(c.rope_parameters), intermediate_size=c.intermediate_size,
        )

    return dict(
        vocab_size=config.vocab_size,
        max_position_embeddings=g.max_position_embeddings,
        patch_in_forward=config.patching_mode == "entropy",
        patching_mode="entropy",
        patching_threshold=float(config.patching_threshold),
        patch_size=config.patch_size,
        max_patch_length=config.max_patch_length,
        local_attention_window_len=config.local_attention_window_len,
        cross_attn_k=config.cross_attn_k,
        encoder_hash_byte_group_size=list(config.encoder_hash_byte_group_size),
        encoder_hash_byte_group_vocab=config.encoder_hash_byte_group_vocab,
        encoder_hash_byte_group_nb_functions=config.encoder_hash_byte_group_nb_functions,
        patcher_config=dict(
            vocab_size=e.vocab_size, hidden_size=e.hidden_size, num_hidden_layers=e.num_hidden_layers,
            num_attention_heads=e.num_attention_heads, num_key_value_heads=e.num_key_value_heads,
            max_position_embeddings=e.max_position_embeddings, rms_norm_eps=e.rms_norm_eps,
            intermediate_size=e.intermediate_size, rope_parameters=dict(e.rope_parameters), sliding_window=e.sliding_window,
        ),
        encoder_config=local(enc, g.hidden_size),
        decoder_config=local(dec, g.hidden_size),
        global_config=dict(
            hidden_size=g.hidden_size, num_attention_heads=g.num_attention_heads,
            num_key_value_heads=g.num_key_value_heads, num_hidden_layers=g.num_hidden_layers,
            rms_norm_eps=g.rms_norm_eps, max_position_embeddings=g.max_position_embeddings,
            rope_parameters=dict(g.rope_parameters), intermediate_size=g.intermediate_size,
        ),
        tie_word_embeddings=False,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        use_cache=False,  # Transformers 5.23's Blt cache is incorrect; uncached is its only exact mode
        initializer_range=config.initializer_range,
    )


EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors")


def export(model, save_directory) -> None:
    """Write ``model`` (a BLTForCausalLM) as a Transformers ``blt`` folder (config, generation config with its
    special ids, model.safetensors), atomically (temp folder, then rename). The folder is replaced whole, so one that
    holds anything else (a tokenizer, notes, our own checkpoint) is refused rather than emptied."""
    from transformers import BltConfig, GenerationConfig
    from transformers.modeling_utils import safe_save_file

    target = Path(save_directory)
    others = sorted(p.name for p in target.iterdir() if p.name not in EXPORT_FILES) if target.is_dir() else []
    if others:
        raise FileExistsError(f"{save_directory} holds {others[:5]}: exporting replaces the whole folder; export "
                              "into an empty or new one")
    hf_config = BltConfig(**transformers_config_dict(model.config))
    hf_config.architectures = ["BltForCausalLM"]
    state = state_dict_to_transformers({k: v.detach().cpu() for k, v in model.state_dict().items()}, model.config)
    with atomic_dir(save_directory) as tmp:
        hf_config.save_pretrained(tmp)
        generation = GenerationConfig.from_model_config(hf_config)  # generate() stops at EOS, pads with pad
        if model.generation_config is not None:  # ... and keeps what the model's own generation defaults say
            generation.update(**model.generation_config.to_diff_dict())
        generation.save_pretrained(tmp)
        safe_save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})


export_to_transformers_blt = export  # the public name re-exported by hf_efficient_lm.blt


__all__ = [
    "blt_config_from_transformers",
    "state_dict_from_transformers",
    "state_dict_to_transformers",
    "export_to_transformers_blt",
    "export",
    "load",
    "is_transformers_blt_folder",
    "transformers_config_dict",
]
