"""SconeLlama: Llama with contextualised n-gram (f-gram) input embeddings (SCONE, arXiv 2502.01637).

Training mode (``config.fgram_mode == "model"``): every position whose longest f-gram suffix (length L >= 2) is
found gets its input vector from the f-gram model ``A_f`` run on that n-gram's *token embeddings* (the main model's
shared ``embed_tokens``), last position's output. Inference mode (``"table"``): ``A_f``'s outputs for all f-grams
were precomputed by ``hf_efficient_lm.scone.export_fgram_table`` into ``fgram_table.safetensors``, a
memory-mapped file read row by row on the CPU; the accelerator runs exactly the base Llama.

Parameter names of the main model are those of ``LlamaForCausalLM`` (``model.embed_tokens``, ``model.layers``,
``lm_head``), so an unmodified Llama checkpoint loads directly; SCONE adds ``model.fgram_model.*`` and (gated
fusion) ``model.fgram_gate``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, LlamaForCausalLM, LlamaModel
from transformers import initialization as init
from transformers.masking_utils import find_packed_sequence_indices
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaPreTrainedModel, LlamaRMSNorm
from transformers.utils import cached_file

from .compat_scone import CACHE_NAME, AutoClassesMixin, resolve_cache
from .configuration_scone_llama import SconeLlamaConfig
from .fgram_vocab_scone import INDEX_FILE, VOCAB_FILE, FgramVocab
from .table_scone import FgramTable

TABLE_FILE = "fgram_table.safetensors"
# Up to this many positions per forward (decode steps of small batches) the table-mode fusion does its bookkeeping
# on python ints; above it, tensor ops (and a dedupe of repeated rows) win.
_FEW_POSITIONS = 64


class SconeFgramModel(nn.Module):
    """The f-gram model ``A_f``: a small causal Llama stack over the main model's token embeddings.

    No token embedding of its own (it reads ``embed_tokens`` outputs), learned absolute positions 0..K-1 (paper,
    App. F) instead of RoPE, optional in/out projections when its width differs from the main model's. Ours, off in
    ``FGRAM_RECIPES["paper"]``: a final RMSNorm (``fgram_final_norm``) and a learned per-dimension output scale
    (``fgram_output_scale``; Llama token embeddings are far smaller than norm outputs).
    """

    def __init__(self, config: SconeLlamaConfig):
        super().__init__()
        self.main_config = config
        self.config = config.fgram_model_config()
        width, main_width = self.config.hidden_size, config.hidden_size
        self.in_proj = nn.Linear(main_width, width, bias=False) if width != main_width else None
        self.position_embedding = nn.Embedding(config.max_fgram_len, width)
        self.layers = nn.ModuleList(LlamaDecoderLayer(self.config, i) for i in range(self.config.num_hidden_layers))
        self.norm = LlamaRMSNorm(width, eps=self.config.rms_norm_eps) if config.fgram_final_norm else None
        self.out_proj = nn.Linear(width, main_width, bias=False) if width != main_width else None
        self.output_scale = nn.Parameter(torch.ones(main_width)) if config.fgram_output_scale else None
        if config.fgram_init == "identity":  # residual branches and positions start at 0: the output is T(x_i)
            for module in [self.position_embedding, *(m for x in self.layers for m in (x.self_attn.o_proj, x.mlp.down_proj))]:
                module.zero_init = True  # (flagged per module: _init_weights may skip a parent without own weights)

    def forward(self, window_embeds: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Args: window_embeds ``[U, L, d_main]`` (n-gram token embeddings, right-padded to ``L``), lengths
        ``[U]`` (2..L). Returns ``[U, d_main]``: the output at each window's last real token."""
        # PEFT's mixed adapter batches (adapter_names=[...], eval only) hand each LoRA layer one adapter per batch row,
        # but this model's rows are the distinct matched f-grams: PEFT would pair adapters with the wrong f-grams.
        if not self.training and any({"adapter_names", "alora_offsets"} & set(getattr(hook, "keywords", ()))
                                     for module in self.modules() for hook in module._forward_pre_hooks.values()):
            raise ValueError("PEFT's per-row adapters (adapter_names=...) cannot reach the f-gram model (fgram_mode="
                             "'model'): its rows are f-grams, not batch rows. Keep it out of LoRA's target_modules "
                             "(e.g. r'model\\.layers\\.\\d+\\..*_proj') or export the table (fgram_mode='table')")
        # The sub-config follows the main model's attention implementation (sdpa/eager may be switched later).
        self.config._attn_implementation = self.main_config._attn_implementation
        num, length, _ = window_embeds.shape
        hidden = self.in_proj(window_embeds) if self.in_proj is not None else window_embeds
        positions = torch.arange(length, device=hidden.device)
        hidden = hidden + self.position_embedding(positions)[None]
        # Causal mask: right padding after a window's last token can never reach that token's output.
        mask = torch.full((length, length), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device)
        mask = torch.triu(mask, diagonal=1)[None, None]
        head_dim = self.config.head_dim
        # Identity rotation (cos 1, sin 0): positions come from the learned absolute embedding above.
        cos = torch.ones(1, length, head_dim, dtype=hidden.dtype, device=hidden.device)
        sin = torch.zeros_like(cos)
        position_ids = positions[None]
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=(cos, sin))
        last = hidden[torch.arange(num, device=hidden.device), lengths.to(hidden.device) - 1]
        if self.norm is not None:
            last = self.norm(last)
        if self.out_proj is not None:
            last = self.out_proj(last)
        return last * self.output_scale if self.output_scale is not None else last


