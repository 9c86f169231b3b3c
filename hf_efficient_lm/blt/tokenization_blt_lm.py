"""Byte tokenizer for BLT with the id layout of Transformers' / Meta's Blt.

Ids 0..3 are special (0 = BOE/pad, 1 = BOS, 2 = EOS, 3 = BPE delimiter); raw byte ``b`` is id ``b + 4``; the vocabulary
has 260 entries. Strings are encoded as UTF-8 (``surrogatepass`` so that any Python ``str``, lone surrogates included,
round-trips exactly); raw ``bytes`` go through :meth:`BLTTokenizer.encode_bytes` / :meth:`BLTTokenizer.decode_bytes`.
Special-token strings typed inside the text (``"<s>"``) are encoded as their bytes, never as special ids, so that
encoding is lossless.
"""

from __future__ import annotations

import codecs

from transformers.tokenization_python import AddedToken, PreTrainedTokenizer

BYTE_OFFSET = 4
NUM_BYTES = 256
BOE_ID, BOS_ID, EOS_ID, BPE_DELIMITER_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<boe>", "<s>", "</s>", "<bpe>")
BLT_VOCAB_SIZE = BYTE_OFFSET + NUM_BYTES  # 260


def _byte_fallback(error: UnicodeDecodeError):
    """Codec error handler: decode an invalid byte as U+FFFD (like ``replace``) one byte at a time."""
    return "\ufffd", error.start + 1


codecs.register_error("blt_replace", _byte_fallback)


