"""Configurations of BLT (Byte Latent Transformer, Pagnoni et al. 2024) and of its entropy model. ``BLTConfig`` is
composite like Transformers' ``BltConfig``: the entropy model, local encoder, local decoder and latent transformer
each have a sub-config built on Transformers' Mistral (sliding window) / Llama configs."""

from __future__ import annotations

from transformers import LlamaConfig, MistralConfig, PreTrainedConfig

from .patcher_blt import check_patching


class _BLTByteConfig(MistralConfig):
    """What the byte-level models (entropy model, local encoder / decoder) share: 260 byte ids, the specials,
    RMSNorm eps 1e-5, a 512-byte sliding window, no tied head; ``num_key_value_heads=0`` means one per head."""

    vocab_size: int = 260
    num_key_value_heads: int = 0
    rms_norm_eps: float = 1e-5
    sliding_window: int | None = 512
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if not self.num_key_value_heads:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)
        if self.tie_word_embeddings:  # no BLT model declares a tie, so True would be silently ignored
            raise ValueError(f"{type(self).__name__}: BLT's LM heads are separate weights; tie_word_embeddings must be False")


class BLTEntropyConfig(_BLTByteConfig):
    """The entropy model: a small causal byte LM with sliding-window attention (defaults = released BLT patcher:
    hidden 768, 14 layers, 12 heads, FFN 2048, window 512, RoPE theta 10000, vocab 260)."""

    model_type = "hfelm_blt_entropy"
    default_theta = 10000.0

    hidden_size: int = 768
    intermediate_size: int = 2048
    num_hidden_layers: int = 14
    num_attention_heads: int = 12
    max_position_embeddings: int = 8192


class BLTLocalConfig(_BLTByteConfig):
    """Local encoder / decoder byte transformer (sliding window copied from ``BLTConfig.local_attention_window_len``).
    cross_attn_all_layers: cross-attention at every layer (decoder default) or only at the last encoder layer."""

    model_type = "hfelm_blt_local"
    default_theta = 500000.0

    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_hidden_layers: int = 1
    num_attention_heads: int = 16
    max_position_embeddings: int = 24576
    cross_attn_all_layers: bool = False


class BLTLocalEncoderConfig(BLTLocalConfig):
    """The local encoder's sub-config (``BLTConfig.encoder_config``): 1 layer, cross-attention at the last layer."""

    model_type = "hfelm_blt_local_encoder"
    base_config_key = "encoder_config"


class BLTLocalDecoderConfig(BLTLocalConfig):
    """The local decoder's sub-config (``BLTConfig.decoder_config``): 9 layers, cross-attention at every layer.
    Checkpoints saved before the split (sub-config model type ``hfelm_blt_local``) load unchanged."""

    model_type = "hfelm_blt_local_decoder"
    base_config_key = "decoder_config"

    num_hidden_layers: int = 9
    cross_attn_all_layers: bool = True


class BLTGlobalConfig(LlamaConfig):
    """The latent transformer over patches (no embedding table, no final norm)."""

    model_type = "hfelm_blt_global"
    default_theta = 500000.0

    vocab_size: int = 1  # unused: the latent transformer has no embedding table
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 25
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False


_MISSING = object()
# Fields that ``validate_architecture`` checks; assigning one after construction re-runs it.
_VALIDATED_FIELDS = frozenset({"patching_mode", "patching_threshold", "patching_threshold_add", "patching_meta_start",
                               "patch_size", "max_patch_length", "document_mask", "eos_token_id", "cross_attn_k",
                               "vocab_size", "tie_word_embeddings", "encoder_hash_byte_group_size",
                               "encoder_hash_byte_group_vocab", "encoder_hash_byte_group_nb_functions"})


