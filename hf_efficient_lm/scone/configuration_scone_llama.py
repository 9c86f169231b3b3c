"""Configuration of SconeLlama: a Llama main model plus contextualised f-gram input embeddings (SCONE)."""

from __future__ import annotations

from transformers import LlamaConfig

FUSION_MODES = ("replace", "gated")
FGRAM_MODES = ("model", "table")
# Named settings of the f-gram path. "paper": exactly SCONE (arXiv 2502.01637): the matched position's input vector
# is replaced by A_f's last-position output, with no extra norm or scale. "gated": ours, T(x) + g * A_f with a
# final RMSNorm and a learned output scale on A_f; the wrapped Llama is unchanged at step 0. Use as
# ``SconeLlamaForCausalLM.from_pretrained(base, fgram_vocab=v, **FGRAM_RECIPES["paper"])``.
FGRAM_RECIPES = {
    "paper": {"fgram_fusion": "replace", "fgram_final_norm": False, "fgram_output_scale": False},
    "gated": {"fgram_fusion": "gated", "fgram_final_norm": True, "fgram_output_scale": True},
}


class SconeLlamaConfig(LlamaConfig):
    r"""Everything of :class:`~transformers.LlamaConfig` (the main model) plus the SCONE settings.

    Args:
        num_fgrams (`int`): ``S``, number of f-grams in the vocabulary / rows of the embedding table.
        max_fgram_len (`int`): ``K``, longest f-gram (f-grams have length 2..K).
        fgram_num_layers (`int`): depth of the f-gram model ``A_f`` (Llama decoder layers).
        fgram_hidden_size (`int`, *optional*): width of ``A_f``; defaults to ``hidden_size``. When it differs,
            in/out projections bridge the widths.
        fgram_num_heads (`int`, *optional*): attention heads of ``A_f``; defaults to ``num_attention_heads``
            (or the largest divisor of ``fgram_hidden_size`` not above it).
        fgram_intermediate_size (`int`, *optional*): MLP width of ``A_f``; defaults to ``intermediate_size``
            scaled by ``fgram_hidden_size / hidden_size``.
        fgram_fusion (`str`): ``"replace"`` (paper: a matched position's input vector *is* the f-gram embedding) or
            ``"gated"`` (``T(x) + g * A_f(...)`` with a per-dimension gate ``g`` initialised to 0, so a wrapped
            pretrained Llama is unchanged at step 0).
        fgram_mode (`str`): ``"model"`` (training: ``A_f`` runs in the forward pass) or ``"table"`` (inference:
            precomputed rows read from ``fgram_table.safetensors`` next to the weights; no ``A_f``).
        fgram_final_norm (`bool`): apply an RMSNorm to ``A_f``'s output (ours; the paper has none).
        fgram_output_scale (`bool`): multiply ``A_f``'s output by a learned per-dimension scale initialised to the
            token embeddings' RMS (ours; the paper has none).
        fgram_init (`str`): ``"random"`` (Llama init) or ``"identity"`` (ours: ``A_f``'s residual branches and positions
            start at 0, so its output starts as ``T(x_i)``, the embedding it replaces; needs equal widths).
        fgram_tokenizer_fingerprint (`str`, *optional*): fingerprint of the tokenizer the f-grams were mined with.

    ``FGRAM_RECIPES["paper"]`` / ``["gated"]`` name the two settings of the last three fields.
    """

    model_type = "hfelm_scone_llama"

    num_fgrams: int = 0
    max_fgram_len: int = 5
    fgram_num_layers: int = 2
    fgram_hidden_size: int | None = None
    fgram_num_heads: int | None = None
    fgram_intermediate_size: int | None = None
    fgram_fusion: str = "gated"
    fgram_mode: str = "model"
    fgram_tokenizer_fingerprint: str | None = None
    fgram_final_norm: bool = True
    fgram_output_scale: bool = True
    fgram_init: str = "random"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        """Transformers' validation hook, extended with the SCONE fields: raises ``ValueError`` naming the bad value.
        Also run by the model's ``__init__``, so ``from_pretrained(..., fgram_fusion=...)`` overrides are checked."""
        super().validate_architecture()
        if self.fgram_fusion not in FUSION_MODES:
            raise ValueError(f"fgram_fusion must be one of {FUSION_MODES}, got {self.fgram_fusion!r}")
        if self.fgram_mode not in FGRAM_MODES:
            raise ValueError(f"fgram_mode must be one of {FGRAM_MODES}, got {self.fgram_mode!r}")
        if self.fgram_init not in ("random", "identity") or (self.fgram_init == "identity" and (
                self.fgram_hidden_size or self.hidden_size) != self.hidden_size):
            raise ValueError(f"fgram_init must be 'random' or 'identity' (equal widths), got {self.fgram_init!r}")
        for name in ("fgram_final_norm", "fgram_output_scale"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("num_fgrams", "max_fgram_len", "fgram_num_layers"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r}")
        if self.max_fgram_len < 2:
            raise ValueError(f"max_fgram_len must be >= 2, got {self.max_fgram_len}")
        if self.num_fgrams < 0 or self.fgram_num_layers < 1:
            raise ValueError(f"need num_fgrams >= 0 and fgram_num_layers >= 1, got {self.num_fgrams}, "
                             f"{self.fgram_num_layers}")

    def validate(self) -> None:  # save_pretrained runs it; the inherited one runs the parent's checks only
        self.validate_architecture()
        super().validate()

    def fgram_model_config(self) -> LlamaConfig:
        """The :class:`LlamaConfig` of the f-gram model ``A_f`` (no embedding table of its own)."""
        width = self.fgram_hidden_size or self.hidden_size
        heads = self.fgram_num_heads
        if heads is None:
            heads = self.num_attention_heads
            while width % heads:
                heads -= 1
        if width % heads:
            raise ValueError(f"fgram_hidden_size {width} is not divisible by fgram_num_heads {heads}")
        intermediate = self.fgram_intermediate_size or max(1, self.intermediate_size * width // self.hidden_size)
        return LlamaConfig(
            vocab_size=1, hidden_size=width, intermediate_size=intermediate, num_hidden_layers=self.fgram_num_layers,
            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=self.max_fgram_len,
            rms_norm_eps=self.rms_norm_eps, hidden_act=self.hidden_act, attention_bias=self.attention_bias,
            mlp_bias=self.mlp_bias, attention_dropout=self.attention_dropout, initializer_range=self.initializer_range,
            bos_token_id=None, eos_token_id=None, pad_token_id=None,
        )

__all__ = ["FGRAM_RECIPES", "SconeLlamaConfig"]