class BLTTokenizer(PreTrainedTokenizer):
    """Bytes plus 4 special ids (vocab 260), identical ids to Transformers' ``Blt`` (``"Hi"`` -> ``[1, 76, 109, 2]``).

    Args:
        add_bos_token: prepend BOS (id 1) when ``add_special_tokens=True`` (default True, like the released models).
        add_eos_token: append EOS (id 2) when ``add_special_tokens=True`` (default False: generation prompts end
            without EOS; set True for training documents).
        errors: how :meth:`decode` renders byte sequences that are not valid UTF-8 (``"replace"`` -> U+FFFD,
            ``"ignore"``, ``"strict"``). Valid UTF-8 (including surrogates written by ``surrogatepass``) always decodes
            exactly.
    """

    vocab_files_names: dict[str, str] = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        boe_token="<boe>",
        bos_token="<s>",
        eos_token="</s>",
        bpe_token="<bpe>",
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        errors: str = "replace",
        blt_add_bos: bool | None = None,
        blt_add_eos: bool | None = None,
        **kwargs,
    ) -> None:
        # Transformers drops add_bos_token/add_eos_token from tokenizer_config.json for slow tokenizers, so they are
        # saved under blt_add_bos/blt_add_eos as well (those win when loading).
        add_bos_token = add_bos_token if blt_add_bos is None else blt_add_bos
        add_eos_token = add_eos_token if blt_add_eos is None else blt_add_eos
        if errors not in ("replace", "ignore", "strict"):
            raise ValueError(f"errors must be 'replace', 'ignore' or 'strict', got {errors!r}")
        tokens = [AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=True) if isinstance(t, str) else t
                  for t in (boe_token, bos_token, eos_token, bpe_token)]
        self._added_tokens_decoder = {i: tok for i, tok in enumerate(tokens)}
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.errors = errors
        kwargs.pop("split_special_tokens", None)
        kwargs.pop("clean_up_tokenization_spaces", None)
        kwargs.setdefault("pad_token", tokens[0])
        super().__init__(
            bos_token=tokens[1],
            eos_token=tokens[2],
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            blt_add_bos=add_bos_token,
            blt_add_eos=add_eos_token,
            errors=errors,
            # Lossless: "<s>" written in the text is 3 bytes, never the BOS id.
            split_special_tokens=True,
            clean_up_tokenization_spaces=False,
            **kwargs,
        )

    # ----- vocabulary -------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return BLT_VOCAB_SIZE

    def get_vocab(self) -> dict[str, int]:
        vocab = {self._convert_id_to_token(i): i for i in range(BYTE_OFFSET, BLT_VOCAB_SIZE)}
        vocab.update({str(tok): i for i, tok in self._added_tokens_decoder.items()})
        return vocab

    def _add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        # An id past the 260 byte ids would never be produced (text is read as bytes, special tokens split) and has
        # no byte to decode to: refuse it rather than grow len(tokenizer) with a token that cannot work.
        known = self.get_vocab()
        new = [str(token) for token in new_tokens if str(token) not in known]
        if new:
            raise ValueError(f"BLTTokenizer reads UTF-8 bytes and cannot add tokens {new[:3]}: its 260 ids are 4 special "
                             "ids and the 256 byte values (the model's vocabulary), so text is never matched to a new id")
        return super()._add_tokens(new_tokens, special_tokens=special_tokens)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [chr(b) for b in text.encode("utf-8", errors="surrogatepass")]

    def _convert_token_to_id(self, token: str) -> int:
        if len(token) != 1 or ord(token) >= NUM_BYTES:
            raise ValueError(f"BLTTokenizer tokens are single byte characters chr(0..255), got {token!r}")
        return ord(token) + BYTE_OFFSET

    def _convert_id_to_token(self, index: int) -> str:
        index = int(index)
        if index < BYTE_OFFSET:
            return str(self._added_tokens_decoder[index])
        if index >= BLT_VOCAB_SIZE:
            raise ValueError(f"id {index} is outside the BLT byte vocabulary [0, {BLT_VOCAB_SIZE})")
        return chr(index - BYTE_OFFSET)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._bytes_to_text(b"".join(
            str(t).encode("utf-8") if len(str(t)) != 1 or ord(str(t)) >= NUM_BYTES else bytes([ord(t)])
            for t in tokens
        ))

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        bos = [BOS_ID] if self.add_bos_token else []
        eos = [EOS_ID] if self.add_eos_token else []
        out = bos + token_ids_0 + eos
        if token_ids_1 is not None:
            out = out + bos + token_ids_1 + eos
        return out

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens: bool = False):
        if already_has_special_tokens:
            return [1 if i < BYTE_OFFSET else 0 for i in token_ids_0 + (token_ids_1 or [])]
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None):
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    # ----- decoding ---------------------------------------------------------------------------------------------
    def _bytes_to_text(self, data: bytes) -> str:
        try:
            return data.decode("utf-8", errors="surrogatepass")
        except UnicodeDecodeError:
            if self.errors == "strict":
                raise
            return data.decode("utf-8", errors="blt_replace" if self.errors == "replace" else "ignore")

    def _decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None, **kwargs):
        return self._bytes_to_text(self._ids_to_bytes(token_ids, skip_special_tokens))

    def _ids_to_bytes(self, token_ids, skip_special_tokens: bool) -> bytes:
        """The bytes of ``token_ids`` (an id, a list or a tensor); special ids as their strings unless skipped."""
        token_ids = token_ids.tolist() if hasattr(token_ids, "tolist") else token_ids
        pieces: list[bytes] = []
        for i in [token_ids] if isinstance(token_ids, int) else token_ids:
            i = int(i)
            if i < 0 or i >= BLT_VOCAB_SIZE:
                raise ValueError(f"id {i} is outside the BLT byte vocabulary [0, {BLT_VOCAB_SIZE})")
            if i >= BYTE_OFFSET:
                pieces.append(bytes([i - BYTE_OFFSET]))
            elif not skip_special_tokens:
                pieces.append(str(self._added_tokens_decoder[i]).encode("utf-8"))
        return b"".join(pieces)

    # ----- raw bytes --------------------------------------------------------------------------------------------
    def encode_bytes(self, data: bytes | bytearray, add_special_tokens: bool = True) -> list[int]:
        """Ids of raw ``bytes`` (no UTF-8 involved): ``[BOS] + [b + 4 for b in data] (+ [EOS])``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"encode_bytes expects bytes, got {type(data).__name__}")
        ids = [b + BYTE_OFFSET for b in bytes(data)]
        return self.build_inputs_with_special_tokens(ids) if add_special_tokens else ids

    def decode_bytes(self, token_ids) -> bytes:
        """Raw bytes of ``token_ids`` (special ids dropped); the exact inverse of :meth:`encode_bytes`."""
        return self._ids_to_bytes(token_ids, skip_special_tokens=True)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        # The vocabulary is fixed (256 bytes + 4 specials): nothing to write besides tokenizer_config.json.
        return ()


__all__ = ["BLTTokenizer", "BLT_VOCAB_SIZE", "BYTE_OFFSET", "BOE_ID", "BOS_ID", "EOS_ID"]
