"""The contract every model class of the package honours, as data.

A family joins the suite by adding ``tests/contract/case_<family>.py`` that defines ``CASES: list[ContractCase]``;
``test_contract.py`` discovers those modules and runs every check over every case. Plain ``LlamaForCausalLM``
(``case_llama.py``) is the reference row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from packaging.version import Version
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from hf_efficient_lm.compat import CACHE_NAME

# The argument PEFT passes prefix tuning's filled cache under: PEFT 0.22+ uses Transformers' own name (``cache`` on
# 5.24+), in place of generate()'s empty cache; earlier releases always pass ``past_key_values``, which on 5.24+ arrives
# beside generate()'s own empty ``cache`` (the check ``prefix_tuning_past_key_values`` replays that on PEFT 0.22+).
# Earlier releases also look for generate()'s cache under that name, so on 5.24+ their prompt tuning re-injects the
# prompt at every step (the check ``prompt_tuning`` skips that combination: upstream, Llama too).
PEFT_CACHE_NAME = CACHE_NAME if Version(metadata.version("peft")) >= Version("0.22") else "past_key_values"

CHECKS = (
    "save_load",
    "auto_classes",
    "remote_code",
    "generate_cache",
    "left_padding",
    "mask_shape",
    "threads",
    "inputs_embeds",
    "assisted_decoding",
    "continuous_batching",
    "pipeline",
    "padding_free",
    "outputs",
    "sdpa_eager",
    "trainer",
    "gradient_accumulation",
    "trainer_resume",
    "gradient_checkpointing",
    "torch_compile",
    "bf16_autocast",
    "lora",
    "lora_mixed_batch",
    "prefix_tuning",
    "prefix_tuning_past_key_values",
    "prompt_tuning",
    "buffers",
    "resize_embeddings",
    "invalid_config",
)


LLAMA_LORA_TARGETS = ("q_proj", "v_proj")


def default_save(model: PreTrainedModel, path: Path) -> None:
    model.save_pretrained(path)


def word_tokenizer(model: PreTrainedModel) -> PreTrainedTokenizerFast:
    """A tokenizer for a model's whole vocabulary: id ``i`` is the word ``w<i>`` (0..2 are pad / BOS / EOS, as in the
    tiny configs), words split on spaces and decode joined by spaces. It left-pads, as generation batches need."""
    special = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
    vocab = {**{token: i for i, token in enumerate(special.values())},
             **{f"w{i}": i for i in range(len(special), model.config.vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, padding_side="left", **special)


@dataclass
class ContractCase:
    """One row of the contract table.

    make_model: builds a tiny seeded model with random weights (fp32), ``attn_implementation`` left to the default.
        It takes ``attn_implementation`` as keyword (``"sdpa"`` / ``"eager"``) so the sdpa == eager check can build
        the same weights twice.
    make_input_ids: ``(batch, length, generator) -> LongTensor[batch, length]`` of ids that exercise the model
        (anchors for AnchorLlama, frequent n-grams for SCONE, bytes for BLT); never the pad id.
    lora_target_modules: explicit PEFT ``target_modules`` (module-name suffixes); default the Llama attention's
        ``q_proj`` / ``v_proj`` (every Llama-based family).
    make_tokenizer: ``model -> tokenizer`` over the model's ids (default ``word_tokenizer``), left-padding, that the
        text-generation pipeline loads from the saved folder.
    save: writes the folder a user would publish (default ``save_pretrained``); a model loaded back from it must give
        the same logits as the in-memory model.
    trust_remote_code: False only for classes Transformers itself ships (the Llama reference).
    skips: check name -> the reason that check does not apply (shown by pytest). Never a way to hide a failure.
    invalid_config: ``(field, value, message)``: a config field of this class, a value its validation refuses, and a
        regex the error must match (``save_pretrained`` must refuse it rather than write an unloadable folder).
    inputs_embeds_kwargs: ``(model, input_ids) -> dict``: what ``generate(inputs_embeds=...)`` needs besides the
        embeddings to equal ``generate(input_ids)`` (AnchorLlama: the prompt's ``anchor_flags``).
    inputs_embeds_error: for a class whose forward needs the ids themselves (f-gram matching, bytes), the regex of
        the named error ``generate(inputs_embeds=...)`` raises instead.
    assisted_decoding_error: for a class whose cache cannot drop rejected draft tokens (it prunes or folds them), the
        regex of the named error assisted decoding (``prompt_lookup_num_tokens``, ``assistant_model``) raises instead.
    continuous_batching_error: for a class whose state has no paged form (Transformers' continuous batching hands the
        forward a ``PagedAttentionCache``), the regex of the named error ``generate_batch`` raises, or reports as each
        request's ``error`` (its batching loop catches what a forward raises), instead of generating.
    mixed_adapter_batch_error: for a class whose LoRA layers (with ``lora_target_modules``) also run on rows other than
        the batch's (SconeLlama's f-gram model: one row per distinct f-gram), the regex of the named error PEFT's
        mixed adapter batches (``adapter_names=[...]``, one adapter per row) raise instead.
    prefix_tuning_kwargs: ``(model, input_ids) -> dict``: what a forward over PEFT prefix tuning's filled cache needs
        besides the ids (SconeLlama: the ids' own f-gram matches, since no f-gram reaches into virtual tokens).
    prompt_learning_config: the sizes PEFT's prompt-learning configs (``PrefixTuningConfig``, ``PromptTuningConfig``,
        ``PromptEncoderConfig``) cannot read from this class's config.
    prefix_tuning_error: for a class whose cache cannot start from PEFT's prefix (it keeps per-token bookkeeping), the
        regex of the named error prefix-tuned ``generate()`` raises instead.
    prompt_tuning_error: for a class whose forward cannot take PEFT prompt tuning's virtual-token embeddings (it needs
        the ids themselves, or flags PEFT cannot pass), the regex of the named error its training forward and
        ``generate()`` raise instead.
    """

    name: str
    make_model: Callable[..., PreTrainedModel]
    make_input_ids: Callable[[int, int, torch.Generator], torch.LongTensor]
    lora_target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LORA_TARGETS))
    make_tokenizer: Callable[[PreTrainedModel], PreTrainedTokenizerBase] = word_tokenizer
    save: Callable[[PreTrainedModel, Path], None] = default_save
    trust_remote_code: bool = True
    skips: dict[str, str] = field(default_factory=dict)
    atol: float = 1e-5
    invalid_config: tuple[str, object, str] | None = None
    inputs_embeds_kwargs: Callable[[PreTrainedModel, torch.LongTensor], dict] = lambda model, input_ids: {}
    inputs_embeds_error: str | None = None
    assisted_decoding_error: str | None = None
    continuous_batching_error: str | None = None
    mixed_adapter_batch_error: str | None = None
    prefix_tuning_kwargs: Callable[[PreTrainedModel, torch.LongTensor], dict] = lambda model, input_ids: {}
    prompt_learning_config: dict = field(default_factory=dict)
    prefix_tuning_error: str | None = None
    prompt_tuning_error: str | None = None

    def __post_init__(self):
        unknown = set(self.skips) - set(CHECKS)
        if unknown:
            raise ValueError(f"{self.name}: unknown contract checks in skips: {sorted(unknown)}")
        if self.invalid_config is None and "invalid_config" not in self.skips:
            raise ValueError(f"{self.name}: declare invalid_config (a field, a refused value, the error's regex)")


def random_ids(vocab_size: int, low: int = 3):
    """A ``make_input_ids`` drawing uniformly from ``[low, vocab_size)`` (skipping BOS/EOS/PAD at 0..2)."""

    def make(batch: int, length: int, generator: torch.Generator) -> torch.LongTensor:
        return torch.randint(low, vocab_size, (batch, length), generator=generator)

    return make