class BLTConfig(PreTrainedConfig):
    """Configuration of :class:`BLTForCausalLM`.

    Args:
        vocab_size: byte vocabulary (260 = 256 bytes + BOE/BOS/EOS/BPE specials).
        patching_mode: ``"entropy"`` (global threshold), ``"entropy_monotonic"`` (H[t] - H[t-1] > threshold),
            ``"entropy_combined"`` (Meta's global + monotonic rule: H[t] > threshold and H[t] - H[t-1] >
            patching_threshold_add), ``"space"``, ``"static"`` (every ``patch_size`` bytes) or ``"byte"``.
        patching_threshold: entropy threshold in nats (released BLT: 1.3354...).
        patching_threshold_add: the difference threshold of ``entropy_combined`` (Meta's ``threshold_add``).
        patching_meta_start: default True: the difference rules start as in Meta's patcher (byte 2 always opens a patch,
            in ``entropy_combined`` byte 3 never does); False decides byte 2 by H[1] - H[0] like later bytes.
        patch_size: stride of static patching.
        max_patch_length: optional cap on patch length (longer patches are split).
        cross_attn_k: patch vectors per patch in the cross-attentions (U_E); latent width = k x encoder width, or a
            projection when they differ.
        local_attention_window_len: sliding window of the local encoder/decoder (bytes).
        document_mask: default False (Transformers' ``Blt``); True is Meta's training recipe: no byte, patch or n-gram
            reads across an EOS (``eos_token_id``) in the entropy model, local models and latent transformer, and
            each document is patched and positioned as if alone.
        encoder_hash_byte_group_size: n-gram sizes of the hash embeddings (default 3..8).
        encoder_hash_byte_group_vocab: buckets per (hash function, n).
        encoder_hash_byte_group_nb_functions: number of hash functions (each a different prime).
        entropy_config / encoder_config / decoder_config / global_config: sub-configs (dicts or config objects)."""

    model_type = "hfelm_blt"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    sub_configs_defaults = {"entropy_config": BLTEntropyConfig, "encoder_config": BLTLocalEncoderConfig,
                            "decoder_config": BLTLocalDecoderConfig, "global_config": BLTGlobalConfig}

    vocab_size: int = 260
    patching_mode: str = "entropy"
    patching_threshold: float = 1.335442066192627
    patching_threshold_add: float | None = None
    patching_meta_start: bool = True
    patch_size: int = 4
    max_patch_length: int | None = None
    document_mask: bool = False
    cross_attn_k: int = 2
    local_attention_window_len: int | None = 512
    encoder_hash_byte_group_size: list[int] | None = None
    encoder_hash_byte_group_vocab: int = 500002
    encoder_hash_byte_group_nb_functions: int = 1
    entropy_config: dict | PreTrainedConfig | None = None
    encoder_config: dict | PreTrainedConfig | None = None
    decoder_config: dict | PreTrainedConfig | None = None
    global_config: dict | PreTrainedConfig | None = None
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0

    def __post_init__(self, **kwargs):
        # A decoder given as a dict keeps the decoder defaults it does not override.
        if isinstance(self.decoder_config, dict):
            self.decoder_config = {"num_hidden_layers": 9, "cross_attn_all_layers": True, **self.decoder_config}
        super().__post_init__(**kwargs)
        sizes = self.encoder_hash_byte_group_size
        self.encoder_hash_byte_group_size = [int(n) for n in ([3, 4, 5, 6, 7, 8] if sizes is None else sizes)]
        self.validate_architecture()
        # The local window lives in one place (like Transformers' BltConfig); byte embeddings and LM head follow the
        # top-level vocabulary (resize_token_embeddings grows it; the entropy model keeps 260 ids, added ids read as BOE).
        for sub in (self.encoder_config, self.decoder_config):
            sub.sliding_window, sub.vocab_size = self.local_attention_window_len, self.vocab_size

    def validate_architecture(self) -> None:
        """Transformers' validation hook, extended with the BLT fields: raises ``ValueError`` naming the field."""
        super().validate_architecture()
        check_patching(self.patching_mode, self.patching_threshold, self.patch_size, self.max_patch_length,
                       self.patching_threshold_add)
        if self.tie_word_embeddings:  # (as in _BLTByteConfig)
            raise ValueError("BLTConfig: the LM head is separate from the byte embeddings; tie_word_embeddings must be False")
        for name in ("document_mask", "patching_meta_start"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        eos = self.eos_token_id
        if self.document_mask and (isinstance(eos, bool) or not isinstance(eos, int) or not 0 < eos < self.vocab_size):
            raise ValueError(f"document_mask needs eos_token_id to be one byte id in [1, {self.vocab_size}), got {eos!r}")
        if not isinstance(self.cross_attn_k, int) or self.cross_attn_k < 1:
            raise ValueError(f"cross_attn_k must be a positive int, got {self.cross_attn_k!r}")
        if any(n < 1 for n in self.encoder_hash_byte_group_size):
            raise ValueError(f"encoder_hash_byte_group_size must hold positive n-gram sizes, got {self.encoder_hash_byte_group_size}")
        if self.encoder_hash_byte_group_vocab < 1 or self.encoder_hash_byte_group_nb_functions < 0:
            raise ValueError("encoder_hash_byte_group_vocab must be >= 1 and encoder_hash_byte_group_nb_functions >= 0")
        if self.entropy_config.vocab_size > self.vocab_size:
            raise ValueError(f"entropy_config.vocab_size ({self.entropy_config.vocab_size}) cannot exceed vocab_size ({self.vocab_size})")
        if self.encoder_config.hidden_size != self.decoder_config.hidden_size:
            raise ValueError("encoder_config.hidden_size and decoder_config.hidden_size must match (the decoder reads encoder "
                             f"states), got {self.encoder_config.hidden_size} and {self.decoder_config.hidden_size}")

    def __setattr__(self, key, value):
        # ``from_pretrained(path, patching_threshold=...)`` sets overrides with setattr after ``__post_init__``: check
        # them there too (as AnchorLlama's config does), restoring the old value when the new one is invalid.
        old = self.__dict__.get(key, _MISSING)
        super().__setattr__(key, value)
        if key in _VALIDATED_FIELDS and self.__dict__.get("_post_init_done"):
            try:
                self.validate_architecture()
            except ValueError:
                self.__dict__.pop(key, None) if old is _MISSING else super().__setattr__(key, old)
                raise

    def validate(self) -> None:  # save_pretrained runs it; the inherited one runs the parent's checks only
        self.validate_architecture()
        super().validate()

    @property
    def num_hidden_layers(self) -> int:
        """Layers of the latent transformer (what generic utilities read)."""
        return self.global_config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.decoder_config.hidden_size

    @property
    def latent_input_size(self) -> int:
        """Width of the patch vectors the encoder emits (k x encoder width)."""
        return self.encoder_config.hidden_size * self.cross_attn_k


__all__ = ["BLTConfig", "BLTEntropyConfig", "BLTLocalConfig", "BLTLocalEncoderConfig", "BLTLocalDecoderConfig", "BLTGlobalConfig"]