class SconeLlamaPreTrainedModel(AutoClassesMixin, LlamaPreTrainedModel):
    config_class = SconeLlamaConfig
    config: SconeLlamaConfig
    _no_split_modules = ["LlamaDecoderLayer"]
    # f-gram matching and fusion branch on the data (which positions matched, where a window starts)
    _can_compile_fullgraph = False

    def _scone_model(self) -> "SconeLlamaModel":
        """The :class:`SconeLlamaModel` (this model itself, or the causal LM's ``model``)."""
        return self if isinstance(self, SconeLlamaModel) else self.model

    def set_fgram_vocab(self, vocab: FgramVocab) -> None:
        """Attach the f-gram vocabulary after checking it fits this model's config."""
        config = self.config
        if vocab.num_fgrams != config.num_fgrams:
            raise ValueError(f"f-gram vocabulary has S={vocab.num_fgrams} f-grams but config.num_fgrams="
                             f"{config.num_fgrams}")
        if vocab.max_len != config.max_fgram_len:
            raise ValueError(f"f-gram vocabulary has K={vocab.max_len} but config.max_fgram_len={config.max_fgram_len}")
        if vocab.vocab_size > config.vocab_size:
            raise ValueError(f"f-gram vocabulary keys assume {vocab.vocab_size} token ids but the model has vocab_size "
                             f"{config.vocab_size}: it was mined with another tokenizer")
        vocab.check_tokenizer(fingerprint=config.fgram_tokenizer_fingerprint, where="this model's config")
        self._scone_model().fgram_vocab = vocab

    # -------------------------------------------------------------------------------------------- save / load
    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained`` plus the f-gram vocabulary and, in table mode, a streamed copy of the
        table file (next to the weights, never inside ``model.safetensors``)."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        scone = self._scone_model()
        if scone.fgram_vocab is not None:
            scone.fgram_vocab.save(save_directory)
        target = Path(save_directory) / TABLE_FILE
        if self.config.fgram_mode == "table" and scone.fgram_table is not None and not (
                target.exists() and os.path.samefile(scone.fgram_table.path, target)):
            shutil.copyfile(scone.fgram_table.path, target)
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, fgram_vocab: FgramVocab | None = None,
                        **kwargs):
        """Load a SconeLlama folder (its ``fgram_index.safetensors``, and in table mode its memory-mapped
        ``fgram_table.safetensors``), or wrap an unmodified Llama checkpoint: ``from_pretrained(llama_dir,
        fgram_vocab=vocab, fgram_num_layers=2, ...)`` (extra keyword arguments override config fields; the Llama
        weights load unchanged, ``A_f`` is fresh; a tokenizer in ``llama_dir`` must be the mining tokenizer)."""
        folder = str(pretrained_model_name_or_path)
        if fgram_vocab is not None and kwargs.get("config") is None:
            for key, value in (("num_fgrams", fgram_vocab.num_fgrams), ("max_fgram_len", fgram_vocab.max_len),
                               ("fgram_tokenizer_fingerprint", fgram_vocab.tokenizer_fingerprint)):
                if kwargs.setdefault(key, value) != value:
                    raise ValueError(f"{key}={kwargs[key]!r} contradicts the f-gram vocabulary ({value!r})")
        tokenizer_path = _resolve_file(folder, "tokenizer.json", kwargs) if fgram_vocab is not None else None
        if tokenizer_path is not None and fgram_vocab.tokenizer_fingerprint is not None:
            tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(tokenizer_path))
            fgram_vocab.check_tokenizer(tokenizer, where=f"the tokenizer in {folder}")
        result = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = result[0] if kwargs.get("output_loading_info") else result  # (model, loading_info)
        if fgram_vocab is None:
            index_path = _resolve_file(folder, INDEX_FILE, kwargs)
            if index_path is None:
                raise ValueError(f"{folder} holds no f-gram vocabulary ({INDEX_FILE}); to wrap a Llama checkpoint "
                                 "pass fgram_vocab=FgramVocab.load(...) (or mine one with "
                                 "hf_efficient_lm.scone.mine_fgrams)")
            _resolve_file(folder, VOCAB_FILE, kwargs)  # fetched alongside for Hub repos (human-readable summary)
            fgram_vocab = FgramVocab.load(os.path.dirname(index_path))
        model.set_fgram_vocab(fgram_vocab)
        scone = model._scone_model()
        if model.config.fgram_mode == "table":
            table_path = _resolve_file(folder, TABLE_FILE, kwargs)
            if table_path is None:
                raise FileNotFoundError(f"{folder} is a table-mode SconeLlama but has no {TABLE_FILE}; export one "
                                        "with hf_efficient_lm.scone.export_fgram_table(model, out_dir)")
            scone.fgram_table = FgramTable(table_path, num_rows=model.config.num_fgrams, dim=model.config.hidden_size)
        elif kwargs.get("config") is None and scone.fgram_model.output_scale is not None and json.loads(Path(
                _resolve_file(folder, "config.json", kwargs)).read_text()).get("model_type") != cls.config_class.model_type:
            with torch.no_grad():  # freshly wrapped Llama: scale f-gram outputs like its trained token embeddings
                scone.fgram_model.output_scale.fill_(float(scone.embed_tokens.weight.float().pow(2).mean().sqrt()))
        return result

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, SconeFgramModel) and module.output_scale is not None:
            # Match the RMS of freshly initialised token embeddings; wrapping a trained Llama re-sets it to the
            # actual embedding RMS (SconeLlamaForCausalLM.from_pretrained).
            init.constant_(module.output_scale, std)
        if getattr(module, "zero_init", False):  # fgram_init="identity"; init.* skips weights loaded from a file
            init.zeros_(module.weight)
        if isinstance(module, SconeLlamaModel) and module.fgram_gate is not None:
            init.zeros_(module.fgram_gate)  # gated fusion starts as the exact base model


