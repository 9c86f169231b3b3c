"""Configuration of AnchorLlama: a plain Llama plus the anchor (AnLLM) attention settings."""

from __future__ import annotations

from transformers import LlamaConfig

ANCHOR_MODES = ("ep", "ac")
ANCHOR_MASK_VARIANTS = ("v1", "v0")
ANCHOR_POSITION_MODES = ("absolute", "compact")
# Attention back-ends that accept an arbitrary (AnSAN) mask. Flash attention only understands causal + padding.
ANCHOR_ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention")


class AnchorLlamaConfig(LlamaConfig):
    r"""A :class:`~transformers.LlamaConfig` with the anchor-based self-attention (AnSAN) settings of AnLLM.

    Args:
        anchor_token_ids (`list[int]`):
            Token ids that end a sentence and become its *anchor* (e.g. the ids of ``.``, ``!``, ``?``, newline in
            ``"ep"`` mode, or the single ``<AC>`` id in ``"ac"`` mode). Every id must be ``< vocab_size``. An empty list
            means "no anchors": the model then behaves exactly like Llama (causal mask, full cache).
        anchor_mode (`str`, *optional*, defaults to ``"ep"``):
            ``"ep"`` (endpoint tokens are anchors) or ``"ac"`` (a dedicated ``<AC>`` token is inserted after each
            sentence). Informational for the data pipeline and helpers; the attention rule is the same.
        anchor_token (`str`, *optional*):
            The text of the ``<AC>`` token in ``"ac"`` mode (so tokenizers can be checked), ``None`` in ``"ep"`` mode.
        anchor_mask_variant (`str`, *optional*, defaults to ``"v1"``):
            ``"v1"`` (paper and the official training code): an anchor sees only its own sentence. ``"v0"`` (an older
            file of the official repository): an anchor may also see earlier anchors.
        position_mode (`str`, *optional*, defaults to ``"absolute"``):
            Rotary positions of tokens fed through a pruned :class:`AnchorCache`: ``"absolute"`` (the position in the
            text, as in training: cached decoding equals the full masked forward) or ``"compact"`` (the official
            real-time inference: a chunk starts at the number of entries the cache *keeps*, so positions depend on
            the chunking, see ``hf_efficient_lm.anchor.compact_position_ids``; ``position_ids`` are then ignored).
    """

    model_type = "hfelm_anchor_llama"

    anchor_token_ids: list[int] | None = None
    anchor_mode: str = "ep"
    anchor_token: str | None = None
    anchor_mask_variant: str = "v1"
    position_mode: str = "absolute"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self) -> None:
        """Transformers' validation hook, extended with the anchor fields: raises ``ValueError`` naming the bad value."""
        super().validate_architecture()
        ids = [] if self.anchor_token_ids is None else self.anchor_token_ids
        if not isinstance(ids, (list, tuple)):
            raise ValueError(f"anchor_token_ids must be a list of ints, got {ids!r}")
        for token_id in ids:
            if isinstance(token_id, bool) or int(token_id) != token_id:
                raise ValueError(f"anchor_token_ids must hold ints, got {token_id!r}")
            if not 0 <= int(token_id) < self.vocab_size:
                raise ValueError(f"anchor token id {token_id} is outside the vocabulary (vocab_size="
                                 f"{self.vocab_size}); resize the embeddings first (e.g. with "
                                 "hf_efficient_lm.anchor.add_anchor_token) or fix the id.")
        if self.anchor_mode not in ANCHOR_MODES:
            raise ValueError(f"anchor_mode must be one of {ANCHOR_MODES}, got {self.anchor_mode!r}")
        if self.anchor_mask_variant not in ANCHOR_MASK_VARIANTS:
            raise ValueError(f"anchor_mask_variant must be one of {ANCHOR_MASK_VARIANTS}, "
                             f"got {self.anchor_mask_variant!r}")
        if self.position_mode not in ANCHOR_POSITION_MODES:
            raise ValueError(f"position_mode must be one of {ANCHOR_POSITION_MODES}, got {self.position_mode!r}")
        self.anchor_token_ids = [int(i) for i in ids]

    def validate(self) -> None:  # save_pretrained runs it; the inherited one runs the parent's checks only
        self.validate_architecture()
        super().validate()