class SconeLlamaModel(SconeLlamaPreTrainedModel, LlamaModel):
    """``LlamaModel`` whose input embeddings are SCONE's: f-gram vectors at matched positions.

    Holds (as plain attributes, not weights) the :class:`FgramVocab` used to match ids and, in table mode, the
    memory-mapped :class:`FgramTable`.
    """

    def __init__(self, config: SconeLlamaConfig):
        config.validate_architecture()  # from_pretrained sets overrides after the config's own checks
        LlamaModel.__init__(self, config)
        self.fgram_model = SconeFgramModel(config) if config.fgram_mode == "model" else None
        self.fgram_gate = nn.Parameter(torch.zeros(config.hidden_size)) if config.fgram_fusion == "gated" else None
        self.fgram_vocab: FgramVocab | None = None
        self.fgram_table: FgramTable | None = None
        self.post_init()

    # -------------------------------------------------------------------------------------------- matching
    def match_fgrams(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, document_ids=None):
        """``(fgram_row, fgram_len)`` LongTensors ``[B, T]`` for ``input_ids`` (padding = barrier; ``document_ids``
        ``[B, T]`` of packed rows: no f-gram crosses a document boundary)."""
        if attention_mask is not None and attention_mask.ndim != 2:  # (its padding would join f-grams with real tokens)
            raise ValueError("SconeLlama matches f-grams under a 2-D padding mask [batch, seq]; with a 4-D attention mask "
                             "pass precomputed fgram_row / fgram_len (model.match_fgrams(ids, padding_mask))")
        return self.require_vocab().match(input_ids, attention_mask, document_ids)

    def require_vocab(self) -> FgramVocab:
        if self.fgram_vocab is None:
            raise ValueError("this SconeLlama model has no f-gram vocabulary attached: load it with "
                             "SconeLlamaForCausalLM.from_pretrained(dir, fgram_vocab=...) or call set_fgram_vocab(), "
                             "or pass precomputed fgram_row/fgram_len")
        return self.fgram_vocab

    # -------------------------------------------------------------------------------------------- embeddings
    def fgram_vectors(self, input_ids, token_embeds, positions, rows, lengths) -> torch.Tensor:
        """f-gram vectors for matched ``positions`` (``[M, 2]`` batch/time indices) -> ``[M, hidden]``.

        Each distinct f-gram row is computed (or read from the table) once per batch and expanded back.
        """
        unique_rows, inverse = torch.unique(rows, return_inverse=True)
        if self.config.fgram_mode == "table":
            vectors = self.require_table().lookup(unique_rows, device=token_embeds.device, dtype=token_embeds.dtype)
            return vectors[inverse]
        # One representative occurrence of every distinct row: its window is the f-gram's tokens.
        count = rows.numel()
        order = torch.arange(count, device=rows.device)
        first = torch.full((unique_rows.numel(),), count, dtype=torch.long, device=rows.device)
        first = first.scatter_reduce(0, inverse, order, reduce="amin")
        rep_batch, rep_end, rep_len = positions[first, 0], positions[first, 1], lengths[first]
        max_len = int(rep_len.max())
        offsets = torch.arange(max_len, device=rows.device)
        columns = rep_end[:, None] - rep_len[:, None] + 1 + offsets[None]
        columns = torch.minimum(columns, rep_end[:, None])  # right padding repeats the last token (masked out)
        if bool((columns[:, 0] >= 0).all()):  # every window lies in this chunk (training, prefill)
            window_embeds = token_embeds[rep_batch[:, None], columns]  # gradients flow into the shared embed_tokens
        else:
            # A decode step after a KV cache: an f-gram ending at a new token may start in the cached history, so
            # its window tokens are not in input_ids. A row determines its tokens: read them from the vocabulary.
            window_embeds = self.embed_tokens(self._window_ids(input_ids, rep_batch, columns, unique_rows, rep_len))
        return self.fgram_model(window_embeds, rep_len)[inverse]

    def _window_ids(self, input_ids, rep_batch, columns, unique_rows, rep_len) -> torch.Tensor:
        """``[U, L]`` token ids of the windows, those starting before this chunk taken from the vocabulary."""
        window_ids = input_ids[rep_batch[:, None], columns.clamp(min=0)]
        early = (columns[:, 0] < 0).nonzero().squeeze(1)
        if self.fgram_vocab is None:  # (not require_vocab(): this case has its own remedy)
            raise ValueError("fgram_row/fgram_len name f-grams that start before input_ids (a decode step after a KV "
                             "cache): the f-gram model needs their tokens, so attach the f-gram vocabulary "
                             "(set_fgram_vocab()) or pass the whole history as input_ids")
        tokens, _ = self.fgram_vocab.fgram_tokens(unique_rows[early])
        tokens = tokens[:, : window_ids.shape[1]].to(window_ids.device)
        last = tokens.gather(1, (rep_len[early] - 1)[:, None].to(tokens.device))
        tokens = torch.where(tokens < 0, last, tokens)  # right padding repeats the last token (masked out)
        return window_ids.index_copy(0, early, tokens)

    def require_table(self) -> FgramTable:
        if self.fgram_table is None:
            raise ValueError("table-mode SconeLlama has no f-gram table loaded (fgram_table.safetensors)")
        return self.fgram_table

    def _fuse(self, token_embeds: torch.Tensor, flat_index: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """``token_embeds`` ``[B, T, d]`` with ``vectors`` ``[M, d]`` fused at the flat positions ``flat_index``
        ``[M]`` (``b * T + t``): replaced, or ``t + (g * v)`` (gated); elsewhere the token embedding is untouched."""
        flat = token_embeds.reshape(-1, token_embeds.shape[-1])
        if self.config.fgram_fusion == "replace":
            return flat.index_copy(0, flat_index, vectors).view_as(token_embeds)
        gate = self.fgram_gate
        if gate.dtype != vectors.dtype:  # even a no-op .to() on a Parameter costs ~30 us cold per decode step
            gate = gate.to(vectors.dtype)
        return flat.index_add(0, flat_index, gate * vectors).view_as(token_embeds)

    def _fuse_few_from_table(self, token_embeds, fgram_row: list, fgram_len: list) -> torch.Tensor:
        """:meth:`scone_embeddings` for a decode step (a few positions, matches as nested python lists): the same
        arithmetic, with the bookkeeping in python ints instead of a dozen tiny tensor ops (each of which costs more
        than the step's table read once the main model's forward has evicted it from the CPU caches)."""
        lengths = [length for per_row in fgram_len for length in per_row]
        matched = [i for i, length in enumerate(lengths) if length >= 2]
        if not matched:
            return token_embeds
        table, dtype = self.require_table(), token_embeds.dtype
        all_rows = [row for per_row in fgram_row for row in per_row]
        if len(lengths) == 1 and token_embeds.device.type == "cpu":  # batch-1 decode step: no index tensors
            vector = table.row_view(all_rows[0])
            vector = vector.to(dtype) if vector.dtype != dtype else vector
            if self.config.fgram_fusion == "replace":
                return vector.view_as(token_embeds).clone()
            gate = self.fgram_gate if self.fgram_gate.dtype == dtype else self.fgram_gate.to(dtype)
            return token_embeds + gate * vector  # t + (g * v), as in _fuse
        vectors = table.lookup([all_rows[i] for i in matched], device=token_embeds.device, dtype=dtype)
        return self._fuse(token_embeds, torch.tensor(matched, device=token_embeds.device), vectors)

    def scone_embeddings(self, input_ids, fgram_row, fgram_len) -> torch.Tensor:
        """Input vectors ``[B, T, hidden]``: token embeddings with f-gram vectors fused at matched positions.
        ``fgram_row`` / ``fgram_len``: LongTensors ``[B, T]`` or nested python lists of that shape."""
        token_embeds = self.embed_tokens(input_ids)
        batch, length = input_ids.shape
        as_lists = not torch.is_tensor(fgram_len)
        if as_lists:  # nested python lists (generate()'s decode steps)
            shapes_ok = (len(fgram_len) == len(fgram_row) == batch
                         and all(len(r) == len(n) == length for r, n in zip(fgram_row, fgram_len)))
        else:  # (float matches would be truncated: row 2.7 read as 2)
            shapes_ok = fgram_len.shape == fgram_row.shape == input_ids.shape and not (
                fgram_len.is_floating_point() or fgram_row.is_floating_point())
        if not shapes_ok:
            raise ValueError(f"fgram_row / fgram_len must be integer ids with the shape of input_ids {tuple(input_ids.shape)}")
        if batch * length <= _FEW_POSITIONS and self.config.fgram_mode == "table":
            if not as_lists:
                fgram_row, fgram_len = fgram_row.tolist(), fgram_len.tolist()
            return self._fuse_few_from_table(token_embeds, fgram_row, fgram_len)
        fgram_len = torch.as_tensor(fgram_len, dtype=torch.long, device=input_ids.device)
        fgram_row = torch.as_tensor(fgram_row, dtype=torch.long, device=input_ids.device)
        matched = fgram_len >= 2
        if not bool(matched.any()):
            return token_embeds
        positions = matched.nonzero()
        rows = fgram_row[matched]
        if self.config.fgram_mode == "model":  # (table mode: the table lookup checks the row range itself)
            low, high = torch.aminmax(rows)
            if int(low) < 0 or int(high) >= self.config.num_fgrams:
                raise ValueError(f"fgram_row values must lie in [0, num_fgrams={self.config.num_fgrams}) where "
                                 "fgram_len >= 2")
        vectors = self.fgram_vectors(input_ids, token_embeds, positions, rows, fgram_len[matched])
        return self._fuse(token_embeds, positions[:, 0] * length + positions[:, 1], vectors.to(token_embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        fgram_row: torch.LongTensor | None = None,
        fgram_len: torch.LongTensor | None = None,
        **kwargs,
    ):
        r"""Like ``LlamaModel.forward`` plus ``fgram_row`` / ``fgram_len`` (LongTensor ``[B, T]``, row -1 / length
        0 = no f-gram; or nested python lists of that shape, as ``generate()``'s decode steps pass them), the
        precomputed longest-suffix matches of ``input_ids``. Without them the ids are matched here, which is only
        possible when ``input_ids`` hold the whole history (no KV cache yet)."""
        cache = resolve_cache(cache, kwargs)
        if input_ids is None:
            raise ValueError("SconeLlama needs input_ids: f-gram matching looks up token ids, so inputs_embeds alone "
                             "cannot be used (nor PEFT prompt tuning / p-tuning, which pass embeddings only)")
        if inputs_embeds is not None:
            raise ValueError("pass either input_ids or inputs_embeds to SconeLlama, not both (it needs input_ids)")
        if (fgram_row is None) != (fgram_len is None):
            raise ValueError("fgram_row and fgram_len must be given together")
        if fgram_len is None:
            if cache is not None and not hasattr(cache, "get_seq_length"):  # generate_batch's PagedAttentionCache
                raise TypeError(f"SconeLlama cannot decode over a {type(cache).__name__} (continuous batching): its "
                                "f-gram matching needs each sequence's token history; use generate()")
            if cache is not None and cache.get_seq_length() > 0:
                raise ValueError("over a filled KV cache pass fgram_row/fgram_len: model.match_fgrams(full_ids)[..., "
                                 "-new:] when input_ids are new tokens after a history (generate() does this), "
                                 "model.match_fgrams(input_ids) after PEFT prefix tuning's virtual tokens")
            documents = None
            if attention_mask is None and position_ids is not None:
                # padding-free packed rows (positions restart per document): f-grams stay inside their document
                documents = find_packed_sequence_indices(position_ids.to(input_ids.device))
            fgram_row, fgram_len = self.match_fgrams(input_ids, attention_mask, documents)
        inputs_embeds = self.scone_embeddings(input_ids, fgram_row, fgram_len)
        return LlamaModel.forward(self, input_ids=None, attention_mask=attention_mask, position_ids=position_ids,
                                  **{CACHE_NAME: cache}, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)


def _resolve_file(folder: str, filename: str, kwargs: dict) -> str | None:
    """Local path of ``filename`` in a local folder or Hub repo, found as ``from_pretrained`` finds the weights
    (``subfolder``, ``revision``, ... from ``kwargs``); None if absent."""
    hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
    return cached_file(folder, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)


class SconeLlamaForCausalLM(SconeLlamaPreTrainedModel, LlamaForCausalLM):
    """Causal LM with SCONE input embeddings; same head, loss and generation as ``LlamaForCausalLM``."""

    def __init__(self, config: SconeLlamaConfig):
        SconeLlamaPreTrainedModel.__init__(self, config)
        self.model = SconeLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # -------------------------------------------------------------------------------------------- vocab / table
    @property
    def fgram_vocab(self) -> FgramVocab | None:
        return self.model.fgram_vocab

    @property
    def fgram_table(self) -> FgramTable | None:
        return self.model.fgram_table

    def match_fgrams(self, input_ids, attention_mask=None):
        """See :meth:`FgramVocab.match`: ``(fgram_row, fgram_len)`` LongTensors ``[B, T]``."""
        return self.model.match_fgrams(input_ids, attention_mask)

    # -------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        fgram_row: torch.LongTensor | None = None,
        fgram_len: torch.LongTensor | None = None,
        **kwargs,
    ):
        r"""``LlamaForCausalLM.forward`` plus ``fgram_row`` / ``fgram_len`` (LongTensor ``[B, T]``, or nested lists of
        ints): precomputed longest f-gram matches (e.g. dataset columns from ``add_fgram_columns``); named here so
        ``Trainer`` keeps those columns."""
        return LlamaForCausalLM.forward(
            self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            **{CACHE_NAME: resolve_cache(cache, kwargs)}, inputs_embeds=inputs_embeds, labels=labels,
            use_cache=use_cache, logits_to_keep=logits_to_keep, fgram_row=fgram_row, fgram_len=fgram_len, **kwargs,
        )

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, cache=None, attention_mask=None,
                                      inputs_embeds=None, is_first_iteration=False, past_key_values=None, **kwargs):
        if inputs_embeds is not None:
            raise ValueError("SconeLlama cannot generate from inputs_embeds: f-gram matching needs input_ids")
        cache = resolve_cache(cache, {"past_key_values": past_key_values, **kwargs})  # (generate < 5.24 checks it)
        kwargs.pop("fgram_row", None)
        kwargs.pop("fgram_len", None)
        # GenerationMixin asks inspect.signature(self.forward) on every step of a model registered for remote code
        # (for a legacy `cache_position` argument this forward does not take): ~50 us of cold introspection per
        # decode step, a quarter of SconeLlama's whole per-step overhead. This instance answers "not remote" for
        # the duration of the call; the class (and save_pretrained's code export) is untouched.
        self.__dict__["is_remote_code"] = lambda: False
        try:
            model_inputs = super().prepare_inputs_for_generation(
                input_ids,
                next_sequence_length=next_sequence_length,
                **{CACHE_NAME: cache},
                attention_mask=attention_mask,
                is_first_iteration=is_first_iteration,
                **kwargs,
            )
        finally:
            self.__dict__.pop("is_remote_code", None)  # (pop: another thread may share this model)
        # generate() hands us the whole history: match only the tail that can reach the new positions.
        num_new = model_inputs["input_ids"].shape[1]
        mask = attention_mask if attention_mask is not None and attention_mask.ndim == 2 else None
        vocab = self.model.require_vocab()
        if num_new == input_ids.shape[1]:  # the first forward, or a chunk of a chunked prefill (only its ids given)
            seen = cache.get_seq_length() if cache is not None else 0
            if seen:  # the f-grams of the chunk may begin in the previous one: its tail, kept on the cache below
                tail_end, tail = getattr(cache, "scone_prefill_tail", (None, None))
                if tail_end != seen:
                    raise ValueError("generate() passed only the new tokens over a filled cache, but SconeLlama's "
                                     "f-grams may begin in the cached tokens: pass the whole sequence as input_ids")
                input_ids = torch.cat([tail, input_ids], dim=1)
                mask = mask[:, -input_ids.shape[1]:] if mask is not None else None  # (it spans the whole history)
            if cache is not None:  # (the cache's own state: it lives and dies with the generation)
                cache.scone_prefill_tail = (seen + num_new, input_ids[:, -(vocab.max_len - 1):].clone())
        rows, lengths = vocab.match_last(input_ids, num_new, mask, as_lists=True)
        model_inputs["fgram_row"], model_inputs["fgram_len"] = rows, lengths
        return model_inputs
